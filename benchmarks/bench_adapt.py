"""Adaptation to a user's own digits: accuracy on unseen writers against the number of labelled digits per class.

Usage::

    DIGITLAB_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_adapt.py RUN [--folds 1 2]
        [--sizes 10 30 100 all] [--set train.epochs=3 ...] [--cache /tmp/cvl-prepared.npz]

``cvl-valid`` (``../shared/data/realworld/cvl-valid/<digit>/wWWWW-NNNNN.png``, 60 writers) plays the user's
labelled data, split by writer, never by image: the writers are sorted and cut into two halves of 30. Fold 1
fine-tunes RUN (``digitlab train --init RUN``'s pipeline: ``finetune_config``, ``split_user_digits``,
``train_run``) on k digits per class drawn from the first half's writers, for each k in ``--sizes`` ("all":
every digit of that half), and measures top-1 accuracy on ALL digits of the other half's writers, beside
the zero-shot accuracy of RUN on the same digits; fold 2 swaps the halves. An image where no digit is
found counts as wrong. Every image is prepared once, with RUN's spec (``--cache`` keeps them for reruns).

Results: benchmarks/results/adapt.json and the figure docs/images/adapt.png (accuracy vs digits per class,
log x). The fine-tuned runs go to a temporary folder, removed at the end (``--keep-runs`` keeps them).
"""

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from digitlab.core.fileio import atomic_path
from digitlab.data.labelled import split_user_digits
from digitlab.inference import Predictor
from digitlab.inference.prepare import prepare_image
from digitlab.training import train_run
from digitlab.training.finetune import finetune_config, init_spec
from machine_info import machine

CVL = Path(__file__).resolve().parents[2] / "shared" / "data" / "realworld" / "cvl-valid"
WRITER = re.compile(r"^(w\d+)-")


def load_cvl(folder: Path, run: Path, cache: Path | None) -> dict[str, np.ndarray]:
    """Every cvl-valid image prepared with the run's spec: images (N, 28, 28), found, labels, writers."""
    files = sorted(p for d in range(10) for p in (folder / str(d)).glob("*.png"))
    spec = init_spec(run)
    key = spec.to_json()
    if cache is not None and cache.is_file():
        data = dict(np.load(cache, allow_pickle=False))
        if str(data["spec"]) == key and len(data["labels"]) == len(files):
            print(f"prepared images from {cache}", flush=True)
            return data
    images = np.zeros((len(files), *spec.input_size), np.uint8)
    found = np.zeros(len(files), bool)
    start = time.perf_counter()
    for i, path in enumerate(files):
        p = prepare_image(path, spec)
        if p.found:
            images[i], found[i] = p.image, True
        if (i + 1) % 1000 == 0:
            print(f"  prepared {i + 1}/{len(files)} ({time.perf_counter() - start:.0f} s)", flush=True)
    data = {"images": images, "found": found, "labels": np.array([int(p.parent.name) for p in files]),
            "writers": np.array([WRITER.match(p.name).group(1) for p in files]), "spec": np.array(key)}
    if cache is not None:
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, **data)
    return data


def top1(predictor: Predictor, data: dict[str, np.ndarray], mask: np.ndarray) -> float:
    """Share of the masked images read right; an image with no digit found is wrong."""
    hit = mask & data["found"]
    pred = predictor.classify(data["images"][hit])
    right = int((pred == data["labels"][hit]).sum())
    return right / int(mask.sum())


def sample(data: dict[str, np.ndarray], mask: np.ndarray, k: int | None, seed: int) -> np.ndarray:
    """Indices of k usable digits per class among the masked images (all of them when k is None)."""
    rng = np.random.default_rng(seed)
    picked = []
    for d in range(10):
        idx = np.flatnonzero(mask & data["found"] & (data["labels"] == d))
        picked.append(idx if k is None or k >= len(idx) else np.sort(rng.choice(idx, k, replace=False)))
    return np.concatenate(picked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a trained torch run to adapt")
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--sizes", nargs="+", default=["10", "30", "100", "all"],
                        help="labelled digits per class (numbers, or 'all')")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config key=value")
    parser.add_argument("--seed", type=int, default=0, help="seed of the digits drawn")
    parser.add_argument("--data", type=Path, default=CVL)
    parser.add_argument("--cache", type=Path, default=None, help="keep the prepared images here (npz)")
    parser.add_argument("--keep-runs", type=Path, default=None, help="write the fine-tuned runs here and keep them")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/adapt.json"))
    parser.add_argument("--figure", type=Path, default=Path("docs/images/adapt.png"))
    args = parser.parse_args()

    start = time.perf_counter()
    data = load_cvl(args.data, args.run, args.cache)
    writers = sorted(set(data["writers"].tolist()))
    halves = writers[:len(writers) // 2], writers[len(writers) // 2:]
    base = Predictor.from_run(args.run, rejection=False)
    runs_root = args.keep_runs or Path(tempfile.mkdtemp(prefix="bench-adapt-"))
    folds = []
    for fold in args.folds:
        train_w, test_w = halves if fold == 1 else halves[::-1]
        train_mask, test_mask = np.isin(data["writers"], train_w), np.isin(data["writers"], test_w)
        zero = top1(base, data, test_mask)
        print(f"fold {fold}: adapt on writers {train_w[0]}..{train_w[-1]}, measure on {test_w[0]}..{test_w[-1]} "
              f"({int(test_mask.sum())} digits); zero-shot {zero:.4f}", flush=True)
        rows = []
        for size in args.sizes:
            k = None if size == "all" else int(size)
            idx = sample(data, train_mask, k, args.seed + fold)
            counts = {str(d): int((data["labels"][idx] == d).sum()) for d in range(10)}
            cfg = finetune_config(args.run, images=f"{args.data} writers {train_w[0]}..{train_w[-1]}, k={size}",
                                  n_images=counts, overrides=args.overrides)
            digits = split_user_digits(data["images"][idx], data["labels"][idx], init_spec(args.run),
                                       val_fraction=cfg.finetune.val_fraction, seed=cfg.seed)
            t0 = time.perf_counter()
            result = train_run(cfg, out_root=runs_root, show_progress=False, evaluate_test=False,
                               user_digits=digits)
            seconds = time.perf_counter() - t0
            acc = top1(Predictor.from_run(result.run_dir, rejection=False), data, test_mask)
            rows.append({"per_class": size, "n_user": len(idx), "n_user_train": len(digits.train_labels),
                         "n_user_val": len(digits.val_labels), "accuracy": acc, "best_val_acc": result.best_val_acc,
                         "train_seconds": round(seconds, 1)})
            print(f"  k={size}: {len(idx)} user digits, top-1 {acc:.4f} (zero-shot {zero:.4f}), {seconds:.0f} s",
                  flush=True)
        folds.append({"fold": fold, "adapt_writers": [train_w[0], train_w[-1]], "test_writers": [test_w[0], test_w[-1]],
                      "n_test": int(test_mask.sum()), "n_test_not_found": int((test_mask & ~data["found"]).sum()),
                      "zero_shot": zero, "adapted": rows})
    if args.keep_runs is None:
        shutil.rmtree(runs_root, ignore_errors=True)
    report = {"benchmark": "bench_adapt", "run": str(args.run.resolve()), "data": str(args.data),
              "overrides": args.overrides, "seed": args.seed, "config": cfg.model_dump(mode="json",
                                                                                        exclude={"finetune"}),
              "folds": folds, "seconds": round(time.perf_counter() - start, 1), "machine": machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    plot(folds, args.figure)
    print(f"written: {args.out}, {args.figure} ({report['seconds']:.0f} s)")


def plot(folds: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, fold in enumerate(folds):
        # "all" is drawn at its real mean per class
        xs = [r["n_user"] / 10 for r in fold["adapted"]]
        line, = ax.plot(xs, [100 * r["accuracy"] for r in fold["adapted"]], "o-", label=f"fold {fold['fold']}")
        ax.axhline(100 * fold["zero_shot"], color=line.get_color(), ls="--", lw=1,
                   label=f"fold {fold['fold']} zero-shot" if i < 2 else None)
    ax.set_xscale("log")
    ax.set_xlabel("labelled digits per class (writers of the other half)")
    ax.set_ylabel("top-1 accuracy on unseen writers, %")
    ax.set_title("cvl-valid: adaptation with writer-disjoint folds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


if __name__ == "__main__":
    main()
