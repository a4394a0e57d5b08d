"""Start-up time of the public API: `import digitlab`, and loading a torch run with `Predictor.from_path`.

Usage::

    .venv/bin/python benchmarks/bench_startup.py RUN [--repeats 7]

Each figure is measured in a fresh interpreter (the import cache of a running one would hide it), the
rounds interleaved, and reported as the median: ``import torch`` alone (the floor a torch run cannot go
under), ``import digitlab``, and ``from digitlab import Predictor; Predictor.from_path(RUN)`` from a cold
interpreter. It also records which heavy packages loading the run imported. Results:
benchmarks/results/startup.json.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from machine_info import machine

HEAVY = ("matplotlib", "sklearn", "skops", "onnxruntime", "scipy", "skimage", "kornia", "optuna")
PROGRAMS = {
    "import torch": "import torch",
    "import digitlab": "import digitlab",
    "Predictor.from_path(run)": "from digitlab import Predictor; Predictor.from_path({run!r})",
}
TIMER = """
import sys, time, json
t = time.perf_counter()
{program}
seconds = time.perf_counter() - t
print(json.dumps({{"seconds": seconds, "heavy": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""


def time_once(program: str) -> dict:
    code = TIMER.format(program=program, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a torch run directory (digitlab train)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "startup.json"))
    args = parser.parse_args()
    programs = {name: p.format(run=args.run) for name, p in PROGRAMS.items()}
    seconds: dict[str, list[float]] = {name: [] for name in programs}
    heavy: dict[str, list[str]] = {}
    for _ in range(args.repeats):  # interleaved: a busy moment hits every program alike
        for name, program in programs.items():
            r = time_once(program)
            seconds[name].append(r["seconds"])
            heavy[name] = r["heavy"]
    result = {"machine": machine(), "run": args.run, "repeats": args.repeats,
              "median_s": {k: statistics.median(v) for k, v in seconds.items()},
              "all_s": seconds, "heavy_imported": heavy}
    for name, values in seconds.items():
        print(f"{name:28s} median {statistics.median(values):.3f} s  (min {min(values):.3f}, max {max(values):.3f}); "
              f"heavy packages imported: {', '.join(heavy[name]) or 'none'}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
