"""One handwritten line (an amount, a date, a code) prepared the way the string model was trained to see it.

Usage::

    line = prepare_line("cheque-amount.png")              # a path, bytes, a PIL image or an array
    line.image, line.found, line.inverted                 # (32, W) float32 in [0, 1], light ink on dark
    x, y = line.to_source(10, 25)                         # a line pixel's place in the source image
    batch, widths = batch_lines([line.image, other.image])  # (N, 1, 32, Wmax) zero-padded, (N,) int64

The synthetic strings the model learns from (``data.synth_strings``) are light ink on a dark page, ``height``
pixels tall, with the digits' ink about ``LINE`` of the height and their baseline at ``BASELINE`` of it. A
scan is brought into that geometry:

1. read (``load_gray``), optionally only a region (``box``); very tall images are block-averaged first.
2. ink: the polarity from where the bulk of the pixels lies (paper is the majority: a median near the
   bright end means dark ink on light paper, inverted), then the paper's level subtracted as a smooth
   surface (a low percentile per block, the lowest of neighbouring blocks, interpolated: uneven lighting and
   grey cheque paper go), and the contrast stretched so the ink is near 1 and the paper near 0. Too little
   contrast over the paper's noise is a blank line (``found`` False): not an error, the reader answers
   "no digits found".
3. the band: the rows of the digits' bodies, from the connected pieces of ink that are nearly as tall as
   the tallest (dots, commas, dashes and half-height zeros are shorter), after long horizontal runs
   (underlines, ruled lines) are set aside; the band's height is the median height of those pieces and its
   bottom their median bottom.
4. fit: scaled so the band is ``LINE * height`` tall with its bottom at ``BASELINE * height`` (aspect kept,
   anti-aliased), cropped to the ink's columns plus a margin, the width rounded up to a multiple of
   ``WIDTH_STRIDE`` and at most ``MAX_WIDTH``.
"""

import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from digitlab.data.synth_strings import BASELINE, LINE
from digitlab.inference.prepare import POLARITIES, ImageError, Polarity, crop_region, load_gray
from digitlab.models.crnn import WIDTH_STRIDE

LINE_HEIGHT = 32  # the string models' input height (CRNNConfig.input_size[0])
MAX_WIDTH = 2048  # wider lines are cut at the right (noted): 64 line heights hold any amount or code
MARGIN = 0.15  # blank columns kept left and right of the ink, as a share of the height (the generator's 2-10 px)
WORK_HEIGHT = 160  # taller sources are block-averaged to about this height first: the band needs no more
BLOCK = 0.5  # the background is estimated in square blocks of this share of the (working) image's height
BLOCK_PERCENTILE = 20  # the paper's level in a block: a low percentile, under the ink whatever covers it
MIN_CONTRAST = 0.12  # the ink must stand this far above the paper (of the full range)...
MIN_CNR = 6.0  # ...and this many noise standard deviations
INK_LEVEL = 0.4  # a stretched pixel above this is ink (pieces, band and extent)
TALL = 0.7  # pieces at least this share of the tallest one's height are digit bodies
RULE_LENGTH = 1.0  # horizontal runs longer than this many image heights are underlines or rules
NEAR = 0.3  # pieces more than this share of the band above or below it are not part of the line
SMALL = 0.12  # pieces smaller than this share of the band in both directions are specks, outside the extent


@dataclass(frozen=True)
class PreparedLine:
    """A line as the string model sees it, and how its pixels map back to the source image.

    Line pixel ``(u, v)`` (column, row) covers the source around ``(origin[0] + (u + 0.5) / scale,
    origin[1] + (v + 0.5) / scale)``: ``to_source`` does the arithmetic. A blank line has ``found`` False and
    an image with no columns.
    """

    image: np.ndarray  # (height, W) float32 in [0, 1], light ink on dark, W a multiple of WIDTH_STRIDE
    found: bool
    inverted: bool = False  # dark ink on light paper was inverted
    scale: float = 1.0  # line pixels per source pixel
    origin: tuple[float, float] = (0.0, 0.0)  # source (x, y) of the line image's top-left corner
    box: tuple[int, int, int, int] | None = None  # the ink's box in the source: x0, y0, x1, y1 (exclusive)
    band: tuple[float, float] | None = None  # the digits' band in the source: top and bottom rows (y)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def to_source(self, u: float, v: float) -> tuple[float, float]:
        """The source position (x, y) at the centre of line pixel column ``u``, row ``v``."""
        return self.origin[0] + (u + 0.5) / self.scale, self.origin[1] + (v + 0.5) / self.scale


def prepare_line(source: str | os.PathLike[str] | bytes | Image.Image | np.ndarray, *, height: int = LINE_HEIGHT,
                 polarity: Polarity = "auto", box: tuple[int, int, int, int] | None = None) -> PreparedLine:
    """Any image of one handwritten line -> the string model's input (see the module doc for the steps).

    Args:
        source: a path, the file's bytes, a PIL image, or an array ((H, W) grey or (H, W, 3|4)).
        height: the line height the model reads (its ``input_size[0]``).
        polarity: "auto" decides from the pixels; "dark-on-light" (ink on paper) or "light-on-dark" forces it.
        box: ``(x, y, width, height)`` in source pixels: read only this region; the mapping stays in source pixels.

    Returns:
        A ``PreparedLine``; ``found`` False (and a ``(height, 0)`` image) when the image holds no ink.

    Raises:
        ImageError: not a readable image, a bad ``box`` or ``polarity``, or ``height`` under 8.
    """
    if polarity not in POLARITIES:
        raise ImageError(f"polarity {polarity!r}: choose from {', '.join(POLARITIES)}")
    if height < 8:
        raise ImageError(f"line height {height}: must be at least 8 pixels")
    gray = load_gray(source)
    x0, y0 = 0, 0
    if box is not None:
        gray, (x0, y0) = crop_region(gray, box)
    f = max(1, gray.shape[0] // WORK_HEIGHT)  # block-average tall sources: the band needs ~100 rows at most
    if f > 1:
        h, w = (gray.shape[0] // f) * f, max(gray.shape[1] // f, 1) * f
        if gray.shape[1] < f:
            gray = np.repeat(gray.mean(axis=1, keepdims=True), f, axis=1)
        gray = gray[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3), dtype=np.float32)

    inverted = _is_dark_on_light(gray) if polarity == "auto" else polarity == "dark-on-light"
    x = 1.0 - gray if inverted else gray
    ink = _stretch_ink(x)
    blank = PreparedLine(np.zeros((height, 0), np.float32), False, inverted, notes=("no ink found",))
    if ink is None:
        return blank
    mask = ink > INK_LEVEL
    found = _band(mask)
    if found is None:
        return blank
    top, bottom, cols = found
    band_h = max(bottom - top, 1.0)
    scale = LINE * height / band_h  # line pixels per working pixel
    margin = MARGIN * height
    # The line's left edge, in working pixels: the ink's first column less the margin.
    left = cols[0] - margin / scale
    width = (cols[1] - cols[0]) * scale + 2 * margin
    n_cols = int(np.ceil(width / WIDTH_STRIDE) * WIDTH_STRIDE)
    notes = ["inverted"] if inverted else []
    if n_cols > MAX_WIDTH:
        n_cols = MAX_WIDTH
        notes.append(f"cut at {MAX_WIDTH} px")
    top_edge = bottom - BASELINE * height / scale  # working row at the line image's top edge
    image = _resample(ink, scale, left, top_edge, height, n_cols)
    peak = np.quantile(image[image > 0.2], 0.98) if (image > 0.2).sum() >= 4 else 0.0
    if peak <= 0:
        return blank
    np.clip(image / max(peak, 0.5), 0, 1, out=image)  # thin strokes averaged down: their ink back near 1

    s = scale / f  # line pixels per source pixel
    rows = np.flatnonzero(mask.any(axis=1))
    ink_box = (x0 + int(cols[0] * f), y0 + int(rows[0] * f), x0 + int(np.ceil(cols[1] * f)),
               y0 + int((rows[-1] + 1) * f))
    return PreparedLine(image, True, inverted, s, (x0 + left * f, y0 + top_edge * f), ink_box,
                        (y0 + top * f, y0 + bottom * f), tuple(notes))


def batch_lines(lines: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Prepared lines ``(H, W_i)`` -> ``(N, 1, H, Wmax)`` float32 zero-padded on the right (the generator's
    padding) and the widths ``(N,)`` int64; Wmax is a multiple of ``WIDTH_STRIDE``, at least one stride.

    Raises:
        ValueError: lines of different heights or not 2-D.
    """
    if any(np.ndim(line) != 2 for line in lines):
        raise ValueError("batch_lines: every line must be a 2-D (height, width) array")
    heights = {int(np.shape(line)[0]) for line in lines}
    if len(heights) > 1:
        raise ValueError(f"batch_lines: lines of different heights {sorted(heights)}")
    widths = np.array([np.shape(line)[1] for line in lines], np.int64)
    h = heights.pop() if heights else LINE_HEIGHT
    w_max = max(int(widths.max(initial=0)), 1)
    w_max = -(-w_max // WIDTH_STRIDE) * WIDTH_STRIDE
    batch = np.zeros((len(lines), 1, h, w_max), np.float32)
    for i, line in enumerate(lines):  # one copy per line: a slice assignment, not a pixel loop
        batch[i, 0, :, : widths[i]] = line
    return batch, widths


# ----------------------------------------------------------------------------------------- steps

def _is_dark_on_light(gray: np.ndarray) -> bool:
    """Paper is most of a line's pixels: a median nearer the bright end than the dark end is light paper."""
    lo, mid, hi = np.percentile(gray, [1, 50, 99])
    return bool(mid - lo > hi - mid)


def _background(x: np.ndarray) -> np.ndarray:
    """The paper's level under light ink: a low percentile per square block, the lowest of each block and its
    neighbours (a block that ink covers takes its neighbours' paper), interpolated bilinearly."""
    from scipy import ndimage as ndi

    h, w = x.shape
    b = max(4, round(BLOCK * h))
    hb, wb = -(-h // b), -(-w // b)
    padded = np.pad(x, ((0, hb * b - h), (0, wb * b - w)), mode="edge")
    blocks = padded.reshape(hb, b, wb, b).transpose(0, 2, 1, 3).reshape(hb, wb, b * b)
    level = ndi.minimum_filter(np.percentile(blocks, BLOCK_PERCENTILE, axis=-1), size=3, mode="nearest")
    # bilinear interpolation between block centres as two small matrix products (rows, then columns)
    return (_interp_matrix(h, b, hb) @ level.astype(np.float32) @ _interp_matrix(w, b, wb).T).astype(np.float32)


def _interp_matrix(n: int, b: int, nb: int) -> np.ndarray:
    """``(n, nb)`` weights that interpolate ``nb`` block centres (block side ``b``) linearly at ``n`` pixel
    centres, constant beyond the first and last centre."""
    pos = np.clip((np.arange(n, dtype=np.float32) + 0.5) / b - 0.5, 0, nb - 1)
    i0 = np.minimum(pos.astype(np.int64), nb - 1)
    i1 = np.minimum(i0 + 1, nb - 1)
    frac = pos - i0
    m = np.zeros((n, nb), np.float32)
    np.add.at(m, (np.arange(n), i0), 1 - frac)
    np.add.at(m, (np.arange(n), i1), frac)
    return m


def _otsu(x: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1] over a 256-bin histogram."""
    counts = np.bincount(np.clip((x * 255).astype(np.int32), 0, 255).ravel(), minlength=256).astype(np.float64)
    centers = (np.arange(256) + 0.5) / 255
    w0 = np.cumsum(counts)
    m0 = np.cumsum(counts * centers)
    total, mean = w0[-1], m0[-1]
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean * w0 - total * m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1
    return float(centers[int(np.argmax(between))] + 0.5 / 255)


def _stretch_ink(x: np.ndarray) -> np.ndarray | None:
    """Light ink over an uneven background -> ink near 1 on paper near 0; None when no ink stands out."""
    y = np.clip(x - _background(x), 0, None)
    if float(y.max(initial=0)) < 1e-6:
        return None
    t = _otsu(y)
    mask = y > t
    if mask.sum() < 8 or (~mask).sum() < 8:
        return None
    paper_px = y[~mask]
    paper = float(np.median(paper_px))
    sigma = 1.4826 * float(np.median(np.abs(paper_px - paper)))
    hi = float(np.quantile(y[mask], 0.9))
    contrast = hi - paper
    if contrast < MIN_CONTRAST or contrast < MIN_CNR * sigma:
        return None
    lo = paper + min(2 * sigma, 0.3 * contrast)  # the paper's texture and noise fall to 0
    return np.clip((y - lo) / (hi - lo), 0, 1).astype(np.float32)


def _band(mask: np.ndarray) -> tuple[float, float, tuple[float, float]] | None:
    """The digits' band (top and bottom rows, exclusive bottom) and the ink's columns (first, last + 1), in
    working pixels; None when no piece of ink is left."""
    from scipy import ndimage as ndi

    h, w = mask.shape
    rule = max(8, round(RULE_LENGTH * h))
    body = mask
    if w > rule:  # underlines and ruled lines: long horizontal runs, set aside for the band only
        body = mask & ~_long_runs(mask, rule)
    labels, n = ndi.label(body, structure=np.ones((3, 3), bool))
    if n == 0:
        labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
        if n == 0:
            return None
    slices = ndi.find_objects(labels)
    tops = np.array([s[0].start for s in slices], np.float64)
    bottoms = np.array([s[0].stop for s in slices], np.float64)
    lefts = np.array([s[1].start for s in slices], np.float64)
    rights = np.array([s[1].stop for s in slices], np.float64)
    heights, widths = bottoms - tops, rights - lefts
    tall = heights >= TALL * heights.max()
    top, bottom = float(np.median(tops[tall])), float(np.median(bottoms[tall]))
    band_h = max(bottom - top, 1.0)
    # The ink's extent: pieces that are not specks (a dot separator is about 0.2 of the band) and that reach the
    # band's rows (not print above or below the line). Rules are left out: one may cross the whole page; the
    # margin keeps as much of an underline as the generator draws beyond the digits.
    near = (bottoms > top - NEAR * band_h) & (tops < bottom + NEAR * band_h)
    kept = ((heights >= SMALL * band_h) | (widths >= SMALL * band_h)) & near
    cols = (float(lefts[kept | tall].min()), float(rights[kept | tall].max()))
    return top, bottom, cols


def _long_runs(mask: np.ndarray, length: int) -> np.ndarray:
    """Pixels of ``mask`` on a horizontal run at least ``length`` long, with a row of tolerance above and below
    (a sloping underline steps from row to row): run lengths from the starts and ends of the flattened rows."""
    h, w = mask.shape
    tolerant = mask.copy()
    tolerant[1:] |= mask[:-1]
    tolerant[:-1] |= mask[1:]
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = tolerant
    edges = np.diff(padded.ravel())
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # a run is [start, end) in padded
    long = (ends - starts) >= length
    marks = np.zeros(padded.size + 1, np.int32)
    np.add.at(marks, starts[long] + 1, 1)
    np.add.at(marks, ends[long] + 1, -1)
    on = np.cumsum(marks)[:-1].reshape(h, w + 2)[:, 1:-1] > 0
    return on & mask


def _resample(ink: np.ndarray, scale: float, left: float, top: float, height: int, n_cols: int) -> np.ndarray:
    """``(height, n_cols)`` line pixels; pixel ``(v, u)`` is the working image's area around ``(top + (v + 0.5) /
    scale, left + (u + 0.5) / scale)``: block-averaged first when shrinking (anti-aliasing), then bilinear."""
    from scipy import ndimage as ndi

    k = max(1, int(1 / scale))  # shrink by whole blocks first, so bilinear reads no more than 2x down
    src = ink
    if k > 1:
        h, w = ink.shape
        hp, wp = -(-h // k) * k, -(-w // k) * k
        src = np.pad(ink, ((0, hp - h), (0, wp - w))).reshape(hp // k, k, wp // k, k).mean(axis=(1, 3))
    # working coordinate c (pixel i covers [i, i + 1)) -> index (c / k - 0.5) in the block-averaged image
    rows = (top + (np.arange(height) + 0.5) / scale) / k - 0.5
    cols = (left + (np.arange(n_cols) + 0.5) / scale) / k - 0.5
    out = ndi.map_coordinates(src.astype(np.float32), np.meshgrid(rows, cols, indexing="ij"), order=1,
                              mode="constant", cval=0.0)
    return out.astype(np.float32)
