"""Training throughput with 1 and N data-parallel processes (DDP), each configuration a fresh command.

Usage::

    DIGITLAB_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_distributed.py \\
        [--recipe default] [--epochs 2] [--procs 1 2] [--repeats 3] [--device cpu|cuda]

For each process count it runs ``digitlab train --nproc P`` (torchrun's launcher; every rank gets
``cores // P`` threads) and, as the reference, a plain ``digitlab train`` with all cores in one
process. Throughput is the training images per second of each epoch after the first (metrics.jsonl:
the global batch count over the epoch's training time, validation excluded), median over epochs
and repeats; wall time is the whole command, start-up and test evaluation included. Results:
benchmarks/results/distributed[-DEVICE].json.

On 2 CPU cores, 2 processes can at best match 1 process with 2 threads: the same cores do the same
arithmetic, and DDP adds an all-reduce per batch. Several processes pay off with several GPUs or
machines, which is what the same command scales to.
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

sys.path.insert(0, str(Path(__file__).parent))
from machine_info import machine

ROOT = Path(__file__).resolve().parent.parent


def one(recipe: str, epochs: int, procs: int | None, device: str) -> dict[str, object]:
    out = Path(tempfile.mkdtemp(prefix="bench-ddp-"))
    cmd = [sys.executable, "-m", "digitlab", "train", "--recipe", recipe, "--out", str(out), "--quiet",
           "--no-calibrate",
           "--set", f"train.epochs={epochs}", "--set", f"train.device={device}"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if procs is not None:
        cmd += ["--nproc", str(procs)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    (run,) = out.iterdir()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((run / "results.json").read_text())
    shutil.rmtree(out)
    return {"images_per_s": [r["images_per_s"] for r in rows[1:]] or [rows[0]["images_per_s"]],
            "epoch_seconds": [r["seconds"] for r in rows], "wall_seconds": wall, "test_acc": results["test_acc"],
            "world_size": results["world_size"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    configs: list[tuple[str, int | None]] = [("1 process (plain digitlab train)", None)]
    configs += [(f"{p} process{'es' if p > 1 else ''} (--nproc {p})", p) for p in args.procs]
    runs: dict[str, list[dict[str, object]]] = {name: [] for name, _ in configs}
    for rep in range(args.repeats):  # interleaved, so drifting machine load hits every configuration alike
        for name, procs in configs:
            r = one(args.recipe, args.epochs, procs, args.device)
            runs[name].append(r)
            print(f"[{rep + 1}/{args.repeats}] {name}: {statistics.median(r['images_per_s']):,.0f} images/s, "
                  f"{r['wall_seconds']:.1f} s wall, test {r['test_acc']:.4f}", flush=True)
    summary = {}
    for name, rs in runs.items():
        rates = [x for r in rs for x in r["images_per_s"]]
        summary[name] = {"images_per_s_median": statistics.median(rates), "wall_seconds_median":
                         statistics.median(r["wall_seconds"] for r in rs), "test_acc": [r["test_acc"] for r in rs],
                         "runs": rs}
    base = summary[configs[0][0]]["images_per_s_median"]
    print(f"\n{args.recipe}, {args.epochs} epochs, {args.repeats} repeats, device {args.device}")
    for name, s in summary.items():
        print(f"  {name:36s} {s['images_per_s_median']:9,.0f} images/s  ({s['images_per_s_median'] / base:.2f}x)  "
              f"wall {s['wall_seconds_median']:.1f} s")
    suffix = "" if args.device == "cpu" else f"-{args.device}"
    path = ROOT / "benchmarks" / "results" / f"distributed{suffix}.json"
    path.write_text(json.dumps({"recipe": args.recipe, "epochs": args.epochs, "repeats": args.repeats,
                                "device": args.device, "machine": machine(), "command": " ".join(sys.argv),
                                "results": summary}, indent=2) + "\n")
    print(f"written: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
