"""Tuning benchmark: the Keras-Tuner grid on cnn-32-64, and a study with pruning on and off.

Usage::

    .venv/bin/python benchmarks/bench_tuning.py grid      # 27 trials, 1 epoch each, then retrain the best recipe
    .venv/bin/python benchmarks/bench_tuning.py pruning   # the same 10 random trials, median pruner vs none

Each study is one ``digitlab tune`` process (timed from outside); the trials' own durations come
from the study. Results go to ``benchmarks/results/tuning.json`` (one entry per mode, replaced on rerun).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_info import machine

RESULTS = Path("benchmarks/results/tuning.json")
EXE = str(Path(sys.executable).parent / "digitlab")


def run_study(out: Path, study: str, args: list[str]) -> dict:
    cmd = [EXE, "tune", "--out", str(out), "--study", study, *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    summary = json.loads((out / f"tune-{study}" / "summary.json").read_text())
    seconds = [t["seconds"] for t in summary["trials"] if t["seconds"] is not None]
    return {
        "command": "digitlab tune " + " ".join(args),
        "wall_seconds": wall,
        "trials": summary["n_trials"],
        "states": summary["states"],
        "trial_seconds_median": statistics.median(seconds),
        "trial_seconds_total": sum(seconds),
        "epochs_trained": sum(t["epochs"] or 0 for t in summary["trials"]),
        "best_val_acc": summary["best"]["value"] if summary["best"] else None,
        "best_overrides": summary["best"]["overrides"] if summary["best"] else None,
        "best_recipe": (out / f"tune-{study}" / "best-recipe.yaml").read_text() if summary["best"] else None,
    }


def grid(out: Path) -> dict:
    study = run_study(out, "grid", ["--recipe", "cnn-32-64", "--space", "seed-grid", "--sampler", "grid",
                                    "--trials", "27", "--pruner", "none", "--set", "train.epochs=1"])
    recipe = out / "best-recipe.yaml"
    recipe.write_text(study["best_recipe"])
    proc = subprocess.run([EXE, "train", "--recipe", str(recipe), "--out", str(out / "retrain"), "--quiet"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"retraining the best recipe failed: {proc.stderr.strip().splitlines()[-1:]}")
    (run,) = (out / "retrain").iterdir()
    result = json.loads((run / "results.json").read_text())
    study["retrained_best_val_acc"] = result["best_val_acc"]
    study["retrained_test_acc"] = result["test_acc"]
    return study


def pruning(out: Path) -> dict:
    common = ["--recipe", "cnn-32-64", "--space", "seed-grid", "--sampler", "random", "--trials", "10",
              "--set", "train.epochs=3", "--set", "data.train_subset=10000"]
    return {"median": run_study(out, "pruned", [*common, "--pruner", "median"]),
            "none": run_study(out, "unpruned", [*common, "--pruner", "none"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["grid", "pruning"])
    args = parser.parse_args()
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        result = grid(Path(tmp)) if args.mode == "grid" else pruning(Path(tmp))
    data[args.mode] = result
    data["machine"] = machine()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(result, indent=2)[:3000])


if __name__ == "__main__":
    main()
