"""Reading real digits: the development sets in ../shared/data/realworld and MNIST test digits rendered
on ruled paper, grid paper, in printed boxes and filling their frame, side by side for several runs.

Usage::

    DIGITLAB_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_realworld.py RUN [RUN ...]
        [--limit 2000] [--render 2000] [--sets cvl-valid usps-train ruled grid boxed frame paper]
        [--option deskew=true] [--jobs 2] [--out benchmarks/results/realworld.json]

Every folder of ``../shared/data/realworld`` (``$DIGITLAB_REALWORLD_DIR``) that holds one sub-folder per
digit is a set (``cvl-valid``, ``usps-train``); ``--limit`` images of each, drawn evenly over the
classes with a fixed seed (0: all). The renderings are made here from ``--render`` MNIST test digits
(seeded, evenly over the classes; ``--digits val``: the runs' validation digits instead, to choose
options on), drawn as dark ink on light paper at 3x (a 84 px digit):

- ``paper``: the digit alone on the paper (the reference for the renderings below);
- ``ruled``: horizontal rules 30-40 px apart, 1-3 px, light to mid grey, through and around the digit;
- ``grid``: rules both ways, 24-36 px apart;
- ``boxed``: a printed box 0-12 px around the digit's ink (sometimes touching it), 1-4 px, with the
  neighbouring cells' walls of a comb field beside it;
- ``frame``: the digit's ink box scaled (aspect kept) so its longest side fills a 16x16 frame, as postal
  scans are normalised, shown at 8x, grey ink: its strokes touch the frame's edges.

Each image goes through the one preparation (``Predictor.prepare``, with ``--option key=value`` passed
to it) once, in ``--jobs`` processes, and every RUN reads the same prepared images. Reported per set
and run: top-1 accuracy (an image where no digit is found counts as wrong), the share rejected (no
digit found or below the fitted confidence threshold / non-digit detector), accuracy among those
kept, "no digit found", accuracy per class, and the 1/7/4 confusions; beside them every run's
accuracy on the MNIST test set (model-ready, straight to the model), so nothing is bought with MNIST
accuracy. Results: JSON (``--out``) and a Markdown table on stdout.
"""

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).parent))
from digitlab.data.loading import load_dataset
from digitlab.data.splits import run_split
from digitlab.inference import Predictor
from digitlab.inference.prepare import Prepared, prepare_image
from machine_info import machine

RENDERINGS = ("paper", "ruled", "grid", "boxed", "frame")
CONFUSIONS = ((1, 7), (1, 4), (7, 1), (4, 1), (7, 2), (4, 9), (9, 4))
SCALE = 3  # renderings: a 28 px MNIST digit drawn at 84 px


def realworld_dir() -> Path:
    env = os.environ.get("DIGITLAB_REALWORLD_DIR")
    if env:
        return Path(env)
    data = os.environ.get("DIGITLAB_DATA_DIR")
    return Path(data) / "realworld" if data else Path(__file__).resolve().parents[2] / "shared/data/realworld"


def digit_folders(root: Path) -> list[Path]:
    """The sets of single digits: folders with one sub-folder per digit."""
    return sorted(p for p in root.iterdir() if p.is_dir() and {c.name for c in p.iterdir() if c.is_dir()}
                  >= {str(d) for d in range(10)}) if root.is_dir() else []


def even_sample(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of ``limit`` items spread evenly over the classes (all when ``limit`` is 0 or more)."""
    if not limit or limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    per = -(-limit // 10)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:per] for c in range(10)]
    return np.sort(np.concatenate(picked))[:limit]


def folder_set(folder: Path, limit: int, seed: int) -> tuple[list[Any], np.ndarray]:
    files = [(f, d) for d in range(10) for f in sorted((folder / str(d)).iterdir()) if f.is_file()]
    labels = np.array([d for _, d in files])
    keep = even_sample(labels, limit, seed)
    return [str(files[i][0]) for i in keep], labels[keep]


# ------------------------------------------------------------------------------------------- renderings

def _on_paper(digit: np.ndarray, rng: np.random.Generator, pad: int = 40) -> tuple[np.ndarray, tuple[int, int]]:
    """A MNIST digit (light on dark, uint8) as darkness (0 paper .. 1 ink) at 3x on a larger sheet."""
    big = ndi.zoom(digit.astype(np.float32) / 255, SCALE, order=1).clip(0, 1)
    side = big.shape[0] + 2 * pad
    sheet = np.zeros((side, side), np.float32)
    sheet[pad:pad + big.shape[0], pad:pad + big.shape[1]] = big * rng.uniform(0.75, 0.95)
    return sheet, (pad, pad)


def _rules(shape: tuple[int, int], rng: np.random.Generator, axis: int, gap: tuple[int, int]) -> np.ndarray:
    lines = np.zeros(shape, np.float32)
    step = int(rng.integers(*gap))
    width = int(rng.integers(1, 4))
    dark = float(rng.uniform(0.25, 0.6))
    for at in range(int(rng.integers(0, step)), shape[axis], step):
        sl = [slice(None), slice(None)]
        sl[axis] = slice(at, at + width)
        lines[tuple(sl)] = dark
    return lines


def _box(sheet: np.ndarray, digit: np.ndarray, at: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A comb-field cell around the digit's ink: its box grown by 0-12 px, the walls of the cells beside it."""
    ys, xs = np.nonzero(digit > 30)
    y0, y1 = at[0] + ys.min() * SCALE, at[0] + (ys.max() + 1) * SCALE
    x0, x1 = at[1] + xs.min() * SCALE, at[1] + (xs.max() + 1) * SCALE
    m = rng.integers(0, 13, size=4)
    top, bottom = max(y0 - m[0], 0), min(y1 + m[1], sheet.shape[0] - 1)
    left, right = max(x0 - m[2], 0), min(x1 + m[3], sheet.shape[1] - 1)
    width, dark = int(rng.integers(1, 5)), float(rng.uniform(0.4, 0.8))
    lines = np.zeros_like(sheet)
    lines[top:top + width, :] = dark  # a comb field: the rules run on into the next cells
    lines[bottom - width + 1:bottom + 1, :] = dark
    for x in (left, right, left - (right - left), right + (right - left)):
        if 0 <= x < sheet.shape[1]:
            lines[top:bottom + 1, x:x + width] = dark
    return lines


def _frame(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The digit's ink box filling a 16x16 frame (longest side, centred), shown at 8x, grey ink on light grey."""
    ys, xs = np.nonzero(digit > 30)
    crop = digit[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape
    size = (max(1, round(16 * w / max(h, w))), max(1, round(16 * h / max(h, w))))  # aspect kept, as USPS's
    fitted = np.asarray(Image.fromarray(crop).resize(size, Image.BILINEAR), np.float32) / 255
    small = np.zeros((16, 16), np.float32)
    top, left = (16 - size[1]) // 2, (16 - size[0]) // 2
    small[top:top + size[1], left:left + size[0]] = fitted
    big = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((128, 128), Image.BILINEAR),
                     np.float32) / 255
    paper, ink = rng.uniform(0.8, 0.95), rng.uniform(0.05, 0.3)
    return (paper - big * (paper - ink)).astype(np.float32)


def render(kind: str, digit: np.ndarray, seed: int) -> np.ndarray:
    """One MNIST test digit as a person's scan of it: an (H, W) uint8 photo, dark ink on light paper."""
    rng = np.random.default_rng(seed)
    if kind == "frame":
        return (_frame(digit, rng) * 255).astype(np.uint8)
    sheet, at = _on_paper(digit, rng)
    if kind == "ruled":
        lines = _rules(sheet.shape, rng, 0, (30, 41))
    elif kind == "grid":
        lines = np.maximum(_rules(sheet.shape, rng, 0, (24, 37)), _rules(sheet.shape, rng, 1, (24, 37)))
    elif kind == "boxed":
        lines = _box(sheet, digit, at, rng)
    else:
        lines = np.zeros_like(sheet)
    dark = np.maximum(sheet, lines)
    paper = rng.uniform(0.85, 0.97)
    photo = paper * (1 - dark) + rng.normal(0, 0.01, dark.shape)
    return (photo.clip(0, 1) * 255).astype(np.uint8)


def rendered_set(kind: str, test_images: np.ndarray, test_labels: np.ndarray, n: int,
                 seed: int) -> tuple[list[Any], np.ndarray]:
    keep = even_sample(test_labels, n, seed)
    return [render(kind, test_images[i], seed * 100_003 + int(i)) for i in keep], test_labels[keep]


# ------------------------------------------------------------------------------------------- measuring

_OPTIONS: dict[str, Any] = {}


def _init(options: dict[str, Any], spec: Any) -> None:
    _OPTIONS.update(options, spec=spec)


def _prepare(source: Any) -> Prepared:
    options = dict(_OPTIONS)
    spec = options.pop("spec")
    return prepare_image(source, spec, **options)


def prepare_all(sources: list[Any], spec: Any, options: dict[str, Any], jobs: int) -> list[Prepared]:
    if jobs <= 1:
        _init(options, spec)
        return [_prepare(s) for s in sources]
    with ProcessPoolExecutor(jobs, initializer=_init, initargs=(options, spec)) as pool:
        return list(pool.map(_prepare, sources, chunksize=64))


def measure(predictor: Predictor, prepared: list[Prepared], labels: np.ndarray) -> dict[str, Any]:
    preds = predictor.predict_prepared(prepared, names=[f"#{i}" for i in range(len(prepared))], top_k=1)
    found = np.array([p.prepared.found for p in preds])
    guess = np.array([int(p.label) if p.label is not None else -1 for p in preds])
    rejected = np.array([bool(p.rejected) or not p.prepared.found for p in preds])
    right = (guess == labels) & found
    kept = ~rejected
    confusion = np.zeros((10, 10), int)
    np.add.at(confusion, (labels[found], guess[found]), 1)
    return {
        "n": len(labels),
        "accuracy": float(right.mean()),
        "rejected": float(rejected.mean()),
        "accuracy_kept": float(right[kept].mean()) if kept.any() else None,
        "not_found": int((~found).sum()),
        "per_class": {str(c): float(right[labels == c].mean()) for c in range(10) if (labels == c).any()},
        "confusions": {f"{a}->{b}": int(confusion[a, b]) for a, b in CONFUSIONS},
        "confusion_matrix": confusion.tolist(),
    }


def parse_option(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return key.strip(), lowered == "true"
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="trained run directories (or exported models)")
    parser.add_argument("--limit", type=int, default=2000, help="images per real set (0: all)")
    parser.add_argument("--render", type=int, default=2000, help="MNIST test digits per rendering")
    parser.add_argument("--sets", nargs="*", help="only these sets (folder names and renderings)")
    parser.add_argument("--option", action="append", default=[], help="a preparation option, key=value")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--digits", choices=["test", "val"], default="test",
                        help="render MNIST test digits (to report) or the runs' validation digits (to choose on)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/realworld.json")
    args = parser.parse_args()
    options = dict(parse_option(o) for o in args.option)
    predictors = {run: Predictor.from_path(run) for run in args.runs}
    spec = next(iter(predictors.values())).spec
    mnist = load_dataset("mnist")
    results: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv), "options": options,
                               "rendered_from": args.digits,
                               "runs": {}, "sets": {}}
    for run, p in predictors.items():
        acc = float((p.classify(mnist.test_images) == mnist.test_labels).mean())
        results["runs"][run] = {"mnist_test_accuracy": acc}
        print(f"{run}: MNIST test {acc:.4f}", file=sys.stderr)
    wanted = set(args.sets) if args.sets else None
    if args.digits == "val":  # the validation digits every recipe holds out of training (data.splits)
        _, val_idx = run_split(mnist.train_labels, n_val=5000, seed=0, train_subset=None)
        render_images, render_labels = mnist.train_images[val_idx], mnist.train_labels[val_idx]
    else:
        render_images, render_labels = mnist.test_images, mnist.test_labels
    sets: list[tuple[str, Any]] = [(f.name, f) for f in digit_folders(realworld_dir())]
    sets += [(kind, kind) for kind in RENDERINGS]
    for name, what in sets:
        if wanted is not None and name not in wanted:
            continue
        t0 = time.perf_counter()
        if isinstance(what, Path):
            sources, labels = folder_set(what, args.limit, args.seed)
        else:
            sources, labels = rendered_set(what, render_images, render_labels, args.render, args.seed)
        prepared = prepare_all(sources, spec, options, args.jobs)
        seconds = time.perf_counter() - t0
        results["sets"][name] = {"n": len(labels), "prepare_seconds": round(seconds, 1),
                                 "by_run": {run: measure(p, prepared, labels) for run, p in predictors.items()}}
        for run, m in results["sets"][name]["by_run"].items():
            print(f"{name} ({len(labels)}, {seconds:.0f} s) {Path(run).name}: top-1 {m['accuracy']:.4f}, rejected "
                  f"{m['rejected']:.3f}, kept right {m['accuracy_kept'] or 0:.4f}, not found {m['not_found']}",
                  file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out)
    print(table(results))


def table(results: dict[str, Any]) -> str:
    rows = ["| set | run | n | top-1 | rejected | right among kept | no digit found | 1->7 | 1->4 | 7->1 "
            "| MNIST test |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in results["sets"].items():
        for run, m in s["by_run"].items():
            c = m["confusions"]
            kept = "-" if m["accuracy_kept"] is None else f"{100 * m['accuracy_kept']:.2f}%"
            rows.append(f"| {name} | {Path(run).name} | {m['n']} | {100 * m['accuracy']:.2f}% | "
                        f"{100 * m['rejected']:.1f}% | {kept} | {m['not_found']} | {c['1->7']} | {c['1->4']} | "
                        f"{c['7->1']} | {100 * results['runs'][run]['mnist_test_accuracy']:.2f}% |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
