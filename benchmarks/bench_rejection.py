"""Rejection of non-digits: how many letters, scribbles, blobs and noise images a model refuses, and how
many real digits it refuses with the same rule.

Usage::

    DIGITLAB_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_rejection.py RUN [--n 500]

RUN must have its rejection fitted (``digitlab train`` does it at its end, ``digitlab calibrate RUN`` on
its own): the temperature, the thresholds and the non-digit detector, chosen on validation. Non-digits
are drawn as a person would present them (dark ink on a
light 64x64 image, through the same preparation as any real image):

- letters: A-Z and a-z rendered with matplotlib's bundled fonts (DejaVu Sans / Serif / Mono, Computer
  Modern, STIX), random size, slant and position;
- scribbles: random smooth pen paths (3-9 control points), random pen width;
- blobs: filled random shapes (smoothed, thresholded noise) and filled ellipses;
- noise: uniform, Gaussian and salt-and-pepper images, and faint textures.

Digits: every MNIST test digit (model-ready, straight to the model) and 1,000 of them re-drawn as dark
ink on white PNG (through the preparation). A non-digit counts as rejected when the preparation finds
no digit or the calibrated confidence is below the threshold. Results: benchmarks/results/rejection.json.
"""

import argparse
import io
import json
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).parent))
from digitlab.data.loading import load_dataset
from digitlab.inference import Predictor
from machine_info import machine

SIZE = 64
FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf",
         "cmr10.ttf", "cmss10.ttf", "STIXGeneral.ttf", "STIXGeneralItalic.ttf"]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def letters(n: int, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    out = []
    for i in range(n):
        ch = LETTERS[i % len(LETTERS)]
        font = ImageFont.truetype(str(font_dir / FONTS[rng.integers(len(FONTS))]), int(rng.integers(30, 52)))
        im = Image.new("L", (SIZE, SIZE), 255)
        d = ImageDraw.Draw(im)
        x0, y0, x1, y1 = d.textbbox((0, 0), ch, font=font)
        pos = ((SIZE - (x1 - x0)) / 2 - x0 + rng.integers(-6, 7), (SIZE - (y1 - y0)) / 2 - y0 + rng.integers(-6, 7))
        d.text(pos, ch, fill=0, font=font)
        im = im.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR, fillcolor=255)
        out.append((ch, _png(np.asarray(im))))
    return out


def scribbles(n: int, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    out = []
    for _ in range(n):
        k = int(rng.integers(3, 10))
        pts = rng.uniform(8, SIZE - 8, size=(k, 2))
        t = np.linspace(0, 1, 200)
        # a smooth path through the control points (cubic interpolation of each coordinate)
        path = np.stack([np.interp(t * (k - 1), np.arange(k), pts[:, j]) for j in range(2)], axis=1)
        path = ndi.gaussian_filter1d(path, 6, axis=0, mode="nearest")
        im = Image.new("L", (SIZE, SIZE), 255)
        ImageDraw.Draw(im).line([tuple(p) for p in path], fill=0, width=int(rng.integers(2, 6)), joint="curve")
        out.append(("scribble", _png(np.asarray(im))))
    return out


def blobs(n: int, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        if i % 2:
            im = Image.new("L", (SIZE, SIZE), 255)
            cx, cy = rng.uniform(20, 44, 2)
            rx, ry = rng.uniform(6, 22, 2)
            ImageDraw.Draw(im).ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=0)
            a = np.asarray(im)
        else:
            field = ndi.gaussian_filter(rng.normal(size=(SIZE, SIZE)), rng.uniform(4, 9))
            a = np.where(field > np.quantile(field, rng.uniform(0.7, 0.9)), 0, 255).astype(np.uint8)
        out.append(("blob", _png(a)))
    return out


def noise(n: int, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            a = rng.integers(0, 256, (SIZE, SIZE))
        elif kind == 1:
            a = rng.normal(200, rng.uniform(10, 50), (SIZE, SIZE))
        elif kind == 2:
            a = np.full((SIZE, SIZE), 230.0)
            m = rng.random((SIZE, SIZE))
            a[m < 0.05] = 0
            a[m > 0.97] = 255
        else:
            a = 200 + 40 * ndi.gaussian_filter(rng.normal(size=(SIZE, SIZE)), 2)
        out.append(("noise", _png(np.clip(a, 0, 255).astype(np.uint8))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory with its rejection fitted")
    parser.add_argument("--n", type=int, default=520, help="images per non-digit kind")
    parser.add_argument("--out", default="benchmarks/results/rejection.json")
    args = parser.parse_args()
    predictor = Predictor.from_run(args.run)
    if predictor.threshold is None:
        sys.exit(f"{args.run}: no rejection threshold; run `digitlab calibrate {args.run}` first")
    rng = np.random.default_rng(0)
    ds = load_dataset(predictor.info.dataset or "mnist")
    result = {"run": args.run, "threshold": predictor.threshold, "rule": predictor.rejection.policy.rule,
              "machine": machine(), "command": " ".join(sys.argv), "kinds": {}}

    test = predictor.predict(ds.test_images)
    result["digits_model_ready"] = {"n": len(test), "rejected": float(test.rejected.mean())}
    idx = rng.choice(len(ds.test_images), 1000, replace=False)
    drawn = [_png(255 - im) for im in ds.test_images[idx]]
    preds = predictor.predict_images(drawn)
    result["digits_drawn"] = {"n": len(preds), "rejected": float(np.mean([p.rejected for p in preds])),
                              "accuracy_kept": float(np.mean([p.label == str(ds.test_labels[i])
                                                              for p, i in zip(preds, idx, strict=True)
                                                              if not p.rejected]))}
    print(f"digits: {result['digits_model_ready']['rejected']:.2%} of {len(test):,} MNIST test digits rejected; "
          f"{result['digits_drawn']['rejected']:.2%} of 1,000 drawn as ink on paper")
    total, rejected = 0, 0
    for name, make in (("letters", letters), ("scribbles", scribbles), ("blobs", blobs), ("noise", noise)):
        items = make(args.n, rng)
        t = time.perf_counter()
        preds = predictor.predict_images([b for _, b in items])
        dt = time.perf_counter() - t
        rej = np.array([p.rejected for p in preds])
        no_digit = np.array([not p.prepared.found for p in preds])
        read = {}
        for (tag, _), p in zip(items, preds, strict=True):
            if not p.rejected:
                read.setdefault(tag, []).append(p.label)
        result["kinds"][name] = {"n": len(items), "rejected": float(rej.mean()),
                                 "no_digit_found": float(no_digit.mean()), "seconds": dt,
                                 "accepted_as": {k: v for k, v in sorted(read.items())}}
        total += len(items)
        rejected += int(rej.sum())
        print(f"{name:10s} rejected {rej.mean():.1%} (no digit found {no_digit.mean():.1%})")
    result["non_digits_rejected"] = rejected / total
    print(f"all non-digits: {rejected / total:.1%} rejected")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
