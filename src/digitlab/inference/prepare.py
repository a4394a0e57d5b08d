"""Real images prepared the MNIST way: one function for the CLI, the evaluation, the export and the service.

Usage::

    p = prepare_image("photo.jpg")                 # a path, bytes, a PIL image or an array
    p.found, p.image                               # False and None for a blank image; else (28, 28) uint8
    p.inverted, p.box, p.stroke                    # dark ink was inverted; ink box in the source; stroke px

MNIST's digits are light ink on a dark background, fitted into a 20x20 box with their aspect kept
(anti-aliased) and placed in the 28x28 frame by their centre of mass. A photo, a scan or a canvas
drawing fed without that preparation is the most common reason a digit model "misreads" a digit.
The steps, in order:

1. read (``load_gray``): any image Pillow reads; EXIF orientation; 16-bit, palette, RGBA (a
   transparent background becomes the colour opposite the ink) -> grayscale float in [0, 1].
   Corrupt, truncated, empty and oversized (decompression bomb) files raise ``ImageError``.
2. ink (``ink_map``): polarity from the border (a light background means dark ink: inverted;
   overridable), uneven lighting removed (a smooth quadratic background fitted to the darkest
   pixels), denoising (3x3 median) when the background is noisy, contrast stretched so the ink
   reaches 1, and a threshold (Otsu) that zeroes the background where noise makes it help.
   Too little contrast over the noise is "no digit found".
3. crop (``crop_digit``): connected components of the ink; specks far smaller than the digit are
   dropped; the crop is the box of what remains, grown into the faint ink connected to it.
4. fit (``fit_digit``): longest side to the spec's box (20 px) with the aspect kept, at 4x
   resolution first, where the stroke width is measured (area over skeleton length) and brought
   into MNIST's range when it is far off (thin strokes: faint ink raised, then a grey dilation;
   thick ones: a grey erosion), and an optional moment-based deskew is applied; then
   reduced with anti-aliasing and placed by its centre of mass (MNIST's digits have theirs at
   pixel (14, 14)).

SciPy and scikit-image (slow to import: docs/decisions.md#deferred-imports) are imported by the steps
that use them, so the Predictor, which imports this module for its names, loads a model without them.
"""

import contextlib
import io
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from digitlab.core.errors import DigitlabError
from digitlab.data.preprocess import MNIST_FIT_BOX, PreprocessSpec

Polarity = Literal["auto", "dark-on-light", "light-on-dark"]
POLARITIES: tuple[str, ...] = ("auto", "dark-on-light", "light-on-dark")

MAX_PIXELS = 40_000_000  # larger images are refused before decoding (a 40 MP photo is the most we expect)
MAX_BYTES = 50 * 1024 * 1024
# A stroke width (28x28 frame) outside WIDTH_OK is brought to the nearest end of WIDTH_TARGET
# (docs/decisions.md#stroke-width).
WIDTH_OK = (2.0, 4.0)
WIDTH_TARGET = (2.7, 3.3)
# A thin line's faint ink (above FAINT_FLOOR) is raised by FAINT_GAMMA before thickening (docs/decisions.md#faint-ink).
FAINT_GAMMA = 0.5
FAINT_FLOOR = 0.03
# Ink above FAINT_LEVEL connected to the digit is part of it, a fading pen line (docs/decisions.md#faint-ink-crop).
FAINT_LEVEL = 0.1
MIN_CONTRAST = 0.12  # ink must stand this far (of the full range) above the background...
MIN_CNR = 6.0  # ...and this many noise standard deviations
SPECK_FRACTION = 0.06  # components smaller than this share of the largest are specks
SCATTER_COVER = 0.5  # ink over half the image is noise or texture, not a digit (docs/decisions.md#scattered-ink)
SCATTER_PIECES = 40  # ...and so is ink in this many pieces with over 10% of it in specks
_SUPER = 4  # fitting works at 4x the final resolution
# Printed lines (docs/decisions.md#printed-lines): a straight run LINE_SPAN of the image's side long and
# under LINE_THIN times as thick as the other strokes; two or more runs across FULL_SPAN of it, no thicker
# than the strokes; a box's wall, a thin vertical run WALL_SPAN of the space between two found rules. Not
# looked for under LINE_MIN_SIDE px (a 28x28 crop's stem would pass for a rule).
LINE_SPAN = 0.4
LINE_THIN = 0.7
FULL_SPAN = 0.9
WALL_SPAN = 0.8
LINE_MIN_SIDE = 48
# Ink over this share of the image, when the usual background fit finds none, is a digit filling its frame
# (a postal scan): read again with a flat background (docs/decisions.md#frame-filling-digits).
FILLED_SHARE = 0.25
WORK_SIDE = 320  # larger images are block-averaged down to this longest side before anything else


class ImageError(DigitlabError):
    """An input that is not a readable image (corrupt, truncated, empty, too large, wrong kind)."""


@dataclass(frozen=True)
class Prepared:
    """A digit as the model sees it, or ``found=False`` when the image holds none."""

    image: np.ndarray | None  # (H, W) uint8 in the spec's convention; None when no digit was found
    found: bool
    inverted: bool = False  # dark ink on a light background was inverted
    box: tuple[int, int, int, int] | None = None  # the ink's box in the source: x0, y0, x1, y1 (exclusive)
    stroke: float | None = None  # stroke width in the final frame before any correction, px
    notes: tuple[str, ...] = field(default_factory=tuple)  # what was done: "denoised", "thickened", ...


# ----------------------------------------------------------------------------------------- reading

def _kind(mode: int) -> str | None:
    """What a file that is not a regular file is ("a folder", "a FIFO", ...); None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_image_file(path: Path, limit: int | None = None) -> bytes:
    """A regular file's bytes, at most ``limit`` (default ``MAX_BYTES``) of them.

    Devices, FIFOs, sockets and folders are refused before they are opened (``/dev/zero`` never
    ends, a FIFO blocks until a writer comes), and the read stops one byte past the limit whatever
    ``st_size`` says (a file that grows while it is read).

    Raises:
        ImageError: not a regular file, unreadable, or over the limit.
    """
    limit = MAX_BYTES if limit is None else limit
    name = str(path)
    try:
        kind = _kind(os.stat(path).st_mode)
        if kind is not None:
            raise ImageError(f"{name}: is {kind}, not an image file")
        # O_NONBLOCK: should the path become a FIFO after the check, opening it does not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            kind = _kind(st.st_mode)
            if kind is not None:
                raise ImageError(f"{name}: is {kind}, not an image file")
            if st.st_size > limit:
                raise ImageError(f"{name}: {st.st_size:,} bytes is over the {limit:,}-byte limit for an image")
            data = fh.read(limit + 1)
    except OSError as e:
        raise ImageError(f"{name}: {e.strerror or e}") from None
    if len(data) > limit:
        raise ImageError(f"{name}: over the {limit:,}-byte limit for an image")
    return data


def load_gray(source: str | os.PathLike[str] | bytes | Image.Image | np.ndarray) -> np.ndarray:
    """Any image -> ``(H, W)`` float32 grayscale in [0, 1].

    Raises:
        ImageError: not an image, empty, truncated or corrupt, or more than ``MAX_PIXELS`` pixels.
    """
    if isinstance(source, np.ndarray):
        return _array_gray(source)
    if isinstance(source, Image.Image):
        return _pil_gray(source, "image")
    if isinstance(source, bytes | bytearray | memoryview):
        data, name = bytes(source), "image"
    else:
        path = Path(source)
        name = str(path)
        data = read_image_file(path)
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes), not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"{name}: {w}x{h} pixels is over the {MAX_PIXELS:,}-pixel limit "
                                 "(a decompression bomb?)")
            im.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: too many pixels (a decompression bomb?)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated or corrupt data
        raise ImageError(f"{name}: corrupt or truncated image ({' '.join(str(e).split()) or type(e).__name__})") \
            from None
    return _pil_gray(im, name)


def _pil_gray(im: Image.Image, name: str) -> np.ndarray:
    with contextlib.suppress(Exception):  # a broken EXIF block must not lose the image: keep it as stored
        im = ImageOps.exif_transpose(im) or im
    if im.width == 0 or im.height == 0:
        raise ImageError(f"{name}: an image of {im.width}x{im.height} pixels")
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.float32)
        top = 65535.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        return np.clip(a / top, 0, 1)
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32))
        return np.clip(a / max(float(a.max(initial=0)), 1.0), 0, 1)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255
        luma = np.asarray(rgba.convert("L"), dtype=np.float32) / 255
        if alpha.min() < 0.98:  # real transparency: what shows through is the colour opposite the ink
            opaque = alpha.sum()
            ink_luma = float((alpha * luma).sum() / opaque) if opaque > 0 else 0.0
            bg = 1.0 if ink_luma < 0.5 else 0.0
            return (alpha * luma + (1 - alpha) * bg).astype(np.float32)
        return luma
    return np.asarray(im.convert("L"), dtype=np.float32) / 255


def _array_gray(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ImageError("an array with NaN or infinite values is not an image")
        if a.dtype != np.uint8:
            a = (np.clip(a.astype(np.float64), 0, 1 if a.max(initial=0) <= 1 else 255)
                 * (255 if a.max(initial=0) <= 1 else 1)).astype(np.uint8)
        return _pil_gray(Image.fromarray(a), "array")
    if a.ndim != 2 or 0 in a.shape:
        raise ImageError(f"an array of shape {a.shape} is not an image (want (H, W) or (H, W, 3|4))")
    if a.size > MAX_PIXELS:
        raise ImageError(f"an array of {a.size:,} pixels is over the {MAX_PIXELS:,}-pixel limit")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535
    f = a.astype(np.float32)
    if not np.isfinite(f).all():
        raise ImageError("an array with NaN or infinite values is not an image")
    return np.clip(f / (255.0 if f.max(initial=0) > 1 else 1.0), 0, 1)


def reduction(shape: tuple[int, ...], longest: int = WORK_SIDE) -> int:
    """The block side ``reduce_large`` averages over for an image of ``shape``: ceil(longest side / ``longest``)."""
    return -(-max(shape) // longest)


def reduce_large(gray: np.ndarray, longest: int = WORK_SIDE) -> tuple[np.ndarray, int]:
    """Average ``f x f`` blocks so the longest side is at most ``longest``; returns the image and ``f``.

    The fitted digit is 20 px (80 px while fitting): a larger working image only costs time. A side
    shorter than ``f`` (a thin strip, 2 x 700) is averaged whole into one row or column, so the result
    is never empty.
    """
    f = reduction(gray.shape, longest)
    if f <= 1:
        return gray, 1
    for axis in (0, 1):
        if gray.shape[axis] < f:  # (its mean, repeated: the block's average is the whole side's)
            gray = np.repeat(gray.mean(axis=axis, keepdims=True, dtype=np.float32), f, axis=axis)
    h, w = (gray.shape[0] // f) * f, (gray.shape[1] // f) * f
    return gray[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3), dtype=np.float32), f


# ----------------------------------------------------------------------------------------- ink

@dataclass(frozen=True)
class Ink:
    """Light ink on zero background in [0, 1], with the mask of ink pixels."""

    ink: np.ndarray  # (H, W) float32
    mask: np.ndarray  # (H, W) bool, ink above the Otsu threshold
    inverted: bool
    found: bool
    notes: tuple[str, ...] = ()
    noise: float = 0.0  # the background's noise (robust standard deviation), in units of the ink's contrast


def _border(x: np.ndarray) -> np.ndarray:
    b = max(1, round(0.04 * min(x.shape)))
    return np.concatenate([x[:b].ravel(), x[-b:].ravel(), x[b:-b, :b].ravel(), x[b:-b, -b:].ravel()])


def _background(x: np.ndarray) -> np.ndarray:
    """A smooth (quadratic) background fitted to the darker pixels (for images of 48 px and more)."""
    h, w = x.shape
    step = max(1, max(h, w) // 64)  # fit on a coarse grid: the background is smooth
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    v = x[::step, ::step].ravel().astype(np.float64)
    u, t = (xs.ravel() / w - 0.5), (ys.ravel() / h - 0.5)
    a = np.stack([np.ones_like(u), u, t, u * u, u * t, t * t], axis=1)
    keep = v <= np.quantile(v, 0.5)
    coef = np.zeros(6)
    for _ in range(3):  # refit on the pixels below the surface's 60th residual percentile (no ink)
        ak = a[keep]
        coef = np.linalg.solve(ak.T @ ak + 1e-9 * np.eye(6), ak.T @ v[keep])  # 6x6 normal equations
        r = v - a @ coef
        keep = r <= np.quantile(r, 0.6)
    yy, xx = np.ogrid[0:h, 0:w]
    u2, t2 = xx / w - 0.5, yy / h - 0.5
    c = coef.astype(np.float32)
    return (c[0] + c[1] * u2 + c[2] * t2 + c[3] * u2 * u2 + c[4] * u2 * t2 + c[5] * t2 * t2).astype(np.float32)


def _otsu(x: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1], from a 256-bin histogram (one pass of bincount)."""
    from skimage.filters import threshold_otsu

    counts = np.bincount(np.minimum((x * 255).astype(np.int32), 255).ravel(), minlength=256)
    nz = np.flatnonzero(counts)
    counts = counts[nz[0]:nz[-1] + 1]
    centers = (np.arange(nz[0], nz[-1] + 1) + 0.5) / 255
    if len(counts) < 2:
        return float(centers[0])
    return float(threshold_otsu(hist=(counts, centers)))


def _noise(x: np.ndarray) -> float:
    """The background's noise as a robust standard deviation, the smaller of two estimates: 1.4826 x
    the median absolute deviation of the border (wrong when ink fills the border: a tight crop), and
    the spread between the median and the lower quartile of the whole image over 0.674 (wrong when ink
    fills much of the image: a thick digit)."""
    b = _border(x)
    q25, q50 = np.quantile(x, [0.25, 0.5])
    return min(1.4826 * float(np.median(np.abs(b - np.median(b)))), max(float(q50 - q25), 0.0) / 0.674)


def ink_map(gray: np.ndarray, polarity: Polarity = "auto") -> Ink:
    """Grayscale in [0, 1] -> light ink on a zero background, contrast-stretched (steps 2 of the module doc)."""
    if polarity not in POLARITIES:
        raise ImageError(f"polarity {polarity!r}: choose from {', '.join(POLARITIES)}")
    edge = float(np.median(_border(gray)))
    inverted = polarity == "dark-on-light" or (polarity == "auto" and edge > 0.5)
    x = 1.0 - gray if inverted else gray.copy()
    ink = _ink(x, edge if not inverted else 1.0 - edge, inverted)
    if not ink.found and min(x.shape) >= 48:
        paper = x <= _otsu(x)
        # much ink and none found: a digit that fills its frame
        if 1.0 - float(paper.mean()) > FILLED_SHARE and paper.sum() >= 16:
            filled = _ink(x, float(np.median(x[paper])), inverted, paper=paper)
            return filled if filled.found else ink
    return ink


def _ink(x: np.ndarray, level: float, inverted: bool, *, paper: np.ndarray | None = None) -> Ink:
    """``ink_map`` after the polarity: ``level`` is the paper's level when the background is taken as flat.

    ``paper``: given when the digit fills its frame (the pixels under Otsu's threshold). The darker half of
    the pixels (which the quadratic background fit takes for paper), the border and the quartiles are then
    ink: a flat background at ``level``, and the noise measured on the paper's pixels only.
    """
    from scipy import ndimage as ndi

    notes: list[str] = ["inverted"] if inverted else []
    flat = min(x.shape) < 48 or paper is not None  # a flat background when small or filled (smooth from 48 px)
    x = x - np.float32(level) if flat else x - _background(x)

    def noise(x: np.ndarray) -> float:
        if paper is None:
            return _noise(x)
        return min(_noise(x), 1.4826 * float(np.median(np.abs(x[paper] - np.median(x[paper])))))

    if paper is not None:
        notes.append("fills its frame")
    sigma = noise(x)
    if sigma > 0.02 and min(x.shape) >= 16:
        x = ndi.median_filter(x, size=3)
        sigma = noise(x)
        notes.append("denoised")
    np.clip(x, 0, None, out=x)
    if float(x.max(initial=0)) - float(x.min(initial=0)) < 1e-6:
        return Ink(np.zeros_like(x), np.zeros(x.shape, bool), inverted, False, (*notes, "blank"))
    t = _otsu(x)
    mask = x > t
    base = float(np.median(x[~mask])) if (~mask).any() else 0.0
    hi = float(np.quantile(x[mask], 0.95)) if mask.any() else 0.0
    contrast = hi - base
    if contrast < MIN_CONTRAST or contrast < MIN_CNR * sigma or mask.sum() < 4:
        return Ink(np.zeros_like(x), np.zeros(x.shape, bool), inverted, False, (*notes, "no ink"))
    x = np.clip((x - base) / contrast, 0, 1).astype(np.float32)
    if sigma > 0.02 or base > 0.05:  # a noisy or textured background: zero what is not ink
        x[x < 0.5 * (t - base) / contrast] = 0
        notes.append("thresholded")
    return Ink(x, mask, inverted, True, tuple(notes), sigma / contrast)


# ----------------------------------------------------------------------------------------- printed lines

def _runs(mask: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Pixels of ``mask`` on a straight run at least ``length`` long along ``axis`` (1: horizontal), with a
    pixel of tolerance across it (a scan's rule is rarely one row exactly)."""
    from scipy import ndimage as ndi

    across = (3, 1) if axis == 1 else (1, 3)
    along = (1, length) if axis == 1 else (length, 1)
    tolerant = ndi.binary_dilation(mask, structure=np.ones(across, bool))
    return ndi.binary_opening(tolerant, structure=np.ones(along, bool)) & mask


def _thickness(labels: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Each labelled run's thickness across ``axis``: the median over its length of the pixels across it (a
    stroke that crosses a rule thickens it only where it crosses)."""
    pos = np.nonzero(labels)
    along = pos[axis]
    counts = np.zeros((n + 1, labels.shape[axis]), np.int32)
    np.add.at(counts, (labels[pos], along), 1)
    return np.array([float(np.median(row[row > 0])) if row.any() else 0.0 for row in counts[1:]])


def _cell_walls(mask: np.ndarray, lines: np.ndarray, stroke: float) -> np.ndarray:
    """The vertical walls of a box or comb field whose rules were found: thin vertical runs nearly as long
    as the space between two rules (shorter than ``LINE_SPAN`` of the image when the box is small)."""
    from scipy import ndimage as ndi

    rows = np.flatnonzero(lines.mean(axis=1) > 0.5)  # rows that a found rule crosses nearly whole
    if len(rows) < 2:
        return np.zeros_like(mask)
    bands = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    centres = np.array([band.mean() for band in bands])
    if len(centres) < 2:
        return np.zeros_like(mask)
    gap = float(np.median(np.diff(centres)))
    runs = _runs(mask, max(8, round(WALL_SPAN * gap)), 0)
    labels, n = ndi.label(runs, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros_like(mask)
    rest = mask & ~runs  # the strokes measured again without the walls, which were too short to be left out
    if rest.sum() >= 16:
        stroke = max(stroke, edge_width(rest))
    return np.isin(labels, np.flatnonzero(_thickness(labels, n, 0) <= LINE_THIN * stroke) + 1)


def remove_lines(ink: Ink) -> Ink:
    """Ruled and grid lines and printed boxes taken out of the ink, strokes that cross them kept.

    A printed line is a straight run (horizontal or vertical) at least ``LINE_SPAN`` of the image's side
    long and thinner than ``LINE_THIN`` times the strokes of the ink that is not on such runs: the stem of
    a 1 or a 4 is as long but as thick as the other strokes, a rule is thinner (docs/decisions.md#printed-lines).
    Where a stroke crosses a removed line, the gap is closed across the line from the ink on both sides.
    """
    from scipy import ndimage as ndi

    h, w = ink.mask.shape
    if min(h, w) < LINE_MIN_SIDE or not ink.mask.any():
        return ink
    # a printed line fainter than the ink may fall under the Otsu threshold: look at faint ink too
    mask = ink.mask | (ink.ink > max(FAINT_LEVEL, 3 * ink.noise))
    found = [(axis, _runs(mask, max(8, round(LINE_SPAN * side)), axis)) for axis, side in ((1, w), (0, h))]
    candidates = found[0][1] | found[1][1]
    if not candidates.any():
        return ink
    lines = np.zeros_like(mask)
    parts = []  # per axis: the labelled candidate runs, each one's thickness and its share of the image's side
    for axis, runs in found:
        labels, n = ndi.label(runs, structure=np.ones((3, 3), bool))
        slices = ndi.find_objects(labels)
        across = np.array([(sl[axis].stop - sl[axis].start) / labels.shape[axis] for sl in slices])
        parts.append((labels, _thickness(labels, n, axis), across))
    rest = ink.mask & ~candidates
    # the strokes' width from the ink off the runs; when a run is all there is (a 1 in a box), the thickest run
    stroke = edge_width(rest) if rest.sum() >= 16 else max(float(t.max(initial=0)) for _, t, _ in parts)
    for labels, thickness, span in parts:
        # runs across the whole image, two or more side by side, are rules unless thicker than the strokes
        full = span >= FULL_SPAN
        thin = (thickness <= LINE_THIN * stroke) | (full & (full.sum() >= 2) & (thickness <= stroke))
        lines |= np.isin(labels, np.flatnonzero(thin) + 1)
    walls = _cell_walls(mask & ~lines, lines, stroke)
    lines |= walls
    if not lines.any():
        return ink
    kept = ink.ink * ~lines
    # a stroke crossing a rule: close the gap across it (the greyest neighbour on both sides)
    span = 2 * max(1, round(float(np.max(ndi.distance_transform_edt(lines))))) + 3
    bridged = np.maximum(ndi.grey_closing(kept, size=(span, 1)), ndi.grey_closing(kept, size=(1, span)))
    x = np.where(lines, bridged, kept).astype(np.float32)
    new_mask = (ink.mask & ~lines) | (lines & (bridged > 0.5))
    if new_mask.sum() < 4:
        return Ink(np.zeros_like(x), new_mask, ink.inverted, False, (*ink.notes, "lines removed", "no ink"),
                   ink.noise)
    return Ink(x, new_mask, ink.inverted, True, (*ink.notes, "lines removed"), ink.noise)


# ----------------------------------------------------------------------------------------- crop and fit

def grow_into_faint(ink: np.ndarray, mask: np.ndarray, level: float) -> np.ndarray:
    """``mask`` grown into the fainter ink connected to it (``ink > level``; hysteresis): a faint or thin
    stroke stays part of its digit, while faint noise away from the strokes stays out."""
    from scipy import ndimage as ndi

    faint, n = ndi.label(ink > level, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    hit = np.zeros(n + 1, bool)
    hit[np.unique(faint[mask])] = True
    hit[0] = False
    return hit[faint] | mask


def crop_digit(ink: Ink) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """The ink with specks removed, cropped to its box (grown into the faint ink connected to it); None
    when nothing is left or the ink is scattered like noise or texture."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(ink.mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return None
    areas = np.bincount(labels.ravel())[1:]
    big = areas >= SPECK_FRACTION * areas.max()
    if _scattered(ink.mask, areas, big):
        return None
    slices = ndi.find_objects(labels)
    if not big.all():  # a small piece inside the digit's box (grown by 15%) is a broken stroke, not a speck
        rows = [s for s, b in zip(slices, big, strict=True) if b]
        y0, y1 = min(s[0].start for s in rows), max(s[0].stop for s in rows)
        x0, x1 = min(s[1].start for s in rows), max(s[1].stop for s in rows)
        my, mx = 0.15 * (y1 - y0), 0.15 * (x1 - x0)
        for i, sl in enumerate(slices):
            if not big[i] and sl[0].start >= y0 - my and sl[0].stop <= y1 + my and sl[1].start >= x0 - mx \
                    and sl[1].stop <= x1 + mx:
                big[i] = True
    keep = ink.mask if big.all() else np.isin(labels, np.flatnonzero(big) + 1)
    grow = max(1, round(edge_width(keep) / 2))  # the anti-aliased edge kept around strokes
    x = ink.ink.copy() if not big.all() else ink.ink
    h, w = x.shape
    for i, sl in enumerate(slices):
        if sl is None or big[i]:
            continue
        ys = slice(max(sl[0].start - grow, 0), min(sl[0].stop + grow, h))
        xs = slice(max(sl[1].start - grow, 0), min(sl[1].stop + grow, w))
        speck = ndi.binary_dilation(labels[ys, xs] == i + 1, iterations=grow)
        x[ys, xs][speck & ~keep[ys, xs]] = 0

    def box(m: np.ndarray) -> tuple[int, int, int, int]:  # of ``m``'s pixels, and ``grow`` px around them
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        return (max(int(rows[0]) - grow, 0), min(int(rows[-1]) + 1 + grow, h),
                max(int(cols[0]) - grow, 0), min(int(cols[-1]) + 1 + grow, w))

    y0, y1, x0, x1 = box(keep)
    # a stroke too faint for the threshold (a thin pen's line, the top of a 9's loop) is in the box
    level = max(FAINT_LEVEL, 3 * ink.noise)
    faint = x > level
    if int(faint.sum()) > int(faint[y0:y1, x0:x1].sum()):  # some outside the box: label only then
        y0, y1, x0, x1 = box(grow_into_faint(x, keep, level))
    crop = x[y0:y1, x0:x1]
    # tighten to the visible ink (on a noisy background, to clearly visible ink: noise is faint everywhere)
    visible = crop > 0.05 if ink.noise < 0.01 else ndi.uniform_filter(crop, 3) > max(0.05, min(2 * ink.noise, 0.3))
    ys, xs = np.nonzero(visible)
    if len(ys) == 0:
        return None
    y0, y1, x0, x1 = y0 + int(ys.min()), y0 + int(ys.max()) + 1, x0 + int(xs.min()), x0 + int(xs.max()) + 1
    return x[y0:y1, x0:x1], (x0, y0, x1, y1)


def _scattered(mask: np.ndarray, areas: np.ndarray, big: np.ndarray) -> bool:
    """Noise or texture rather than a digit: ink over half the image, or in many pieces none of which
    dominates (docs/decisions.md#scattered-ink)."""
    many = len(areas) >= SCATTER_PIECES // 4  # one piece covering most of a tight crop is a digit, not texture
    return bool(many and (mask.mean() > SCATTER_COVER or
                          (len(areas) >= SCATTER_PIECES and areas[big].sum() < 0.9 * areas.sum())))


def edge_width(mask: np.ndarray) -> float:
    """Stroke width estimated as twice the area over the boundary length (cheap; for large masks)."""
    from scipy import ndimage as ndi

    boundary = int((mask & ~ndi.binary_erosion(mask)).sum())
    return 2 * int(mask.sum()) / max(boundary, 1)


def _stroke_width(mask: np.ndarray) -> float:
    """Ink area over skeleton length: the mean stroke width of a binary drawing, in pixels."""
    from skimage.morphology import skeletonize

    area = int(mask.sum())
    if area == 0:
        return 0.0
    length = int(skeletonize(mask).sum())
    return area / max(length, 1)


def _restroke(x: np.ndarray, width: float, goal: float) -> np.ndarray:
    """Strokes of ``width`` px brought towards ``goal`` px (both at the working resolution).

    Thin strokes have their faint ink raised (``FAINT_GAMMA`` above ``FAINT_FLOOR``), then a grey
    dilation by half the shortfall: the grey profile across a stroke is kept, and a stroke broken to
    faint ink stays whole. Thick ones are eroded by half the excess only: a full erosion erases a
    digit's narrower parts (docs/decisions.md#stroke-width).
    """
    from scipy import ndimage as ndi

    if goal > width:
        x = np.clip((x - FAINT_FLOOR) / (1 - FAINT_FLOOR), 0, 1) ** FAINT_GAMMA
        return ndi.grey_dilation(x, footprint=_disk(max(1, round((goal - width) / 2))))
    r = min(max(1, round((width - goal) / 4)), 2 * _SUPER)  # a blob's 'width' is its size: erode 2 px at most
    return ndi.grey_erosion(x, footprint=_disk(r))


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return yy * yy + xx * xx <= r * r


def _deskew(x: np.ndarray) -> np.ndarray:
    """Shear so the ink's principal axis is vertical (second-order moments; the classic MNIST deskew)."""
    from scipy import ndimage as ndi

    total = float(x.sum())
    if total <= 0:
        return x
    yy, xx = np.mgrid[0:x.shape[0], 0:x.shape[1]]
    cy, cx = float((yy * x).sum() / total), float((xx * x).sum() / total)
    var_y = float(((yy - cy) ** 2 * x).sum() / total)
    cov = float(((yy - cy) * (xx - cx) * x).sum() / total)
    if var_y < 1e-6:
        return x
    alpha = cov / var_y
    # output (r, c) reads input (r, c + alpha * (r - cy)); pad so the sheared ink stays in frame
    pad = int(np.ceil(abs(alpha) * x.shape[0] / 2)) + 1
    x = np.pad(x, ((0, 0), (pad, pad)))
    matrix = np.array([[1.0, 0.0], [alpha, 1.0]])
    offset = np.array([0.0, -alpha * cy])
    out = ndi.affine_transform(x, matrix, offset=offset, order=1, mode="constant")
    ys, xs = np.nonzero(out > 0.02)
    return out[ys.min():ys.max() + 1, xs.min():xs.max() + 1] if len(ys) else out


def _resize(x: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(x.astype(np.float32), mode="F").resize((w, h), Image.Resampling.LANCZOS),
                      dtype=np.float32)


def fit_digit(crop: np.ndarray, spec: PreprocessSpec | None = None, *, deskew: bool = False,
              fix_stroke: bool = True) -> tuple[np.ndarray, float, tuple[str, ...]]:
    """A cropped digit (light ink, float in [0, 1]) -> the model's frame as uint8, its stroke width, notes."""
    from scipy import ndimage as ndi

    box = spec.fit_box if spec else MNIST_FIT_BOX
    out_h, out_w = spec.input_size if spec else (28, 28)
    notes: list[str] = []
    big = box * _SUPER

    def to_box(a: np.ndarray) -> np.ndarray:
        h, w = a.shape
        s = big / max(h, w)
        return np.clip(_resize(a, max(1, round(w * s)), max(1, round(h * s))), 0, 1)

    x = to_box(crop)
    if deskew:
        x = to_box(_deskew(x))
        notes.append("deskewed")
    width = _stroke_width(x > 0.5) / _SUPER
    if fix_stroke and width > 0 and not WIDTH_OK[0] <= width <= WIDTH_OK[1]:
        goal = min(max(width, WIDTH_TARGET[0]), WIDTH_TARGET[1])
        if goal > width:
            x = np.pad(x, int(goal * _SUPER))  # room to grow
        x = _restroke(x, width * _SUPER, goal * _SUPER)
        notes.append("thickened" if goal > width else "thinned")
        ys, xs = np.nonzero(x > 0.05)
        if len(ys):
            x = to_box(x[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
    h, w = x.shape
    s = box / max(h, w)
    small = np.clip(_resize(x, max(1, round(w * s)), max(1, round(h * s))), 0, None)
    peak = float(small.max(initial=0))
    if peak <= 0:
        small = np.zeros_like(small)
    else:
        small /= peak
    frame = np.zeros((out_h, out_w), np.float32)
    sh, sw = small.shape
    cy, cx = ndi.center_of_mass(small) if peak > 0 else ((sh - 1) / 2, (sw - 1) / 2)
    # MNIST's centre of mass sits at pixel (14, 14) of the 28x28 frame (docs/decisions.md#centre-of-mass)
    top = int(np.clip(round(out_h / 2 - cy), 0, out_h - sh))
    left = int(np.clip(round(out_w / 2 - cx), 0, out_w - sw))
    frame[top:top + sh, left:left + sw] = small
    img = np.round(frame * 255).astype(np.uint8)
    if spec is not None and spec.polarity == "dark-on-light":
        img = 255 - img
    return img, width, tuple(notes)


def prepare_image(source: str | os.PathLike[str] | bytes | Image.Image | np.ndarray,
                  spec: PreprocessSpec | None = None, *, polarity: Polarity = "auto", deskew: bool = False,
                  fix_stroke: bool = True, remove_printed_lines: bool = True,
                  box: tuple[int, int, int, int] | None = None) -> Prepared:
    """Any image of one digit -> the model's input (see the module doc for the steps).

    Args:
        source: a path, the file's bytes, a PIL image, or an array ((H, W) gray or (H, W, 3|4)).
        spec: the model's preprocessing spec (frame size, box, polarity); MNIST's when None.
        polarity: "auto" decides from the background; "dark-on-light" (ink on paper) or
            "light-on-dark" (MNIST-like) forces it.
        deskew: straighten slanted digits (only helps models trained on deskewed data).
        fix_stroke: bring a stroke width far from MNIST's into its range.
        remove_printed_lines: take ruled and grid lines and printed boxes out of the ink (``remove_lines``).
        box: ``(x, y, width, height)`` in source pixels: read only this region (a form's field); the
            returned ``box`` stays in source pixels.

    Raises:
        ImageError: the source is not a readable image.
    """
    source_gray = load_gray(source)
    x0, y0 = 0, 0
    if box is not None:
        source_gray, (x0, y0) = crop_region(source_gray, box)
    sh, sw = source_gray.shape
    if min(sh, sw) < reduction(source_gray.shape):  # under one pixel thick at the working size
        raise ImageError(f"a {sw} x {sh} px image is too thin to hold a digit (the short side must be at least "
                         f"1/{WORK_SIDE} of the long side)")
    gray, factor = reduce_large(source_gray)
    ink = ink_map(gray, polarity)
    if ink.found and remove_printed_lines:
        ink = remove_lines(ink)
    if not ink.found:
        return Prepared(None, False, ink.inverted, notes=ink.notes)
    cropped = crop_digit(ink)
    if cropped is None:
        return Prepared(None, False, ink.inverted, notes=(*ink.notes, "no digit-like ink"))
    crop, ink_box = cropped
    found_box = (x0 + ink_box[0] * factor, y0 + ink_box[1] * factor, x0 + ink_box[2] * factor,
                 y0 + ink_box[3] * factor)
    img, width, notes = fit_digit(crop, spec, deskew=deskew, fix_stroke=fix_stroke)
    return Prepared(img, True, ink.inverted, found_box, round(width, 2), ink.notes + notes)


def parse_box(text: str) -> tuple[int, int, int, int]:
    """``"x,y,w,h"`` -> a region of interest; ``ImageError`` with one line when it is not four whole numbers
    with a positive width and height."""
    parts = [p.strip() for p in text.split(",")]
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise ImageError(f"box {text!r}: want x,y,width,height in pixels (four whole numbers)") from None
    return check_region((x, y, w, h))


def check_region(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """``box`` when x and y are 0 or more and the width and height 1 or more; else one-line ``ImageError``."""
    x, y, w, h = box
    if x < 0 or y < 0 or w < 1 or h < 1:
        raise ImageError(f"box {x},{y},{w},{h}: x and y must be 0 or more, width and height 1 or more")
    return x, y, w, h


def crop_region(gray: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """The part of ``gray`` inside ``box`` (x, y, width, height; clipped to the image) and its top-left corner.

    Raises:
        ImageError: the box is malformed or lies outside the image.
    """
    x, y, w, h = check_region(tuple(int(v) for v in box))  # type: ignore[arg-type]
    height, width = gray.shape
    if x >= width or y >= height:
        raise ImageError(f"box {x},{y},{w},{h} lies outside the {width}x{height} image")
    return gray[y:min(y + h, height), x:min(x + w, width)], (x, y)
