"""Real-image preparation: MNIST test digits re-rendered the ways people deliver them, read back through
the product path (``Predictor.predict_images``), against the model's accuracy on the same digits as MNIST
gives them.

Usage::

    DIGITLAB_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_prepare.py [RUN] [--n 10000] [--seed 0]

The target (the issue): for each rendering, accuracy within 0.5 point of the model's accuracy on the raw
MNIST digits. Renderings (each from the 28x28 test digit; "4x" is a bicubic upscale to 112x112, and ink
is dark on white unless said otherwise):

- ink-on-white: ``255 - digit``, PNG;
- jpeg-q75: the same as JPEG at quality 75;
- canvas-400: bicubic to 200x200, pasted at a random position in a 400x400 white canvas, PNG;
- thin: 4x, grey erosion 7x7 (strokes lose 6 px of 4x width), PNG;
- thick: 4x, grey dilation 7x7 (strokes gain 6 px), PNG;
- rgba: black RGB, the digit in the alpha channel, a transparent background, PNG;
- lighting: 4x, multiplied by a linear gradient from 0.55 to 1.0 in a random direction, Gaussian noise
  sigma 12, PNG.

A digit counts as read when the label is right (a "no digit found" counts as wrong; a rejection for low
confidence or a blob-like stroke is ignored: this measures the preparation, not the rejection rules).
Preparation time is each image's ``Predictor.prepare`` call (decode included, model excluded), median.
Results: ``benchmarks/results/prepare.json``, with the commit measured and the machine.
"""

import argparse
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from digitlab.data.loading import load_dataset
from digitlab.inference.predictor import Predictor
from machine_info import machine

DEFAULT_RUN = "runs/bench/default-seed0"
RESULTS = Path("benchmarks/results/prepare.json")
TARGET_DROP = 0.5  # points
UP = 112  # 4x the MNIST frame
CANVAS, CANVAS_DIGIT = 400, 200
MEASURED = ("src/digitlab/inference", "src/digitlab/data")  # the code this benchmark runs


def _encode(im: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _up(digit: np.ndarray, side: int = UP) -> np.ndarray:
    """Light ink on dark, bicubic to ``side`` x ``side``, as float in [0, 255]."""
    return np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32)


def _paper(light_ink: np.ndarray) -> Image.Image:
    """Light ink on dark (float 0-255) -> dark ink on white, 8-bit grayscale."""
    return Image.fromarray(np.clip(255 - light_ink, 0, 255).round().astype(np.uint8))


def ink_on_white(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return _encode(Image.fromarray(255 - digit))


def jpeg_q75(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return _encode(Image.fromarray(255 - digit), "JPEG", quality=75)


def canvas_400(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    page = Image.new("L", (CANVAS, CANVAS), 255)
    x, y = (int(v) for v in rng.integers(0, CANVAS - CANVAS_DIGIT + 1, 2))
    page.paste(_paper(_up(digit, CANVAS_DIGIT)), (x, y))
    return _encode(page)


def thin(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return _encode(_paper(ndi.grey_erosion(_up(digit), size=(7, 7))))


def thick(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return _encode(_paper(ndi.grey_dilation(_up(digit), size=(7, 7))))


def rgba(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    a = np.zeros((*digit.shape, 4), np.uint8)
    a[..., 3] = digit  # black ink where the digit is, fully transparent elsewhere
    return _encode(Image.fromarray(a, "RGBA"))


def lighting(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    paper = 255 - _up(digit)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:UP, 0:UP] / (UP - 1) - 0.5
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = (t - t.min()) / (t.max() - t.min())
    light = 0.55 + 0.45 * t  # 0.55 at the dark side, 1.0 at the bright side
    noisy = paper * light + rng.normal(0, 12, paper.shape)
    return _encode(Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8)))


RENDERINGS: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "ink-on-white": ink_on_white,
    "jpeg-q75": jpeg_q75,
    "canvas-400": canvas_400,
    "thin": thin,
    "thick": thick,
    "rgba": rgba,
    "lighting": lighting,
}


def git_commit() -> str | None:
    """The commit measured (``+dirty`` when the inference or data layer, what runs here, has uncommitted
    changes): the preparation changes often."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *MEASURED],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty else "")


def bench_rendering(predictor: Predictor, name: str, digits: np.ndarray, labels: np.ndarray,
                    test_index: np.ndarray, seed: int) -> dict:
    rng = np.random.default_rng([seed, list(RENDERINGS).index(name)])  # independent of which renderings run
    start = time.perf_counter()
    files = [RENDERINGS[name](d, rng) for d in digits]
    render_s = time.perf_counter() - start

    timings: list[float] = []
    prepare = predictor.prepare

    def timed(*args: object, **kwargs: object):
        t = time.perf_counter()
        out = prepare(*args, **kwargs)
        timings.append(time.perf_counter() - t)
        return out

    predictor.prepare = timed  # predict_images calls self.prepare: time each image on the product path
    try:
        start = time.perf_counter()
        preds = predictor.predict_images(files)
        total_s = time.perf_counter() - start
    finally:
        del predictor.prepare
    truth = [str(c) for c in labels]
    correct = np.array([p.label == t for p, t in zip(preds, truth, strict=True)])
    found = np.array([p.prepared.found for p in preds])
    notes: dict[str, int] = {}
    for p in preds:
        for note in p.prepared.notes:
            notes[note] = notes.get(note, 0) + 1
    return {"n": len(files), "accuracy": float(correct.mean()), "correct": int(correct.sum()),
            "no_digit_found": int((~found).sum()), "prepare_ms_median": 1000 * float(np.median(timings)),
            "prepare_ms_p95": 1000 * float(np.quantile(timings, 0.95)), "seconds": total_s,
            "render_seconds": render_s, "mean_file_bytes": float(np.mean([len(f) for f in files])),
            "notes": dict(sorted(notes.items())),
            "wrong_test_indices": [int(test_index[i]) for i in np.flatnonzero(~correct)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", default=DEFAULT_RUN, help=f"a run directory (default {DEFAULT_RUN})")
    parser.add_argument("--n", type=int, default=10_000, help="test digits (a seeded sample; default all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--renderings", default=",".join(RENDERINGS),
                        help=f"comma-separated subset of {', '.join(RENDERINGS)}")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    names = [r.strip() for r in args.renderings.split(",") if r.strip()]
    unknown = [r for r in names if r not in RENDERINGS]
    if unknown:
        sys.exit(f"unknown rendering(s) {', '.join(unknown)}: choose from {', '.join(RENDERINGS)}")

    predictor = Predictor.from_run(args.run)
    ds = load_dataset(predictor.info.dataset or "mnist")
    n_test = len(ds.test_images)
    n = min(args.n, n_test)
    idx = np.arange(n_test) if n == n_test else np.sort(np.random.default_rng(args.seed).choice(n_test, n, False))
    digits, labels = ds.test_images[idx], ds.test_labels[idx]
    raw = predictor.classify(digits) == labels
    raw_acc = float(raw.mean())
    result = {"run": args.run, "n": n, "seed": args.seed, "target_drop_points": TARGET_DROP,
              "raw_accuracy": raw_acc, "raw_correct": int(raw.sum()), "renderings": {},
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "git": git_commit(), "machine": machine()}
    print(f"{args.run}: {n:,} test digits, raw MNIST accuracy {raw_acc:.2%}")
    header = f"{'rendering':14s} {'accuracy':>9s} {'drop pt':>8s} {'no digit':>9s} {'ms/img':>7s}  target"
    print(header)
    print("-" * len(header))
    for name in names:
        r = bench_rendering(predictor, name, digits, labels, idx, args.seed)
        r["drop_points"] = 100 * (raw_acc - r["accuracy"])
        r["meets_target"] = bool(r["drop_points"] <= TARGET_DROP)
        result["renderings"][name] = r
        print(f"{name:14s} {r['accuracy']:9.2%} {r['drop_points']:8.2f} {r['no_digit_found']:9d} "
              f"{r['prepare_ms_median']:7.2f}  {'met' if r['meets_target'] else 'MISSED'}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
