"""Inference speed: images/s at batch 1 and 256 for torch, ONNX Runtime and INT8, and single-image
latency (p50, p99) including the real-image preparation.

Usage::

    DIGITLAB_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_inference.py [RUN] [--seconds 5]

RUN (default runs/bench/default-seed0, the trained ``default`` recipe) is exported to ONNX and INT8
into a temporary folder (the run is not touched); every backend is loaded through
``Predictor.from_path`` / ``from_run`` and timed on MNIST test digits after a warm-up, each for
``--seconds`` (the median of 3 timed rounds is reported). Latency: one PNG (a 28x28 digit, and a
400x400 canvas photo-like drawing) read, prepared and classified per call, as ``digitlab predict``
and the service do. Results: benchmarks/results/inference.json.
"""

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from digitlab.data.loading import load_dataset
from digitlab.export.onnx import export_onnx
from digitlab.inference import Predictor
from machine_info import machine


def rate(predictor: Predictor, images: np.ndarray, batch: int, seconds: float) -> float:
    """Images/s of ``predictor.logits`` at ``batch``, median of 3 rounds of about ``seconds`` each."""
    chunks = [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)]
    for c in chunks[:3]:
        predictor.logits(c, batch_size=batch)  # warm-up
    rounds = []
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            c = chunks[n % len(chunks)]
            predictor.logits(c, batch_size=batch)
            n += 1
        rounds.append(n * batch / (time.perf_counter() - t0))
    return statistics.median(rounds)


def latency(predictor: Predictor, files: list[bytes], seconds: float) -> dict[str, float]:
    """Milliseconds per single image read + prepared + classified (p50, p99 over the calls)."""
    for b in files[:5]:
        predictor.predict_images([b])
    times = []
    t_end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < t_end and i < 20000:
        b = files[i % len(files)]
        t0 = time.perf_counter()
        predictor.predict_images([b])
        times.append((time.perf_counter() - t0) * 1e3)
        i += 1
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)), "n": len(times)}


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", default="runs/bench/default-seed0")
    parser.add_argument("--seconds", type=float, default=6.0, help="timing per measurement")
    parser.add_argument("--out", default="benchmarks/results/inference.json")
    args = parser.parse_args()
    ds = load_dataset("mnist")
    images = ds.test_images[:4096]
    rng = np.random.default_rng(0)
    small = [_png(255 - im) for im in ds.test_images[:200]]
    canvases = []
    for im in ds.test_images[200:300]:
        c = np.full((400, 400), 255, np.uint8)
        y, x = rng.integers(0, 200, 2)
        c[y:y + 200, x:x + 200] = np.asarray(Image.fromarray(255 - im).resize((200, 200), Image.Resampling.BICUBIC))
        canvases.append(_png(c))
    result: dict[str, object] = {"run": args.run, "machine": machine(), "command": " ".join(sys.argv),
                                 "torch_threads": torch.get_num_threads(), "backends": {}}
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(args.run, Path(tmp) / "model.onnx", quantize="int8")
        backends = {"torch": Predictor.from_run(args.run, device="cpu"),
                    "onnxruntime": Predictor.from_path(Path(tmp) / "model.onnx"),
                    "onnxruntime-int8": Predictor.from_path(Path(tmp) / "model.int8.onnx")}
        for name, p in backends.items():
            row = {"batch1_images_per_s": rate(p, images, 1, args.seconds),
                   "batch256_images_per_s": rate(p, images, 256, args.seconds),
                   "latency_28px_png": latency(p, small, args.seconds),
                   "latency_400px_canvas_png": latency(p, canvases, args.seconds)}
            result["backends"][name] = row  # type: ignore[index]
            print(f"{name:17s} batch 1: {row['batch1_images_per_s']:8,.0f} img/s  batch 256: "
                  f"{row['batch256_images_per_s']:8,.0f} img/s  latency incl. preparation: 28px PNG p50 "
                  f"{row['latency_28px_png']['p50_ms']:.2f} ms p99 {row['latency_28px_png']['p99_ms']:.2f} ms; "
                  f"400px canvas p50 {row['latency_400px_canvas_png']['p50_ms']:.2f} ms "
                  f"p99 {row['latency_400px_canvas_png']['p99_ms']:.2f} ms", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
