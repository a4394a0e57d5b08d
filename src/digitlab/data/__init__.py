"""Data layer: IDX files, dataset specs and sources, checks, exploration, splits, batching.

Usage: ``ds = load_dataset("mnist")``; ``check_dataset(ds)``; ``explore_dataset(ds, "out/")``.
"""

from digitlab.data.batching import BatchLoader
from digitlab.data.check import CheckReport, CheckResult, check_dataset
from digitlab.data.datasets import DatasetSpec, IdxFileSpec, get_dataset, list_datasets, register_dataset
from digitlab.data.errors import DataError
from digitlab.data.explore import explore_dataset
from digitlab.data.idx import read_idx, write_idx
from digitlab.data.loading import Dataset, load_dataset
from digitlab.data.preprocess import PreprocessSpec, compute_preprocess_spec
from digitlab.data.sources import FoundFile, fetch_dataset
from digitlab.data.splits import split_train_val

__all__ = [
    "BatchLoader",
    "CheckReport",
    "CheckResult",
    "DataError",
    "Dataset",
    "DatasetSpec",
    "FoundFile",
    "IdxFileSpec",
    "PreprocessSpec",
    "check_dataset",
    "compute_preprocess_spec",
    "explore_dataset",
    "fetch_dataset",
    "get_dataset",
    "list_datasets",
    "load_dataset",
    "read_idx",
    "register_dataset",
    "split_train_val",
    "write_idx",
]
