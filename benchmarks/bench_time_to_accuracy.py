"""Time to a test accuracy (99.0% by default) for several recipes, measured side by side in one run.

Usage::

    .venv/bin/python benchmarks/bench_time_to_accuracy.py [--recipes fast default cnn-32-64 pytorch-tutorial]
        [--target 0.99] [--max-epochs N]

After every epoch a benchmark-only callback measures test accuracy (training never sees it);
the figure is the training wall time accumulated up to the first epoch at or above the target
(validation and the test pass are not counted). A recipe is stopped as soon as it reaches the
target, or after ``--max-epochs``. Results go to ``benchmarks/results/time_to_accuracy.json``.
"""

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

import torch

from digitlab.data.loading import load_dataset
from digitlab.models.runtime import predict_logits
from digitlab.training import config_from_recipe, train_run
from digitlab.training.trainer import EpochEnd
from machine_info import machine

RESULTS = Path("benchmarks/results/time_to_accuracy.json")


class _Reached(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=["fast", "default", "cnn-32-64", "pytorch-tutorial"])
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--max-epochs", type=int, default=None, help="cap every recipe's epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ds = load_dataset("mnist", download=False)
    out: dict[str, dict] = {}
    for recipe in args.recipes:
        cfg = config_from_recipe(recipe, [f"seed={args.seed}"])
        if args.max_epochs:
            cfg.train.epochs = min(cfg.train.epochs, args.max_epochs)
        trace: list[dict] = []

        def measure(end: EpochEnd, trace: list[dict] = trace, recipe: str = recipe) -> None:
            logits = predict_logits(end.model, ds.test_images, end.spec, device=end.device)
            acc = float((logits.argmax(1) == torch.as_tensor(ds.test_labels, dtype=torch.int64)).float().mean())
            trace.append({"epoch": end.epoch, "test_acc": acc, "train_seconds": end.metrics["elapsed_seconds"]})
            print(f"{recipe} epoch {end.epoch}: test acc {acc:.4f} after {trace[-1]['train_seconds']:.1f} s",
                  flush=True)
            if acc >= args.target:
                raise _Reached

        # Reaching the target ends the run early.
        with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(_Reached):
            train_run(cfg, out_root=tmp, show_progress=False, callbacks=[measure])
        hit = next((t for t in trace if t["test_acc"] >= args.target), None)
        out[recipe] = {"trace": trace, "seconds_to_target": hit["train_seconds"] if hit else None,
                       "epochs_to_target": hit["epoch"] if hit else None, "epochs_planned": cfg.train.epochs}
    base = out.get("fast", {}).get("seconds_to_target")
    for r in out.values():
        r["ratio_to_fast"] = (r["seconds_to_target"] / base) if base and r["seconds_to_target"] else None
    result = {
        "target": args.target,
        "seed": args.seed,
        "command": "python benchmarks/bench_time_to_accuracy.py " + " ".join(
            ["--recipes", *args.recipes, "--target", str(args.target)]
            + (["--max-epochs", str(args.max_epochs)] if args.max_epochs else [])),
        "machine": machine(),
        "recipes": out,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: (v["seconds_to_target"], v["epochs_to_target"], v["ratio_to_fast"])
                      for k, v in out.items()}, indent=2))


if __name__ == "__main__":
    main()
