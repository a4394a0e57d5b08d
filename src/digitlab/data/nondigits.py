"""Synthetic non-digits in MNIST's convention, for teaching a model what to reject (outlier exposure).

Usage::

    bank = synthetic_nondigits(20000, seed=0)      # (20000, 28, 28) uint8, light ink on dark

A digit model trained only on digits reads anything as a digit, often confidently. Outlier exposure
(Hendrycks et al., 2019) adds images that are not digits to training with a uniform target, so the
model learns to be unsure of them and a confidence threshold rejects them. The images are drawn as
MNIST's digits were prepared (ink fitted into a 20x20 box, aspect kept, centre of mass at pixel
(14, 14)): random pen scribbles, letters that do not look like digits (rendered with matplotlib's
bundled fonts; ``TRAIN_FONTS`` is disjoint from the fonts ``benchmarks/bench_rejection.py``
measures with), filled blobs, and strokes too thick to be writing. Generated in a few seconds.
"""

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from digitlab.core.fileio import atomic_path
from digitlab.core.paths import user_cache_dir

# Letters that can pass for a digit (O/0, l/1, S/5, Z/2, B/8, g/9, ...) are left out: teaching the model
# to doubt them would teach it to doubt those digits.
LETTERS = "ACEFHJKMNPRUVWXYacdefhkmnprtuvwxy"
TRAIN_FONTS = ("DejaVuSans-Oblique.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif-BoldItalic.ttf",
               "STIXGeneralBol.ttf", "cmb10.ttf", "cmtt10.ttf")
CANVAS = 56
KINDS = ("scribble", "letter", "blob")
VERSION = 1  # bump when the drawings change: cached banks are keyed by it


def _fit(ink: np.ndarray, box: int = 20, size: int = 28) -> np.ndarray:
    """Light ink (float, any size) -> ``(size, size)`` uint8: longest side ``box``, centre of mass centred."""
    ys, xs = np.nonzero(ink > 0.05)
    if len(ys) == 0:
        return np.zeros((size, size), np.uint8)
    crop = ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape
    s = box / max(h, w)
    small = np.asarray(Image.fromarray(crop.astype(np.float32), mode="F").resize(
        (max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS), dtype=np.float32).clip(0, None)
    small /= max(float(small.max()), 1e-6)
    cy, cx = ndi.center_of_mass(small)
    sh, sw = small.shape
    top = int(np.clip(round(size / 2 - cy), 0, size - sh))
    left = int(np.clip(round(size / 2 - cx), 0, size - sw))
    out = np.zeros((size, size), np.float32)
    out[top:top + sh, left:left + sw] = small
    return np.round(out * 255).astype(np.uint8)


def _scribble(rng: np.random.Generator) -> np.ndarray:
    im = Image.new("L", (CANVAS, CANVAS), 0)
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 4))):  # two or more strokes: one alone can be a 1 or a 7
        k = int(rng.integers(3, 9))
        pts = rng.uniform(4, CANVAS - 4, size=(k, 2))
        t = np.linspace(0, k - 1, 40)
        path = np.stack([np.interp(t, np.arange(k), pts[:, j]) for j in range(2)], axis=1)
        path = ndi.gaussian_filter1d(path, float(rng.uniform(0.5, 2)), axis=0, mode="nearest")
        d.line([tuple(p) for p in path], fill=255, width=int(rng.integers(3, 7)), joint="curve")
    return np.asarray(im, dtype=np.float32) / 255


def _letter(rng: np.random.Generator, fonts: list[ImageFont.FreeTypeFont]) -> np.ndarray:
    im = Image.new("L", (CANVAS, CANVAS), 0)
    d = ImageDraw.Draw(im)
    ch = LETTERS[int(rng.integers(len(LETTERS)))]
    font = fonts[int(rng.integers(len(fonts)))]
    x0, y0, x1, y1 = d.textbbox((0, 0), ch, font=font)
    d.text(((CANVAS - (x1 - x0)) / 2 - x0, (CANVAS - (y1 - y0)) / 2 - y0), ch, fill=255, font=font)
    im = im.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.float32) / 255
    if rng.random() < 0.5:  # pen widths vary
        a = ndi.grey_dilation(a, size=(int(rng.integers(2, 4)),) * 2)
    return a


def _blob(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        im = Image.new("L", (CANVAS, CANVAS), 0)
        cx, cy = rng.uniform(18, 38, 2)
        rx = rng.uniform(8, 20)
        ry = rx * rng.uniform(0.6, 1.6)  # not a bar: a thick bar is a 1
        ImageDraw.Draw(im).ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
        return np.asarray(im, dtype=np.float32) / 255
    field = ndi.gaussian_filter(rng.normal(size=(CANVAS, CANVAS)), float(rng.uniform(4, 8)))
    return (field > np.quantile(field, rng.uniform(0.6, 0.9))).astype(np.float32)


def synthetic_nondigits(n: int, *, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> np.ndarray:
    """``n`` non-digit images ``(n, 28, 28)`` uint8 in MNIST's convention, the kinds in equal shares."""
    import matplotlib  # only for its bundled fonts, and slow to import (docs/decisions.md#deferred-imports)

    rng = np.random.default_rng(seed)
    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = [ImageFont.truetype(str(font_dir / f), size) for f in TRAIN_FONTS for size in (34, 42)]
    out = np.empty((n, 28, 28), np.uint8)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        ink = _scribble(rng) if kind == "scribble" else _letter(rng, fonts) if kind == "letter" else _blob(rng)
        out[i] = _fit(ink)
    return out


def cached_nondigits(n: int, *, seed: int = 0) -> np.ndarray:
    """``synthetic_nondigits(n, seed=seed)``, kept in the user cache after the first call (seconds to draw)."""
    path = user_cache_dir() / "nondigits" / f"v{VERSION}-n{n}-seed{seed}.npy"
    if path.is_file():
        try:
            bank = np.load(path, allow_pickle=False)
            if bank.shape == (n, 28, 28) and bank.dtype == np.uint8:
                return bank
        except (OSError, ValueError):
            pass  # a damaged cache file is drawn again
    bank = synthetic_nondigits(n, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, bank, allow_pickle=False)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return bank
