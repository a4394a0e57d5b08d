"""Data-parallel training on PyTorch's own engine: torchrun's environment, DDP, and a local launcher.

Usage::

    torchrun --nproc-per-node 2 -m digitlab train --recipe default     # torchrun's environment
    digitlab train --recipe default --nproc 2                           # the same, launched for you

Under torchrun (``WORLD_SIZE`` > 1) :func:`init_distributed` joins the process group (nccl on CUDA,
gloo on CPU) with a timeout, so a rank that stops answering ends the job instead of hanging it.
:func:`launch_local` is what ``--nproc`` runs: torchrun's own elastic launcher with a standalone
rendezvous on this machine and no restarts; a worker that fails becomes one error line.
"""

import datetime
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from digitlab.core.errors import DigitlabError

DEFAULT_TIMEOUT_S = 300.0  # a collective that waits longer than this ends the job (a hung rank)


class DistributedError(DigitlabError):
    """A distributed job that cannot start or that lost a rank."""

    exit_code = 1


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (``world_size`` 1: an ordinary single-process run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes the run directory, logs and shows a progress bar."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: ``cuda:LOCAL_RANK`` when training on CUDA, else ``device``."""
        if device.type == "cuda" and self.enabled:
            return torch.device("cuda", self.local_rank)
        return device

    def all_sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Sum each value over all ranks (the values themselves when not distributed)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def env_dist() -> Dist:
    """Rank, world size and local rank from torchrun's environment (1 process when unset)."""
    try:
        return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as e:
        raise DistributedError(f"bad torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK): {e}") from None


def is_main_process() -> bool:
    """False on every rank but 0 of a torchrun job (they print nothing)."""
    return env_dist().rank == 0


def init_distributed(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> Dist:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1: nccl on CUDA, gloo on CPU.

    Raises:
        DistributedError: the rendezvous failed (torchrun's MASTER_ADDR/MASTER_PORT unreachable).
    """
    d = env_dist()
    if not d.enabled or dist.is_initialized():
        return d
    if device.type == "cuda":
        torch.cuda.set_device(d.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=torch.device("cuda", d.local_rank) if device.type == "cuda" else None)
    except (RuntimeError, ValueError) as e:
        raise DistributedError(f"rank {d.rank}: could not join the {backend} process group: "
                               f"{str(e).splitlines()[0]}") from None
    return d


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def launch_local(nproc: int, args: Sequence[str]) -> None:
    """Run ``python -m digitlab ARGS`` as ``nproc`` ranks on this machine with torchrun's launcher.

    Each rank gets ``cpu_count // nproc`` threads unless OMP_NUM_THREADS is set. No restarts: a
    rank that fails stops the others (torchrun's agent sends them SIGTERM) and this raises.

    Raises:
        DistributedError: a rank failed; the message names it and how it ended.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if nproc < 1:
        raise DistributedError(f"--nproc must be at least 1, got {nproc}")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    torchrun_args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0",
                                "--monitor-interval=0.5", "--module", "digitlab", *args])
    try:
        run(torchrun_args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode < 0:
            try:
                how = f"was killed by {signal.Signals(-failure.exitcode).name}"
            except ValueError:
                how = f"was killed by signal {-failure.exitcode}"
        else:
            how = f"exited with code {failure.exitcode}"
        raise DistributedError(f"distributed training failed: rank {rank} (pid {failure.pid}) {how}; the other "
                               f"ranks were stopped; a run directory keeps the checkpoint of its last finished "
                               f"epoch: continue with digitlab train --resume RUN [--nproc N]") from None
    finally:
        sys.stdout.flush()
