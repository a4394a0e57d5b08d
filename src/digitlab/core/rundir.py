"""The run directory: the unit of results (DESIGN.md).

Usage::

    run = RunDir.create("runs", model="cnn", tag="default")   # runs/20261121-101500-cnn-default/
    run.write_json("model.json", {...}); run.append_metrics({...})

A new run never overwrites an old one; every file is written atomically.
"""

import json
import os
import time
from pathlib import Path
from typing import Any

from digitlab.core.errors import DigitlabError
from digitlab.core.fileio import atomic_write_text


class RunDirError(DigitlabError):
    """A run directory that is missing, incomplete, or cannot be created."""


class RunDir:
    """Paths and atomic writers for one run directory."""

    CONFIG = "config.yaml"
    WEIGHTS = "model.safetensors"
    MODEL_JSON = "model.json"
    METRICS = "metrics.jsonl"
    RESULTS = "results.json"
    CHECKPOINT = "checkpoint"
    TENSORBOARD = "tensorboard"

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
