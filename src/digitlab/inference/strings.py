"""Digit strings: a line of handwritten digits (a postal code, an amount) read left to right.

Usage::

    predictor = Predictor.from_path("runs/<run>")      # a trained run
    line = read_digits("postcode.png", predictor)      # a path, bytes, a PIL image or an array
    line.text, line.confidence                          # "75013", 0.97 (the product of the digits')
    [(d.label, d.confidence, d.box) for d in line.digits]   # boxes in the source image's pixels

The steps, in order:

1. read and reduce: ``load_gray``; a large image is block-averaged so that its line of digits is
   about ``WORK_HEIGHT`` px high (the line height is measured on a coarse copy first).
2. ink: ``ink_map`` (polarity, uneven lighting, noise, threshold), as for one digit; its mask is
   grown into the fainter ink touching it (hysteresis), so a faint or thin digit stays whole.
3. groups: 8-connected components of the mask. Specks (tiny next to the line height) are dropped;
   a fragment (a component shorter than ``TALL`` of the line) joins the component it overlaps most
   in x (broken strokes: the bar of a 5). Each group keeps only its own ink (a pixel belongs to the
   nearest component), so a neighbour never leaks into its crop.
4. candidates: groups closer than ``MAX_GAP`` line heights form a run. In a run, a digit may end at
   the gap between two groups (so a 4 drawn in two strokes can be read as one digit) or, in a group
   wider than ``SPLIT_WIDTH`` line heights (touching digits), at a cut: top-to-bottom paths of least
   ink found by dynamic programming (they may bend around a neighbour's overlapping stroke) and
   near-straight cuts at the minima of the vertical ink projection. Every stretch between two such
   boundaries that could be one digit is a candidate piece.
5. classify: every candidate piece goes through ``fit_digit`` (the same fitting as a single digit)
   and all of them through the model in one batch.
6. choose (recognition-driven segmentation): the reading of each run is the chain of pieces with
   the highest total score, found by dynamic programming: each piece scores its best class's
   log-probability, MNIST's aspect for that class and its size against the line height, plus
   ``DIGIT_BONUS``, plus (when the run has a non-digit detector) ``DETECTOR_WEIGHT`` times the
   detector's log-probability that the piece is one digit at all; each boundary scores the
   log-probability that it is one (a wide gap, a cut crossing little ink) and each boundary inside
   a piece that it is not. With ``n_digits`` given,
   the best reading with exactly that many digits (over all runs) is chosen instead, and wider
   groups are tried for cuts (``SPLIT_WIDTH_COUNTED``).

The weights were chosen on lines composed from MNIST's validation digits (never the test split),
first for lines of separated digits, where a needless cut costs a whole string, then for touching
ones (``benchmarks/bench_strings.py`` measures both on test digits).
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from digitlab.core.rundir import RunDir
from digitlab.data.preprocess import PreprocessSpec
from digitlab.inference.formats import HUB_CONFIG, META_MODEL
from digitlab.inference.sequence import StringReader

if TYPE_CHECKING:
    from digitlab.inference.predictor import Predictor
from digitlab.inference.prepare import (
    FAINT_LEVEL,
    ImageError,
    Polarity,
    edge_width,
    fit_digit,
    grow_into_faint,
    ink_map,
    load_gray,
    reduce_large,
)

WORK_HEIGHT = 48  # a large image is reduced until its line of digits is about this high (px)
MAX_WORK_SIDE = 4096  # ...but never wider than this
COARSE_SIDE = 320  # the coarse copy that measures the line height of a large image
SPECK_AREA = 0.03  # a component smaller than this share of line-height squared...
SPECK_SIDE = 0.3  # ...and shorter than this share of the line height on both sides is a speck
TALL = 0.7  # a component at least this share of the line height is a digit of its own, never a fragment
JOIN_OVERLAP = 0.5  # a fragment joins a component it shares this share of its own width with (in x)
SPLIT_WIDTH = 1.2  # groups wider than this many line heights are tried as several touching digits...
SPLIT_WIDTH_COUNTED = 0.5  # ...or this many when the number of digits is known (it stops over-cutting)
MAX_DIGIT_WIDTH = 1.8  # no digit is wider than this many line heights
CUT_STEP = 0.2  # candidate cuts are looked for every this many line heights...
CUT_SLACK = 1.5  # ...ending where the ink crossed is a local minimum, up to this many strokes over the least
CUT_MERGE = 0.1  # two cuts closer than this many line heights (mean over rows) are one, the cheaper
DIGIT_BONUS = 3.0  # added per digit read: pieces score <= 0 (log-probabilities), so without it fewer would win
ASPECT_WEIGHT = 0.5  # weight of the aspect prior in a piece's score
SIZE_WEIGHT = 1.0  # weight of the size prior: log(longer side / line height) ~ N(0, SIZE_SIGMA)
SIZE_SIGMA = 0.25
BOUNDARY_BIAS = -2.0  # a cut is a boundary between digits with probability
BOUNDARY_SLOPE = 2.0  # sigmoid(BOUNDARY_BIAS - BOUNDARY_SLOPE * strokes it crosses)
MAX_GAP = 0.5  # groups further apart than this many line heights are never one digit
GAP_BIAS = 0.0  # a gap between groups is a boundary between digits with probability
GAP_SLOPE = 20.0  # sigmoid(GAP_BIAS + GAP_SLOPE * gap / line height)
OWN_REACH = 0.15  # a group's ink: every pixel nearer to it than to any other group, within this many line heights
STROKE_LEVEL = 0.3  # a piece's strokes are its ink over this share of its peak (its size is theirs)
MIN_SIZE = 0.4  # a piece whose longer side is under this share of the line is a mark (a dash, a dot, a
MIN_PIXELS = 4  # fragment, a sliver), never a digit; so is one under this many pixels...
SKIP_SIZE = 0.6  # ...and one under this share may be one: the reading may drop it
LOG_FLOOR = 12.0  # the aspect's log-density never goes below -LOG_FLOOR
# log(width / height) of MNIST's training digits in their frame (ink > 127), mean and std per class 0-9
ASPECT_LOG_MEAN = np.array([-0.119, -1.007, -0.083, -0.262, -0.27, -0.086, -0.36, -0.294, -0.311, -0.433])
ASPECT_LOG_STD = np.array([0.218, 0.489, 0.242, 0.226, 0.229, 0.286, 0.229, 0.23, 0.237, 0.215])
# Weight of the detector's log-probability that a piece is one digit (docs/decisions.md#detector-weight-in-strings).
DETECTOR_WEIGHT = 2.0
FRAGMENT_KEEP = 0.15  # a cut-off bit smaller than this share of its piece's largest part is dropped


class Classifier(Protocol):
    """What ``read_digits`` needs of a model: the ``Predictor``'s spec, class names and probabilities."""

    spec: PreprocessSpec
    class_names: list[str]

    def predict_proba(self, images: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Digit:
    """One character of a string (a digit, or a separator ". , - /" from the string model): its label, the
    model's probability for it, and its box in the source (None from the string model, which reads the line
    as a whole and does not place characters)."""

    label: str
    confidence: float
    box: tuple[int, int, int, int] | None  # x0, y0, x1, y1 (exclusive) in the source image's pixels
    rejected: bool = False  # confidence under ``min_confidence``


@dataclass(frozen=True)
class DigitString:
    """A line read left to right; ``found=False`` (and empty text) when the image holds no ink."""

    text: str  # as written: the characters left to right ("1.480"); "?" stands for a rejected digit
    digits: list[Digit]  # one per character of ``text``
    confidence: float  # product of the characters' confidences (1.0 for an empty string)
    found: bool
    inverted: bool = False  # dark ink on a light background was inverted
    notes: tuple[str, ...] = field(default_factory=tuple)  # "inverted", "2 digits cut from touching ink", ...
    rejected: str | None = None  # why the whole string is not trusted, in plain words (None: it is)
    reader: str = "segmentation"  # "sequence": a string model read it; "segmentation": cut into digits

    @property
    def value(self) -> str:
        """The digits only, separators dropped: "1.480" -> "1480"."""
        return "".join(c for c in self.text if c.isdigit())

    def record(self) -> dict[str, Any]:
        """As JSON-ready data (the CLI's --json, the service's /v1/read)."""
        return {"text": self.text, "value": self.value, "confidence": self.confidence, "found": self.found,
                "rejected": self.rejected is not None, "reason": self.rejected, "reader": self.reader,
                "inverted": self.inverted, "notes": list(self.notes),
                "digits": [{"label": d.label, "confidence": d.confidence, "box": list(d.box) if d.box else None,
                            "rejected": d.rejected} for d in self.digits]}


@dataclass
class _Piece:
    """Light ink of one candidate digit, cropped, and its box in working pixels."""

    crop: np.ndarray
    box: tuple[int, int, int, int]  # x0, y0, x1, y1
    height: int  # rows from the first to the last of its strokes (ink over STROKE_LEVEL of its peak)
    width: int  # columns likewise


# ----------------------------------------------------------------------------------------- segmentation

def _working_factor(gray: np.ndarray, polarity: Polarity) -> int:
    """The block size that brings the line to about ``WORK_HEIGHT`` px (1 for a small image)."""
    longest = max(gray.shape)
    if longest <= 2 * COARSE_SIDE:
        return 1
    coarse, f0 = reduce_large(gray, COARSE_SIDE)
    ink = ink_map(coarse, polarity)
    line = 0.0
    if ink.found:
        labels, n = ndi.label(ink.mask, structure=np.ones((3, 3), bool))
        heights = np.array([sl[0].stop - sl[0].start for sl in ndi.find_objects(labels)])
        line = _line_height(heights, np.bincount(labels.ravel())[1:]) * f0 if n else 0.0
    return max(1, int(line // WORK_HEIGHT), -(-longest // MAX_WORK_SIDE))


def _line_height(heights: np.ndarray, areas: np.ndarray) -> float:
    """The line's digit height: the upper quartile of the substantial components' heights (specks and
    fragments do not pull it down, nor do the flat digits MNIST's 20-px box makes short)."""
    return float(np.percentile(heights[areas >= 0.2 * areas.max()], 75))


def _group_components(boxes: np.ndarray, areas: np.ndarray) -> tuple[list[list[int]], float]:
    """Component indices grouped into pieces (specks dropped, fragments joined), left to right.

    ``boxes`` is ``(n, 4)``: y0, y1, x0, x1 (exclusive). Returns the groups and the line height.
    """
    heights, widths = boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]
    line = _line_height(heights, areas)
    speck = (areas < SPECK_AREA * line * line) & (np.maximum(heights, widths) < SPECK_SIDE * line)
    keep = np.flatnonzero(~speck)
    parent = {int(i): int(i) for i in keep}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    tall = heights >= TALL * line
    for i in keep:
        if tall[i]:
            continue
        # share of this fragment's width that each other component covers in x
        inter = np.minimum(boxes[keep, 3], boxes[i, 3]) - np.maximum(boxes[keep, 2], boxes[i, 2])
        share = np.clip(inter, 0, None) / max(widths[i], 1)
        share[keep == i] = -1
        best = int(np.argmax(share))
        if share[best] >= JOIN_OVERLAP:
            parent[root(int(i))] = root(int(keep[best]))
    groups: dict[int, list[int]] = {}
    for i in keep:
        groups.setdefault(root(int(i)), []).append(int(i))
    ordered = sorted(groups.values(), key=lambda g: float(np.mean([(boxes[i, 2] + boxes[i, 3]) / 2 for i in g])))
    return ordered, line


def _own_ink(ink: np.ndarray, labels: np.ndarray, members: list[int], box: np.ndarray,
             reach: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The ink of ``members`` (0-based component indices) in their box padded by ``reach``: every pixel
    whose nearest component is one of them, within ``reach`` px (the anti-aliased edge, and strokes too
    faint for the mask that lie next to the digit, come with it; a neighbour's never)."""
    h, w = labels.shape
    y0, y1 = max(int(box[0]) - reach, 0), min(int(box[1]) + reach, h)
    x0, x1 = max(int(box[2]) - reach, 0), min(int(box[3]) + reach, w)
    lab = labels[y0:y1, x0:x1]
    dist, (iy, ix) = ndi.distance_transform_edt(lab == 0, return_indices=True)
    owner = lab[iy, ix]
    own = np.isin(owner, np.asarray(members) + 1) & (dist <= reach)
    return np.where(own, ink[y0:y1, x0:x1], 0).astype(np.float32), (y0, x0)


def _cut_path(patch: np.ndarray, centre: float, radius: int, slack: float) -> list[np.ndarray]:
    """Top-to-bottom cuts through ``patch`` near ``centre``: paths that move at most one column per row,
    of least ink for where they end (dynamic programming, one vector step a row). Every end column that
    is a local minimum within ``slack`` ink of the best gives one: the least-ink cut through two round
    touching digits is often across one of them, and the one through their meeting point is the second."""
    h, w = patch.shape
    lo, hi = max(round(centre) - radius, 1), min(round(centre) + radius, w - 1)
    if hi <= lo:
        return [np.full(h, int(np.clip(round(centre), 1, w - 1)))]
    cols = np.arange(lo, hi + 1)
    # ink crossed, plus a little for straying from the window's centre and for bending
    cost = patch[:, lo:hi + 1] + 0.02 * ((cols - centre) / max(radius, 1)) ** 2
    step = 0.01
    acc = cost[0].copy()
    back = np.zeros((h, len(cols)), np.int8)
    for y in range(1, h):
        left = np.concatenate([[np.inf], acc[:-1]]) + step
        right = np.concatenate([acc[1:], [np.inf]]) + step
        choice = np.stack([left, acc, right])  # predecessor at column -1, 0, +1
        best = choice.argmin(axis=0)
        back[y] = best - 1
        acc = choice[best, np.arange(len(cols))] + cost[y]
    padded = np.concatenate([[np.inf], acc, [np.inf]])
    ends = np.flatnonzero((acc <= padded[:-2]) & (acc <= padded[2:]) & (acc <= acc.min() + slack))
    paths = []
    for end in ends:
        path = np.empty(h, np.int64)
        j = int(end)
        for y in range(h - 1, -1, -1):
            path[y] = j
            j += int(back[y, j])  # the predecessor in row y - 1
        paths.append(path + lo)
    return paths


def _clean(crop: np.ndarray, grow: int) -> np.ndarray:
    """Drop bits cut off a neighbour: parts far smaller than the piece's largest part."""
    labels, n = ndi.label(crop > STROKE_LEVEL * float(crop.max(initial=0)), structure=np.ones((3, 3), bool))
    if n <= 1:
        return crop
    areas = np.bincount(labels.ravel())[1:]
    small = np.flatnonzero(areas < FRAGMENT_KEEP * areas.max()) + 1
    if len(small) == 0:
        return crop
    big = (labels > 0) & ~np.isin(labels, small)
    return np.where(ndi.binary_dilation(big, iterations=grow), crop, 0).astype(np.float32)


def _extent(on: np.ndarray) -> np.ndarray:
    """Per row of ``on`` (N, L) bool: the span from its first True to its last (at least 1)."""
    first, last = on.argmax(axis=1), on.shape[1] - on[:, ::-1].argmax(axis=1)
    return np.maximum(last - first, 1)


def _tight(crop: np.ndarray, origin: tuple[int, int], min_size: float) -> _Piece | None:
    """The crop tightened to its visible ink; None when its strokes' longer side is under ``min_size``
    (a mark, a speck or a sliver, never a digit: and a few pixels blown up to the fitting box would
    make ``fit_digit`` measure an absurd stroke width)."""
    strokes = crop > STROKE_LEVEL * float(crop.max(initial=0))  # relative: a faint digit keeps its size
    if not strokes.any():
        return None
    height, width = (int(_extent(strokes.any(axis=a)[None])[0]) for a in (1, 0))
    if max(height, width) < max(min_size, MIN_PIXELS):
        return None
    visible = crop > 0.05
    ys, xs = np.nonzero(visible if visible.any() else strokes)  # ink all fainter than 0.05: its strokes
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    return _Piece(crop[y0:y1, x0:x1], (origin[1] + x0, origin[0] + y0, origin[1] + x1, origin[0] + y1), height,
                  width)


def _cut_paths(patch: np.ndarray, line: float, stroke: float) -> tuple[list[np.ndarray], np.ndarray]:
    """Candidate cuts through a wide piece and the ink each crosses: least-ink paths from windows every
    ``CUT_STEP`` line heights, left to right, non-crossing, and distinct in what they cut off (paths that
    leave the same ink on their left, give or take half a pixel, or lie within ``CUT_MERGE`` line heights
    of each other are one cut: the cheapest is kept; a path that cuts off nothing is none)."""
    h = patch.shape[0]
    cols = np.flatnonzero((patch > 0.05).any(axis=0))
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    step = max(2, round(CUT_STEP * line))
    found = [path for centre in range(c0 + step, c1 - step + 1, step)
             for path in _cut_path(patch, centre, step, CUT_SLACK * stroke)]
    # and near-straight cuts at the minima of the vertical projection (column sums): where round digits meet
    sums = ndi.uniform_filter1d(patch.sum(axis=0), 3)
    lowest = ndi.minimum_filter1d(sums, 5)
    inner = np.arange(c0 + 2, c1 - 2)
    minima = inner[(sums[inner] == lowest[inner]) & (ndi.maximum_filter1d(sums, 5)[inner] > sums[inner])]
    found += [path for col in minima for path in _cut_path(patch, col, 2, 0.0)]
    if not found:
        return [], np.zeros(0)
    found.sort(key=lambda q: float(q.mean()))
    paths = np.maximum.accumulate(np.stack(found), axis=0)
    crossed = patch[np.arange(h)[None, :], np.minimum(paths, patch.shape[1] - 1)].sum(axis=1)
    cumulative = np.concatenate([np.zeros((h, 1)), np.cumsum(patch, axis=1)], axis=1)
    left = cumulative[np.arange(h)[None, :], paths].sum(axis=1)  # ink left of each path
    total = float(cumulative[:, -1].sum())
    kept: list[int] = []
    for t in range(len(paths)):
        if left[t] < 0.5 or total - left[t] < 0.5:
            continue
        if kept and (left[t] - left[kept[-1]] < 0.5
                     or np.abs(paths[t] - paths[kept[-1]]).mean() < CUT_MERGE * line):
            if crossed[t] < crossed[kept[-1]]:
                kept[-1] = t
            continue
        kept.append(t)
    return [paths[t] for t in kept], crossed[kept]


@dataclass
class _Group:
    """A connected piece of the line (fragments joined): its own ink, padded, and where it lies."""

    patch: np.ndarray  # (h, w) float32 light ink; other groups' pixels are zero
    origin: tuple[int, int]  # y, x of the patch in working pixels
    x0: int  # the mask's columns, working pixels (exclusive end)
    x1: int


@dataclass
class _Boundary:
    """Where one digit may end and the next begin: a run's edge, a cut through a group, or the gap
    between two groups."""

    kind: str  # "edge", "cut" or "gap"
    left: int | None  # the group on its left (None at a run's left edge)
    right: int | None  # the group on its right (None at a run's right edge)
    x: float  # mean position, working pixels
    path: np.ndarray | None = None  # a cut: its column (in the group's patch) per row
    value: float = 0.0  # a cut: the strokes it crosses; a gap: its width in line heights

    def log_odds(self) -> float:
        """The log-odds that this is a boundary between two digits (a gap: the wider the surer; a cut:
        the less ink it crosses the surer, since touching digits meet at a point)."""
        if self.kind == "gap":
            return GAP_BIAS + GAP_SLOPE * self.value
        return BOUNDARY_BIAS - BOUNDARY_SLOPE * self.value


@dataclass
class _Run:
    """Groups close enough to be merged or split among themselves, their boundaries, and every span
    ``(a, b)`` of boundaries that could hold one digit, with its piece (None: a mark to skip)."""

    boundaries: list[_Boundary]
    spans: list[tuple[int, int]] = field(default_factory=list)
    pieces: list[_Piece | None] = field(default_factory=list)


def _runs(groups: list[_Group], line: float, stroke: float, split_width: float) -> list[_Run]:
    """The groups as runs (a gap over ``MAX_GAP`` line heights always separates digits), with their
    boundaries: edges, candidate cuts through wide groups, and the gaps between groups."""
    runs: list[_Run] = []
    reach = -np.inf  # rightmost ink of the current run
    for g, group in enumerate(groups):
        gap = group.x0 - reach
        if gap > MAX_GAP * line or not runs:
            if runs:
                runs[-1].boundaries.append(_Boundary("edge", g - 1, None, reach))
            runs.append(_Run([_Boundary("edge", None, g, group.x0)]))
        else:
            runs[-1].boundaries.append(_Boundary("gap", g - 1, g, (reach + group.x0) / 2, value=gap / line))
        if group.x1 - group.x0 > split_width * line:
            paths, crossed = _cut_paths(group.patch, line, stroke)
            for path, ink in zip(paths, crossed, strict=True):
                runs[-1].boundaries.append(_Boundary("cut", g, g, group.origin[1] + float(path.mean()), path,
                                                     ink / max(stroke, 1.0)))
        reach = max(reach, group.x1)
    if runs:
        runs[-1].boundaries.append(_Boundary("edge", len(groups) - 1, None, reach))
    return runs


def _span_piece(groups: list[_Group], a: _Boundary, b: _Boundary, grow: int, min_size: float) -> _Piece | None:
    """The ink between boundaries ``a`` and ``b``: the groups between them, the end ones cut."""
    first, last = a.right, b.left
    assert first is not None and last is not None
    parts = []
    for g in range(first, last + 1):
        x = groups[g].patch
        cut = (g == first and a.path is not None) or (g == last and b.path is not None)
        if cut:
            xx = np.arange(x.shape[1])[None, :]
            keep = np.ones(x.shape, bool)
            if g == first and a.path is not None:
                keep &= xx >= a.path[:, None]
            if g == last and b.path is not None:
                keep &= xx < b.path[:, None]
            x = _clean(np.where(keep, x, 0).astype(np.float32), grow)
        parts.append((x, groups[g].origin))
    if len(parts) == 1:
        return _tight(*parts[0], min_size)
    y0 = min(o[0] for _, o in parts)
    x0 = min(o[1] for _, o in parts)
    y1 = max(o[0] + x.shape[0] for x, o in parts)
    x1 = max(o[1] + x.shape[1] for x, o in parts)
    canvas = np.zeros((y1 - y0, x1 - x0), np.float32)
    for x, (oy, ox) in parts:
        region = canvas[oy - y0:oy - y0 + x.shape[0], ox - x0:ox - x0 + x.shape[1]]
        np.maximum(region, x, out=region)
    return _tight(canvas, (y0, x0), min_size)


def _enumerate(run: _Run, groups: list[_Group], line: float, grow: int) -> None:
    """Fill ``run.spans`` and ``run.pieces``: every span narrow enough for one digit, every whole group
    (so a reading always exists), and a skip (piece None) for each atom (a span between neighbouring
    boundaries) too small to be a digit or small enough to be a mark: the reading may drop it."""
    bounds = run.boundaries
    min_size = MIN_SIZE * line
    for a in range(len(bounds) - 1):
        for b in range(a + 1, len(bounds)):
            whole = bounds[a].path is None and bounds[b].path is None and bounds[a].right == bounds[b].left
            if bounds[b].x - bounds[a].x > MAX_DIGIT_WIDTH * line and not whole and b > a + 1:
                continue
            piece = _span_piece(groups, bounds[a], bounds[b], grow, min_size)
            if piece is not None:
                run.spans.append((a, b))
                run.pieces.append(piece)
            if b == a + 1 and (piece is None or max(piece.height, piece.width) < SKIP_SIZE * line):
                run.spans.append((a, b))
                run.pieces.append(None)


def _piece_scores(proba: np.ndarray, frames: np.ndarray, spec: PreprocessSpec, sizes: np.ndarray,
                  line: float) -> np.ndarray:
    """How likely each piece is one digit (log units): the best class's log-probability plus, weighted,
    the log-density of the fitted frame's aspect for that class (MNIST's) and of the piece's size (its
    longer side) against the line height."""
    ink = frames > 127 if spec.polarity == "light-on-dark" else frames < 128
    h, w = _extent(ink.any(axis=2)), _extent(ink.any(axis=1))
    z = (np.log(w / h)[:, None] - ASPECT_LOG_MEAN[None, :]) / ASPECT_LOG_STD[None, :]
    log_q = np.maximum(-0.5 * z * z - np.log(ASPECT_LOG_STD[None, :] * np.sqrt(2 * np.pi)), -LOG_FLOOR)
    joint = np.log(np.clip(proba, 1e-12, 1.0)) + ASPECT_WEIGHT * log_q
    size = np.log(sizes / line) / SIZE_SIGMA
    return joint.max(axis=1) - SIZE_WEIGHT * 0.5 * size * size


def _span_scores(run: _Run, piece_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each span's share of a reading's score and its number of digits (0 for a skipped mark): its
    piece's score plus ``DIGIT_BONUS``, plus the log-probability that the boundary closing it is one and
    that the boundaries inside it are not."""
    odds = np.array([b.log_odds() for b in run.boundaries])
    yes, no = -np.logaddexp(0.0, -odds), -np.logaddexp(0.0, odds)  # log sigmoid of +-odds
    inside = np.concatenate([[0.0], np.cumsum(no)])  # inside[k]: the sum over boundaries 0 .. k-1
    last = len(run.boundaries) - 1
    scores = np.empty(len(run.spans))
    counts = np.empty(len(run.spans), np.int64)
    for t, ((a, b), piece) in enumerate(zip(run.spans, run.pieces, strict=True)):
        closing = yes[b] if b < last else 0.0
        if piece is None:
            scores[t], counts[t] = closing, 0
        else:
            scores[t], counts[t] = piece_scores[t] + DIGIT_BONUS + inside[b] - inside[a + 1] + closing, 1
    return scores, counts


def _chains(spans: list[tuple[int, int]], scores: np.ndarray, counts: np.ndarray,
            max_count: int) -> dict[int, tuple[float, list[int]]]:
    """The best chain of spans from edge to edge for each number of digits up to ``max_count``:
    ``{count: (score, span indices)}`` (dynamic programming over (boundary, count))."""
    end = max(b for _, b in spans)
    best = np.full((end + 1, max_count + 1), -np.inf)
    best[0, 0] = 0.0
    came = np.full((end + 1, max_count + 1), -1)
    for t in sorted(range(len(spans)), key=lambda t: spans[t][0]):  # by left boundary: its row is final
        a, b = spans[t]
        k = int(counts[t])
        total = best[a, :max_count + 1 - k] + scores[t]
        better = total > best[b, k:]
        best[b, k:][better] = total[better]
        came[b, k:][better] = t
    chains = {}
    for count in np.flatnonzero(np.isfinite(best[end])):
        chain, at, k = [], end, int(count)
        while at > 0:
            t = int(came[at, k])
            chain.append(t)
            at, k = spans[t][0], k - int(counts[t])
        chains[int(count)] = (float(best[end, count]), chain[::-1])
    return chains


def _choose(options: list[dict[int, tuple[float, list[int]]]], n_digits: int | None) -> list[list[int]] | None:
    """One chain per run: the best of each, or the best combination that reads exactly ``n_digits``
    (None when no combination does)."""
    if n_digits is None:
        return [max(o.values())[1] for o in options]
    best: dict[int, tuple[float, list[list[int]]]] = {0: (0.0, [])}  # digits so far -> best score, chains
    for o in options:
        step: dict[int, tuple[float, list[list[int]]]] = {}
        for c, (score, picked) in best.items():
            for k, (s, chain) in o.items():
                if c + k <= n_digits and (c + k not in step or score + s > step[c + k][0]):
                    step[c + k] = (score + s, [*picked, chain])
        best = step
    return best[n_digits][1] if n_digits in best else None


def _decide(runs: list[_Run], piece_scores: np.ndarray,
            n_digits: int | None) -> tuple[list[np.ndarray], list[list[int]], bool]:
    """The reading: per run, the row of ``piece_scores`` of each span (-1 for a skip) and the chosen
    chain of spans; and whether ``n_digits`` (when given) could be met."""
    rows: list[np.ndarray] = []
    options, at = [], 0
    limit = n_digits if n_digits is not None else len(piece_scores)
    for run in runs:
        row = np.full(len(run.spans), -1)
        real = [t for t, p in enumerate(run.pieces) if p is not None]
        row[real] = np.arange(at, at + len(real))
        at += len(real)
        scores = np.where(row >= 0, piece_scores[np.maximum(row, 0)], 0.0)
        options.append(_chains(run.spans, *_span_scores(run, scores), max(1, limit)))
        rows.append(row)
    chosen = _choose(options, n_digits)
    if chosen is not None:
        return rows, chosen, True
    chosen = _choose(options, None)
    assert chosen is not None
    return rows, chosen, False


# ----------------------------------------------------------------------------------------- reading

def _fit(pieces: list[_Piece], spec: PreprocessSpec) -> np.ndarray:
    return np.stack([fit_digit(p.crop, spec)[0] for p in pieces])


def read_digits(source: str | os.PathLike[str] | bytes | Image.Image | np.ndarray,
                predictor: "Classifier | StringReader", *, polarity: Polarity = "auto",
                min_confidence: float | None = None, n_digits: int | None = None, max_digits: int = 64) -> DigitString:
    """Read a line of handwritten digits left to right.

    With a string model (a ``StringReader``: ``digitlab train --recipe strings``), the line is read whole
    (``inference.sequence``): separators come back as written ("1.480"), touching digits stay whole, and a string
    the model is unsure of is rejected (``rejected`` says why; ``text`` is still its best guess). With a digit
    classifier (a ``Predictor``), the line is cut into digits and each is classified (the module doc's steps).
    The string model reads real strings far better (docs/benchmarks.md#digit-strings); the segmentation reader
    remains for those who have only a digit model, and for ``n_digits``.

    Args:
        source: a path, the file's bytes, a PIL image, or an array ((H, W) gray or (H, W, 3|4)).
        predictor: a ``StringReader``, or a ``Predictor`` (anything with its ``spec``, ``class_names`` and
            ``predict_proba``).
        polarity: "auto" decides from the background; "dark-on-light" or "light-on-dark" forces it.
        min_confidence: the string model: strings less confident than this are rejected (default: the
            threshold chosen on validation strings, ``reading.json``); the segmentation reader: digits less
            probable than this are marked rejected and shown as "?" in the text.
        n_digits: how many digits the line holds, when known (a postal code): the segmentation reader then
            returns the best reading with exactly that many, when there is one (else a note says so); the string
            model rejects a reading with another number of digits.
        max_digits: at most this many connected pieces are read (the leftmost); more is noted as "truncated".

    Returns:
        The string, its characters with confidences (and source boxes from the segmentation reader), and
        ``found=False`` for a blank image.

    Raises:
        ImageError: the source is not a readable image.
        ValueError: ``n_digits`` or ``max_digits`` under 1.
    """
    if (n_digits is not None and n_digits < 1) or max_digits < 1:
        raise ValueError(f"n_digits={n_digits}, max_digits={max_digits}: a line holds at least one digit")
    if isinstance(predictor, StringReader):
        return _read_whole(source, predictor, polarity=polarity, min_confidence=min_confidence, n_digits=n_digits)
    gray = load_gray(source)
    factor = _working_factor(gray, polarity)
    if factor > 1:
        gray, factor = reduce_large(gray, longest=-(-max(gray.shape) // factor))
    ink = ink_map(gray, polarity)
    notes = list(ink.notes)
    if not ink.found:
        return DigitString("", [], 1.0, False, ink.inverted, tuple(notes))
    mask = grow_into_faint(ink.ink, ink.mask, FAINT_LEVEL)
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    boxes = np.array([[s[0].start, s[0].stop, s[1].start, s[1].stop] for s in ndi.find_objects(labels)])
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    members, line = _group_components(boxes, areas)
    if len(members) > max_digits:
        members = members[:max_digits]
        notes.append(f"truncated at {max_digits} pieces")
    stroke = edge_width(mask)
    grow = max(1, round(stroke / 2))
    groups = []
    for m in members:
        gbox = np.array([boxes[m, 0].min(), boxes[m, 1].max(), boxes[m, 2].min(), boxes[m, 3].max()])
        patch, origin = _own_ink(ink.ink, labels, m, gbox, max(grow, round(OWN_REACH * line)))
        groups.append(_Group(patch, origin, int(gbox[2]), int(gbox[3])))
    runs = _runs(groups, line, stroke, SPLIT_WIDTH if n_digits is None else SPLIT_WIDTH_COUNTED)
    for run in runs:
        _enumerate(run, groups, line, grow)

    # every candidate piece of every run, classified in one batch
    flat = [p for run in runs for p in run.pieces if p is not None]
    if not flat:
        return DigitString("", [], 1.0, False, ink.inverted, (*notes, "no digit"))
    frames = _fit(flat, predictor.spec)
    nondigit = None
    if getattr(predictor, "detector_threshold", None) is not None:  # a Predictor with a non-digit detector
        preds = predictor.predict(frames)  # type: ignore[attr-defined]
        proba, nondigit = np.asarray(preds.proba, dtype=np.float64), preds.nondigit_score
    else:
        proba = np.asarray(predictor.predict_proba(frames), dtype=np.float64)
    sizes = np.array([max(p.height, p.width) for p in flat], float)
    piece_scores = _piece_scores(proba, frames, predictor.spec, sizes, line)
    if nondigit is not None:  # + w log P(digit) = - w softplus(score)
        piece_scores = piece_scores - DETECTOR_WEIGHT * np.logaddexp(0.0, np.asarray(nondigit, np.float64))
    rows, chosen, found_n = _decide(runs, piece_scores, n_digits)
    if not found_n:
        notes.append(f"no reading with {n_digits} digits")

    digits: list[Digit] = []
    n_split = n_merged = 0
    for run, row, chain in zip(runs, rows, chosen, strict=True):
        for t in chain:
            piece = run.pieces[t]
            if piece is None:
                continue
            a, b = run.spans[t]
            n_split += run.boundaries[a].path is not None or run.boundaries[b].path is not None
            n_merged += run.boundaries[a].right != run.boundaries[b].left
            p = proba[row[t]]
            label = int(p.argmax())
            conf = float(p[label])
            x0, y0, x1, y1 = piece.box
            digits.append(Digit(predictor.class_names[label], conf,
                                (x0 * factor, y0 * factor, x1 * factor, y1 * factor),
                                min_confidence is not None and conf < min_confidence))
    if n_split:
        notes.append(f"{n_split} digit{'s' if n_split > 1 else ''} cut from touching ink")
    if n_merged:
        notes.append(f"{n_merged} digit{'s' if n_merged > 1 else ''} joined from separate strokes")
    text = "".join("?" if d.rejected else d.label for d in digits)
    return DigitString(text, digits, float(np.prod([d.confidence for d in digits])), bool(digits), ink.inverted,
                       tuple(notes))


def _read_whole(source: str | os.PathLike[str] | bytes | Image.Image | np.ndarray, reader: StringReader, *,
                polarity: Polarity, min_confidence: float | None, n_digits: int | None) -> DigitString:
    """The string model's reading as a ``DigitString``."""
    r = reader.read_one(source, polarity=polarity, min_confidence=min_confidence)
    rejected = r.rejected
    if rejected is None and n_digits is not None and len(r.digits) != n_digits:
        rejected = f"{len(r.digits)} digits read, {n_digits} expected"
    line = r.line
    notes = tuple(line.notes) if line is not None else ()
    return DigitString(r.text, [Digit(c, p, None) for c, p in zip(r.text, r.confidences, strict=True)],
                       r.confidence if r.text else 1.0, r.found, bool(line and line.inverted), notes, rejected,
                       "sequence")


def open_reader(path: str | os.PathLike[str], *, backend: str = "auto",
                device: str = "auto") -> "Predictor | StringReader":
    """The reader a model file makes: a ``StringReader`` for a string model (run directory, hub folder or
    .onnx), else a ``Predictor`` (a digit classifier, read with the segmentation reader).

    Raises:
        PredictorError, StringReaderError: nothing loadable at ``path``.
    """
    from digitlab.inference.predictor import Predictor

    if is_string_model(path):
        return StringReader.from_path(path, backend=backend, device=device)
    return Predictor.from_path(path, backend=backend, device=device)


def is_string_model(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (a run directory, a hub folder or an .onnx file) holds a string model (kind "sequence");
    False for anything else, including what cannot be read (the loader then says what is wrong)."""
    p = Path(path)
    try:
        if p.is_file() and p.suffix == ".onnx":
            import onnx  # only ONNX users pay for it

            meta = {m.key: m.value for m in onnx.load(str(p), load_external_data=False).metadata_props}
            text = meta.get(META_MODEL, "{}")
        else:
            text = next((f.read_text(encoding="utf-8") for f in (p / RunDir.MODEL_JSON, p / HUB_CONFIG) if f.is_file()),
                        "{}")
        return json.loads(text).get("kind") == "sequence"
    except Exception:  # unreadable or foreign: not a string model (the loader then says what is wrong)
        return False


# ----------------------------------------------------------------------------------------- synthetic lines

def compose_line(digits: np.ndarray, rng: np.random.Generator, *, gap: tuple[int, int] = (2, 12),
                 scale: tuple[float, float] = (0.8, 1.2), jitter: int = 3,
                 margin: int = 8) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """MNIST-style digits composed into one line, as a benchmark or a test draws a string.

    Each digit is cropped to its ink, scaled by a factor drawn from ``scale``, set on a common
    baseline moved by up to ``jitter`` px, and placed ``gap`` px (drawn from the inclusive range;
    negative overlaps) after the previous one's ink; overlapping ink is combined with ``max``.

    Args:
        digits: ``(k, H, W)`` uint8, light ink on dark (MNIST's convention).
        rng: the random generator (seed it for a reproducible line).

    Returns:
        The line, ``(H, W)`` uint8 light on dark, and each digit's box (x0, y0, x1, y1, exclusive).
    """
    glyphs, tops, lefts = [], [], []
    x = 0
    for d in digits:
        ys, xs = np.nonzero(d)
        if len(ys) == 0:
            raise ValueError("a blank digit cannot be composed")
        crop = d[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        s = rng.uniform(*scale)
        h, w = max(1, round(crop.shape[0] * s)), max(1, round(crop.shape[1] * s))
        glyph = np.asarray(Image.fromarray(crop).resize((w, h), Image.Resampling.BILINEAR))
        if glyphs:
            x += int(rng.integers(gap[0], gap[1] + 1))
        glyphs.append(glyph)
        tops.append(-h + int(rng.integers(-jitter, jitter + 1)))  # bottom on the baseline, jittered
        lefts.append(x)
        x += w
    top0 = min(tops)
    left0 = min(lefts)
    height = max(t + g.shape[0] for t, g in zip(tops, glyphs, strict=True)) - top0 + 2 * margin
    width = max(left + g.shape[1] for left, g in zip(lefts, glyphs, strict=True)) - left0 + 2 * margin
    line = np.zeros((height, width), np.uint8)
    boxes = []
    for glyph, t, left in zip(glyphs, tops, lefts, strict=True):
        y0, x0 = t - top0 + margin, left - left0 + margin
        h, w = glyph.shape
        np.maximum(line[y0:y0 + h, x0:x0 + w], glyph, out=line[y0:y0 + h, x0:x0 + w])
        boxes.append((x0, y0, x0 + w, y0 + h))
    return line, boxes


__all__ = ["Classifier", "Digit", "DigitString", "ImageError", "compose_line", "open_reader", "read_digits"]
