"""Data-layer benchmark: load + verify, integrity checks, exploration, and batch throughput on MNIST.

Usage: ``.venv/bin/python benchmarks/bench_data.py [--repeats 5] [--threads N] [--out benchmarks/results/data.json]``
(``make bench`` runs it). Needs MNIST where ``digitlab data fetch`` finds it. Every timing is run
``--repeats`` times and reported as median and min (the min is the least disturbed run, the
median the typical one); the JSON keeps every run and names the machine and the torch threads.
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from digitlab.data import BatchLoader, check_dataset, compute_preprocess_spec, explore_dataset, load_dataset
from digitlab.data.splits import split_train_val
from machine_info import machine

# Batching is measured after this many untimed epochs: the first ones pay for allocator growth
# and lazy initialisation, which a training run pays once, not per epoch.
N_WARMUP_EPOCHS = 2




def timed(fn: Callable[[], object], repeats: int) -> dict[str, object]:
    """Run ``fn`` ``repeats`` times: ``{"median": s, "min": s, "runs": [s, ...]}``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "min": min(times), "runs": times}


def main() -> None:
    default_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=default_threads,
                        help="torch intra-op threads (default: the cores this process may use)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/data.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # chosen, not inherited: the figures depend on it

    ds = load_dataset("mnist", download=False)
    load_s = timed(lambda: load_dataset("mnist", download=False), args.repeats)
    check_s = timed(lambda: check_dataset(ds), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        explore_s = timed(lambda: explore_dataset(ds, tmp), args.repeats)

    train_idx, _ = split_train_val(ds.train_labels, n_val=5000, seed=0)
    images, labels = ds.train_images[train_idx], ds.train_labels[train_idx]
    spec = compute_preprocess_spec(images, dataset="mnist")
    loader = BatchLoader(images, labels, spec, batch_size=args.batch_size, shuffle=True, seed=0)

    def one_epoch() -> None:
        checksum = 0.0
        for x, _ in loader:
            checksum += float(x[0, 0, 14, 14])  # touch every batch so nothing is skipped
        assert checksum == checksum

    for _ in range(N_WARMUP_EPOCHS):
        one_epoch()
    epoch_s = timed(one_epoch, args.repeats)
    n = len(images)
    result = {
        "machine": machine(),
        "command": f"python benchmarks/bench_data.py --repeats {args.repeats} --batch-size {args.batch_size} "
                   f"--threads {args.threads}",
        "load_and_verify_s": load_s,
        "check_s": check_s,
        "explore_s": explore_s,
        "batching": {
            "n_images": n,
            "batch_size": args.batch_size,
            "warmup_epochs": N_WARMUP_EPOCHS,
            "epoch_s": epoch_s,
            "images_per_s_median": n / epoch_s["median"],
            "images_per_s_best": n / epoch_s["min"],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
