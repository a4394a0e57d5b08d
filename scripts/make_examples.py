"""Draw the README's example images: handwritten-looking digits photographed on paper (seeded, so the
files are the same on every run). Not real handwriting, and not from ../shared/data/realworld.

Usage: .venv/bin/python scripts/make_examples.py [--out docs/examples]
"""

import argparse
import itertools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SCALE = 4  # strokes are drawn at 4x and reduced with anti-aliasing
INK = np.array([38, 42, 78], np.float32)  # a blue-black ballpoint
PAPER = np.array([236, 231, 220], np.float32)  # off-white


def _arc(cx: float, cy: float, rx: float, ry: float, t0: float, t1: float, n: int = 40) -> list[tuple[float, float]]:
    t = np.radians(np.linspace(t0, t1, n))
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t), strict=True))


# Strokes in a unit box (x right, y down), as a hand draws them: one list of points per pen stroke.
STROKES: dict[str, list[list[tuple[float, float]]]] = {
    "0": [_arc(0.5, 0.5, 0.27, 0.41, -100, 262)],
    "1": [[(0.56, 0.08), (0.52, 0.5), (0.47, 0.92)]],
    "2": [[*_arc(0.5, 0.32, 0.24, 0.22, -175, 35), (0.2, 0.9), (0.84, 0.88)]],
    "3": [_arc(0.48, 0.29, 0.24, 0.2, -160, 100) + _arc(0.5, 0.7, 0.27, 0.22, -105, 160)],
    "4": [[(0.55, 0.08), (0.14, 0.64), (0.86, 0.62)], [(0.64, 0.3), (0.62, 0.94)]],
    "5": [[(0.78, 0.1), (0.32, 0.1), (0.27, 0.46), *_arc(0.5, 0.66, 0.27, 0.25, -140, 155)]],
    "7": [[(0.16, 0.12), (0.84, 0.1), (0.42, 0.92)]],
    ".": [[(0.4, 0.88), (0.44, 0.9)]],
    "-": [[(0.12, 0.56), (0.86, 0.53)]],
}


def _wobble(points: list[tuple[float, float]], rng: np.random.Generator, amount: float) -> np.ndarray:
    """A hand's tremor: a smooth random offset along the stroke, densely resampled."""
    p = np.asarray(points, np.float64)
    seg = np.r_[0, np.cumsum(np.hypot(*np.diff(p, axis=0).T))]
    s = np.linspace(0, seg[-1], max(8, int(seg[-1] * 200)))
    dense = np.column_stack([np.interp(s, seg, p[:, 0]), np.interp(s, seg, p[:, 1])])
    kernel = np.hanning(121)  # about half a digit's height: a slow drift, not a jitter
    noise = np.stack([np.convolve(rng.normal(size=len(s) + 120), kernel, "valid") for _ in range(2)], 1)
    return dense + amount * noise[: len(s)] / np.sqrt((kernel**2).sum())


def _ink_mask(text: str, height: int, rng: np.random.Generator, pen: float, spacing: float) -> np.ndarray:
    """The digits of ``text`` side by side as a float mask (1 = ink), drawn at SCALE and reduced."""
    h, w = height * SCALE, int(height * SCALE * (0.62 * len(text) + spacing * (len(text) - 1)))
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for i, ch in enumerate(text):
        x0 = i * h * (0.62 + spacing)
        slant, size = rng.uniform(-0.06, 0.06), rng.uniform(0.92, 1.0)
        for stroke in STROKES[ch]:
            pts = _wobble(stroke, rng, 0.012)
            for (ax, ay), (bx, by) in itertools.pairwise(pts):
                a = (x0 + (ax * 0.62 + slant * (1 - ay)) * h * size, (ay * size + (1 - size) / 2) * h)
                b = (x0 + (bx * 0.62 + slant * (1 - by)) * h * size, (by * size + (1 - size) / 2) * h)
                width = int(pen * SCALE * rng.uniform(0.9, 1.1))
                draw.line([a, b], fill=255, width=width)
                draw.ellipse([a[0] - width / 2, a[1] - width / 2, a[0] + width / 2, a[1] + width / 2], fill=255)
    small = canvas.resize((w // SCALE, h // SCALE), Image.Resampling.LANCZOS)
    return np.asarray(small, np.float32) / 255


def photograph(text: str, size: tuple[int, int], digit_height: int, *, seed: int, pen: float = 5.0,
               spacing: float = 0.12) -> Image.Image:
    """``text`` written on paper and photographed: uneven light, a soft shadow, slight tilt, blur, sensor noise."""
    rng = np.random.default_rng(seed)
    W, H = size
    ink = Image.fromarray((_ink_mask(text, digit_height, rng, pen, spacing) * 255).astype(np.uint8))
    ink = ink.rotate(rng.uniform(-4, 4), resample=Image.Resampling.BICUBIC, expand=True)
    mask = np.zeros((H, W), np.float32)
    ih, iw = ink.height, ink.width
    top = (H - ih) // 2 + int(rng.integers(-H // 12, H // 12))
    left = (W - iw) // 2 + int(rng.integers(-W // 12, W // 12))
    mask[top:top + ih, left:left + iw] = np.asarray(ink, np.float32) / 255
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    light = 1.0 - 0.16 * ((xx - 0.1) ** 2 + (yy - 0.05) ** 2) - 0.05 * yy  # a lamp at the top left
    light -= 0.10 * np.clip(1 - np.hypot(xx - 0.95, yy - 0.9) / 0.35, 0, 1)  # the phone's shadow
    paper = PAPER[None, None] * light[..., None]
    rgb = paper * (1 - 0.92 * mask[..., None]) + INK[None, None] * 0.92 * mask[..., None] * light[..., None]
    rgb += rng.normal(0, 3.0, rgb.shape)  # sensor noise
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7))
    return img


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/examples"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    photograph("3", (480, 400), 190, seed=3).save(args.out / "photo.jpg", quality=88)
    photograph("75013", (720, 260), 110, seed=5, pen=4.0).save(args.out / "postcode.jpg", quality=88)
    # an amount as written on a cheque: a thousands dot, digits close enough to touch, a closing dash
    photograph("1.250-", (720, 220), 100, seed=7, pen=4.5, spacing=-0.06).save(args.out / "amount.jpg", quality=88)
    print(f"wrote {args.out / 'photo.jpg'}, {args.out / 'postcode.jpg'} and {args.out / 'amount.jpg'}")


if __name__ == "__main__":
    main()
