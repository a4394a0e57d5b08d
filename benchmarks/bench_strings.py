"""Digit-string benchmark: lines composed from MNIST *test* digits, read by ``read_digits``.

Usage::

    .venv/bin/python benchmarks/bench_strings.py                        # runs/bench/default-seed0, 2000 each
    .venv/bin/python benchmarks/bench_strings.py runs/bench/best-seed0 --n 200

Two sets of ``--n`` strings of ``--length`` digits each from the test split: consecutive runs of a
seeded permutation of it, so the default 2,000 strings of 5 use every test digit exactly once (more
strings start a new permutation), and each set is composed by ``compose_line``: per-digit scale 0.8-1.2,
baseline jitter +-3 px, and a gap between neighbouring digits' ink boxes of 2-12 px ("separated")
or an overlap of 0-4 px ("touching"; overlapping ink is combined with max). Each line is written as
dark ink on white, like a scan, and read as a PNG would be. Reported per set: whole-string accuracy,
per-digit accuracy (position by position when the length is right; a string read with the wrong
length counts all its digits wrong), how many strings came out the wrong length, and strings/s
(reading only); the same with the number of digits given (``n_digits``); and, for reference, the
accuracies the model gets on the same digits fed one by one as MNIST gives them, and (separated
set) on each digit cut out of the line by its true box and prepared alone (``prepare_image``): the
ceilings a reading can approach. Results go to ``benchmarks/results/strings.json`` with the
machine and the command.
"""

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from digitlab.data.loading import load_dataset
from digitlab.inference import Predictor
from digitlab.inference.prepare import prepare_image
from digitlab.inference.strings import compose_line, read_digits
from machine_info import machine

RESULTS = Path("benchmarks/results/strings.json")
MARGIN = 8  # white px around a digit cut out by its true box (prepare_image reads the background off the border)
SETS = {"separated": (2, 12), "touching": (-4, 0)}  # gap between ink boxes, px (inclusive; negative: overlap)


def compose(images: np.ndarray, labels: np.ndarray, gap: tuple[int, int], n: int, length: int,
            seed: int) -> list[tuple[np.ndarray, str, np.ndarray, list[tuple[int, int, int, int]]]]:
    """``n`` lines of dark ink on white, their truth, the test indices they were drawn from, the boxes."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(images)) for _ in range(-(-n * length // len(images)))])
    out = []
    for k in range(n):
        idx = order[k * length:(k + 1) * length]
        line, boxes = compose_line(images[idx], rng, gap=gap)
        out.append((255 - line, "".join(str(int(v)) for v in labels[idx]), idx, boxes))
    return out


def score(truths: list[str], reads: list[str]) -> dict[str, float | int]:
    n_digits = sum(len(t) for t in truths)
    right = sum(sum(a == b for a, b in zip(r, t, strict=True)) for r, t in zip(reads, truths, strict=True)
                if len(r) == len(t))
    return {
        "string_accuracy": sum(r == t for r, t in zip(reads, truths, strict=True)) / len(truths),
        "digit_accuracy": right / n_digits,
        "wrong_length": sum(len(r) != len(t) for r, t in zip(reads, truths, strict=True)),
    }


def run_set(predictor: Predictor, lines: list, length: int, images: np.ndarray, labels: np.ndarray,
            separated: bool) -> dict[str, object]:
    truths = [t for _, t, _, _ in lines]
    out: dict[str, object] = {}
    for key, n_digits in (("unknown_count", None), ("count_given", length)):
        reads, start = [], time.perf_counter()
        for line, _, _, _ in lines:
            reads.append(read_digits(line, predictor, n_digits=n_digits).text)
        seconds = time.perf_counter() - start
        out[key] = {**score(truths, reads), "strings_per_s": len(lines) / seconds, "seconds": seconds,
                    "examples_wrong": [(t, r) for t, r in zip(truths, reads, strict=True) if r != t][:10]}
    truth = np.concatenate([labels[idx] for _, _, idx, _ in lines])
    direct = predictor.predict_proba(np.stack([images[idx] for _, _, idx, _ in lines]).reshape(-1, 28, 28))
    ok = (direct.argmax(axis=1) == truth).reshape(len(lines), -1)
    out["digits_alone"] = {"string_accuracy": float(ok.all(axis=1).mean()), "digit_accuracy": float(ok.mean())}
    if separated:  # a perfect segmenter: each digit cut out of the line by its true box, prepared alone
        cut = [prepare_image(np.pad(line[y0:y1, x0:x1], MARGIN, constant_values=255), predictor.spec)
               for line, _, _, boxes in lines for x0, y0, x1, y1 in boxes]
        frames = np.stack([p.image if p.found else np.zeros(predictor.spec.input_size, np.uint8) for p in cut])
        ok = (predictor.predict_proba(frames).argmax(axis=1) == truth).reshape(len(lines), -1)
        out["true_boxes"] = {"string_accuracy": float(ok.all(axis=1).mean()), "digit_accuracy": float(ok.mean())}
    # how many lines really have touching ink: fewer 8-connected components (ink > 127) than digits
    out["touching_lines"] = sum(ndi.label(line < 128, structure=np.ones((3, 3), bool))[1] < length
                                for line, _, _, _ in lines)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="runs/bench/default-seed0", help="a trained run directory")
    parser.add_argument("--n", type=int, default=2000, help="strings per set (2,000 x 5: each test digit once)")
    parser.add_argument("--length", type=int, default=5, help="digits per string")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_run(args.run)
    ds = load_dataset("mnist", download=False)
    images, labels = ds.test_images, ds.test_labels
    results: dict[str, object] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "run": str(args.run),
        "model": predictor.name,
        "n_strings": args.n,
        "length": args.length,
        "seed": args.seed,
        "composition": {"source": "MNIST test split", "scale": [0.8, 1.2], "baseline_jitter_px": 3,
                        "gap_px": {name: list(SETS[name]) for name in args.sets}, "rendering": "dark ink on white"},
        "sets": {},
    }
    for k, name in enumerate(args.sets):
        lines = compose(images, labels, SETS[name], args.n, args.length, args.seed + 1000 * k)
        row = run_set(predictor, lines, args.length, images, labels, separated=SETS[name][0] > 0)
        results["sets"][name] = row
        brief = {key: {m: round(v, 4) if isinstance(v, float) else v for m, v in row[key].items()
                       if m != "examples_wrong"} for key in ("unknown_count", "count_given")}
        print(json.dumps({"set": name, **brief, **{k: row[k] for k in ("digits_alone", "true_boxes", "touching_lines")
                                                   if k in row}}), flush=True)
    results["machine"] = machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
