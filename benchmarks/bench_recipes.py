"""Recipe benchmark: wall time, images/s, peak resident memory and test accuracy, over seeds.

Usage::

    .venv/bin/python benchmarks/bench_recipes.py                       # every recipe, default seeds
    .venv/bin/python benchmarks/bench_recipes.py --recipes fast default --seeds 0 1 2

Each run is a separate ``digitlab train`` process, so its peak RSS (from ``wait4``) is its own.
Results accumulate in ``benchmarks/results/recipes.json`` (one entry per recipe and seed; a rerun
replaces its entry), with a summary of mean +- std per recipe and the machine. The run directories
are kept under ``--keep DIR`` (default ``runs/bench``, as ``<recipe>-seed<N>``) for ``digitlab
evaluate`` and ``digitlab compare``; ``--keep ''`` discards them.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_info import machine

NEURAL_SEEDED = ["fast", "default", "lstm", "best", "mlp-256-128", "mlp-128-64-sgd", "rnn-simple", "cnn-32-64",
                 "lenet5", "pytorch-tutorial"]
CLASSICAL = ["svm", "knn", "random-forest", "logistic"]  # slow to fit: one seed, said plainly
RESULTS = Path("benchmarks/results/recipes.json")




def run_one(recipe: str, seed: int, extra: list[str], keep: Path | None) -> dict[str, object]:
    exe = Path(sys.executable).parent / "digitlab"
    with tempfile.TemporaryDirectory() as out:
        # --no-calibrate: the figures are training's (the rejection is fitted apart, by digitlab calibrate)
        cmd = [str(exe), "train", "--recipe", recipe, "--seed", str(seed), "--out", out, "--quiet", "--no-calibrate"]
        for s in extra:
            cmd += ["--set", s]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        stderr = proc.stderr.read()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{recipe} seed {seed} failed: {stderr.strip().splitlines()[-1:]}")
        (run,) = Path(out).iterdir()
        result = json.loads((run / "results.json").read_text())
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        if keep is not None and not extra:
            dest = keep / f"{recipe}-seed{seed}"
            if dest.exists():
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(run), dest)
    return {
        "recipe": recipe,
        "seed": seed,
        "overrides": extra,
        "test_acc": result["test_acc"],
        "best_val_acc": result["best_val_acc"],
        "train_seconds": result["train_seconds"],
        "process_wall_seconds": wall,
        "images_per_s": statistics.median(m["images_per_s"] for m in metrics),
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "n_params": result["n_params"],
        "epochs": result["epochs_run"],
        "device": result["device"],
    }


def summarise(entries: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for recipe in sorted({e["recipe"] for e in entries}):
        rows = [e for e in entries if e["recipe"] == recipe]
        accs = [r["test_acc"] for r in rows]
        out[recipe] = {
            "n_seeds": len(rows),
            "test_acc_mean": statistics.mean(accs),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "train_seconds_median": statistics.median(r["train_seconds"] for r in rows),
            "images_per_s_median": statistics.median(r["images_per_s"] for r in rows),
            "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rows),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=NEURAL_SEEDED + CLASSICAL)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--set", dest="extra", action="append", default=[], help="override for every run")
    parser.add_argument("--keep", default="runs/bench", help="where run directories are kept ('' discards them)")
    args = parser.parse_args()
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"entries": []}
    for recipe in args.recipes:
        for seed in args.seeds if recipe not in CLASSICAL else args.seeds[:1]:
            row = run_one(recipe, seed, args.extra, Path(args.keep) if args.keep else None)
            print(json.dumps({k: row[k] for k in ("recipe", "seed", "test_acc", "train_seconds", "images_per_s",
                                                  "peak_rss_mb")}), flush=True)
            data["entries"] = [e for e in data["entries"]
                               if (e["recipe"], e["seed"], e["overrides"]) != (recipe, seed, args.extra)] + [row]
            data["machine"] = machine()
            data["summary"] = summarise([e for e in data["entries"] if not e["overrides"]])
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
