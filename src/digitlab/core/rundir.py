"""The run directory: the unit of results (DESIGN.md).

Usage::

    run = RunDir.create("runs", model="cnn", tag="default")   # runs/20261121-101500-cnn-default/
    run.write_json("model.json", {...}); run.append_metrics({...})

A new run never overwrites an old one; every file is written atomically. A process that trains in a
run holds its lock (``with run.locked(): ...``), and a command's output named by the user goes inside a run
only under ``RUN/export/`` or ``RUN/eval/`` (``check_output``): nothing replaces a run's own files.
"""

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from digitlab.core.errors import DigitlabError
from digitlab.core.fileio import atomic_write_text


class RunDirError(DigitlabError):
    """A run directory that is missing, incomplete, or cannot be created."""


class RunLockedError(RunDirError):
    """Another process is training in this run directory."""


class OutputError(DigitlabError):
    """An output path that would replace a file it must not (an existing file, or a run's own file)."""


RUN_OUTPUT_DIRS = ("export", "eval")  # the subfolders of a run that commands write derived files into


class RunDir:
    """Paths and atomic writers for one run directory."""

    CONFIG = "config.yaml"
    WEIGHTS = "model.safetensors"
    MODEL_JSON = "model.json"
    METRICS = "metrics.jsonl"
    RESULTS = "results.json"
    CHECKPOINT = "checkpoint"
    TENSORBOARD = "tensorboard"
    LOCK = ".lock"  # held while a process trains in the run
    HOLDER = ".lock.pid"  # who holds it: "pid host" (beside the lock: some lock files are truncated on open)
    # Besides config.yaml, one of these marks a run (a folder with only a config.yaml may be anything).
    MARKERS = (MODEL_JSON, METRICS, CHECKPOINT, WEIGHTS, RESULTS, LOCK)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, root: str | os.PathLike[str], *, model: str, tag: str = "") -> "RunDir":
        """Make a fresh ``<root>/<time>-<model>[-<tag>]`` folder (a suffix keeps names unique)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = "-".join(p for p in (stamp, model, tag) if p).replace("/", "_")
        root = Path(root)
        for i in range(1000):
            path = root / (base if i == 0 else f"{base}-{i}")
            try:
                path.mkdir(parents=True, exist_ok=False)
                return cls(path)
            except FileExistsError:
                continue
            except OSError as e:
                raise RunDirError(f"cannot create run directory {path}: {e.strerror}") from None
        raise RunDirError(f"cannot find a free run directory name under {root} for {base}")

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "RunDir":
        """An existing run directory (it must hold config.yaml).

        Raises:
            RunDirError: the folder or its config.yaml is missing.
        """
        run = cls(path)
        if not (run.path / cls.CONFIG).is_file():
            raise RunDirError(f"{run.path}: not a run directory (no {cls.CONFIG})")
        return run

    @classmethod
    def is_run(cls, path: str | os.PathLike[str]) -> bool:
        """A folder that ``digitlab train`` wrote or writes (config.yaml and one of the run's own files)."""
        path = Path(path)
        return (path / cls.CONFIG).is_file() and any((path / name).exists() for name in cls.MARKERS)

    @contextlib.contextmanager
    def locked(self) -> Iterator["RunDir"]:
        """Hold the run's lock (a ``filelock`` lock file) for the block: one process at a time trains in a run.

        Raises:
            RunLockedError: another process holds it (the message names its pid); no waiting.
        """
        from filelock import FileLock, Timeout  # only training locks

        lock = FileLock(str(self.path / self.LOCK), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunLockedError(f"{self.path}: another process is training in this run ({self._holder()}); wait "
                                 "for it to finish or stop it, then try again") from None
        try:
            atomic_write_text(self.path / self.HOLDER, f"{os.getpid()} {socket.gethostname()}\n")
            yield self
        finally:
            (self.path / self.HOLDER).unlink(missing_ok=True)
            lock.release()

    def _holder(self) -> str:
        try:
            pid, host = (self.path / self.HOLDER).read_text(encoding="utf-8").split()[:2]
        except (OSError, ValueError):
            return "its pid is unknown"
        return f"pid {pid}" + ("" if host == socket.gethostname() else f" on {host}")

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / self.CHECKPOINT

    def write_text(self, name: str, text: str) -> Path:
        atomic_write_text(self.path / name, text)
        return self.path / name

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2) + "\n")

    def read_json(self, name: str) -> Any:
        try:
            return json.loads((self.path / name).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise RunDirError(f"{self.path / name}: cannot read: {e}") from None

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Add one epoch's line to metrics.jsonl (rewritten atomically: it stays small)."""
        path = self.path / self.METRICS
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        atomic_write_text(path, old + json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / self.METRICS
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def truncate_metrics(self, n_epochs: int) -> None:
        """Keep the first ``n_epochs`` lines (a resumed run rewrites the epochs after its checkpoint)."""
        rows = self.read_metrics()[:n_epochs]
        atomic_write_text(self.path / self.METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def enclosing_run(path: str | os.PathLike[str]) -> Path | None:
    """The run directory that ``path`` is (or is inside of), links and ``..`` resolved; None when none."""
    resolved = Path(path).resolve()
    return next((p for p in (resolved, *resolved.parents) if RunDir.is_run(p)), None)


def check_output_dir(folder: str | os.PathLike[str]) -> None:
    """Refuse ``folder`` as the folder a command writes its files into (or its new run or study folder
    under), when it is a run directory or inside one other than under ``RUN/export/`` or ``RUN/eval/``.

    Raises:
        OutputError: the folder is a run's own.
    """
    folder = Path(folder)
    run = enclosing_run(folder)
    if run is not None:
        inside = folder.resolve().relative_to(run).parts
        if not inside or inside[0] not in RUN_OUTPUT_DIRS:
            raise OutputError(f"{folder}: inside the run directory {run}, whose own files no command replaces; "
                              f"write under {run}/export/, {run}/eval/ or elsewhere")


def check_output(target: str | os.PathLike[str], *, force: bool = False) -> None:
    """Refuse ``target`` as the file a command was told to write, before any work.

    Inside a run directory only ``RUN/export/`` and ``RUN/eval/`` take outputs, whatever ``force`` says: no
    option lets a command replace a run's weights, config or checkpoint. Elsewhere an existing file is
    replaced only with ``force`` (the writer then renames atomically: see ``core.fileio.atomic_path``).

    Raises:
        OutputError: the target is one of a run's own files, or exists and ``force`` is False.
    """
    target = Path(target)
    check_output_dir(target)
    if target.exists() and not force:
        raise OutputError(f"{target}: already exists (--force replaces it)")
