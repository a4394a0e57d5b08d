"""Data layer: IDX files, dataset specs and sources, checks, exploration, splits, batching.

Usage: ``ds = load_dataset("mnist")``; ``check_dataset(ds)``; ``explore_dataset(ds, "out/")``.

Names are imported on first use (PEP 562), so ``digitlab --help`` does not pay for torch,
matplotlib and scikit-learn.
"""

import importlib
from typing import Any

_EXPORTS = {
    "BatchLoader": "batching",
    "CheckReport": "check",
    "CheckResult": "check",
    "check_dataset": "check",
    "DatasetSpec": "datasets",
    "IdxFileSpec": "datasets",
    "get_dataset": "datasets",
    "list_datasets": "datasets",
    "register_dataset": "datasets",
    "DataError": "errors",
    "explore_dataset": "explore",
    "read_idx": "idx",
    "write_idx": "idx",
    "Dataset": "loading",
    "load_dataset": "loading",
    "PreprocessSpec": "preprocess",
    "compute_preprocess_spec": "preprocess",
    "FoundFile": "sources",
    "fetch_dataset": "sources",
    "split_train_val": "splits",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'digitlab.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"digitlab.data.{module}"), name)
