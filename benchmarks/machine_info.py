"""The machine a benchmark ran on, as every results JSON records it.

Usage (from a script in benchmarks/): ``from machine_info import machine``.
"""

import contextlib
import os
import platform
from pathlib import Path

import torch

from digitlab import __version__


def machine() -> dict[str, object]:
    """CPU model (as /proc/cpuinfo names it), cores, torch threads and versions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "digitlab": __version__,
    }
