"""Export benchmark: ONNX parity with torch, file sizes, and what INT8 costs in test accuracy (and gains in speed).

Usage::

    .venv/bin/python benchmarks/bench_export.py                              # the newest runs/*default* run
    .venv/bin/python benchmarks/bench_export.py runs/bench/default-seed0 runs/bench/best-seed0

For each run: export ONNX (fp32) and static INT8 (``export_onnx(run, quantize="int8")``, into a temp
folder: the run is left as it was), then record the parity max |logit difference| on 1,000 test images,
the sizes in MB of model.safetensors / model.onnx / model.int8.onnx, fp32 vs INT8 accuracy on the whole
test split and the drop in points, and inference rates (images/s, best of three passes over 5,000 test
images at batch 1000) of torch, onnxruntime fp32 and onnxruntime INT8. Results go to
``benchmarks/results/export.json`` (one entry per run, replaced on rerun), with the machine.
"""

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from digitlab.data.loading import load_dataset
from digitlab.export.onnx import export_onnx, onnx_scores, session
from digitlab.inference.predictor import Predictor
from machine_info import machine

RESULTS = Path("benchmarks/results/export.json")
RATE_SAMPLES = 5000
RATE_BATCH = 1000
MB = 1e6


def newest_default_run() -> Path:
    """The most recently modified ``runs/*default*`` folder that holds a model."""
    runs = [p for p in Path("runs").glob("*default*") if (p / "model.json").is_file()]
    if not runs:
        raise SystemExit("no runs/*default* run directory with a model.json: pass a run directory")
    return max(runs, key=lambda p: p.stat().st_mtime)


def images_per_s(predict: Callable[[np.ndarray], object], images: np.ndarray) -> float:
    """Best of three timed passes after a warm-up batch: a moment of contention does not become the figure."""
    predict(images[:RATE_BATCH])
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        predict(images)
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def bench_one(run: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        r = export_onnx(run, Path(tmp) / "model.onnx", quantize="int8",
                        log=lambda line: print(f"  {line}", file=sys.stderr, flush=True))
        seconds = time.perf_counter() - start
        q = r["int8"]
        predictor = Predictor.from_run(run, device="cpu")
        dataset = load_dataset(predictor.info.dataset or "mnist", download=False)
        sample = dataset.test_images[:RATE_SAMPLES]
        fp32, int8 = session(r["onnx"]), session(q["path"])
        rates = {
            "torch": images_per_s(lambda x: predictor.logits(x, batch_size=RATE_BATCH), sample),
            "onnx_fp32": images_per_s(lambda x: onnx_scores(fp32, x, predictor), sample),
            "onnx_int8": images_per_s(lambda x: onnx_scores(int8, x, predictor), sample),
        }
    return {
        "run": str(run),
        "model": r["model"],
        "n_params": predictor.info.n_params,
        "opset": r["opset"],
        "exporter": r["exporter"],
        "parity_max_abs_diff": r["parity"]["max_abs_diff"],
        "parity_n": r["parity"]["n"],
        "parity_inputs": r["parity"]["inputs"],
        "size_mb": {"safetensors": (r["weights_size_bytes"] or 0) / MB, "onnx": r["size_bytes"] / MB,
                    "int8": q["size_bytes"] / MB},
        "int8_per_channel": q["per_channel"],
        "int8_calibration": q["calibration"],
        "n_test": q["n_test"],
        "accuracy_fp32": q["accuracy_fp32"],
        "accuracy_int8": q["accuracy_int8"],
        "drop_points": q["drop_points"],
        "agreement": q["agreement"],
        "images_per_s": rates,
        "export_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run directories (default: the newest runs/*default*)")
    args = parser.parse_args()
    runs = args.runs or [newest_default_run()]
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"entries": []}
    for run in runs:
        print(f"{run}:", file=sys.stderr, flush=True)
        row = bench_one(run)
        print(json.dumps({k: row[k] for k in ("run", "parity_max_abs_diff", "size_mb", "accuracy_fp32",
                                              "accuracy_int8", "drop_points", "images_per_s")}), flush=True)
        data["entries"] = [e for e in data["entries"] if e["run"] != row["run"]] + [row]
        data["machine"] = machine()
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
