"""Load a verified dataset into memory as uint8 arrays.

Usage::

    ds = load_dataset("mnist")                       # ds.train_images: (60000, 28, 28) uint8
    images, labels = ds.split_arrays("test")

Each file is read once: decompressed straight into its array while its SHA-256 is checked.
"""

import os
from dataclasses import dataclass

import numpy as np

from digitlab.data.datasets import DatasetSpec, get_dataset
from digitlab.data.errors import DataError, LabelRangeError, SpecMismatchError
from digitlab.data.idx import read_idx
from digitlab.data.sources import FoundFile, fetch_dataset

SPLITS = ("train", "test")


@dataclass
class Dataset:
    """A dataset's four arrays, its spec, and where each file came from."""

    spec: DatasetSpec
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    files: dict[str, FoundFile]

    def split_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` of ``"train"`` or ``"test"``."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}: choose train or test")
        return getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")


def validate_against_spec(ds: Dataset) -> None:
    """Check shapes, dtypes and the label range against the spec.

    Raises:
        SpecMismatchError: a shape or dtype contradicts the spec, or images and labels disagree.
        LabelRangeError: a label outside ``0 .. n_classes - 1``.
    """
    for role, fspec in ds.spec.files.items():
        arr = getattr(ds, role)
        if arr.shape != fspec.shape:
            got = "x".join(map(str, arr.shape))
            want = "x".join(map(str, fspec.shape))
            raise SpecMismatchError(
                f"{fspec.filename}: count contradicts the spec: header says {got}, "
                f"spec {ds.spec.name!r} says {want}"
            )
        if arr.dtype != np.dtype(fspec.dtype):
            raise SpecMismatchError(f"{fspec.filename}: dtype {arr.dtype}, spec says {fspec.dtype}")
    for split in SPLITS:
        labels = getattr(ds, f"{split}_labels")
        bad = np.flatnonzero((labels < 0) | (labels >= ds.spec.n_classes))
        if bad.size:
            name = ds.spec.files[f"{split}_labels"].filename
            raise LabelRangeError(
                f"{name}: label out of range: {bad.size} labels outside 0..{ds.spec.n_classes - 1} "
                f"(first: {labels[bad[0]]} at index {bad[0]})"
            )


def load_dataset(
    name: str | DatasetSpec,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    validate: bool = True,
    show_progress: bool = False,
) -> Dataset:
    """Find (or fetch), verify and read a dataset.

    Args:
        name: a registered name or a spec.
        data_dir: an explicit folder, searched first.
        download: allow fetching missing files.
        validate: check shapes and labels against the spec (``data check`` passes False to
            report every problem instead of stopping at the first).
        show_progress: progress bars for downloads.

    Raises:
        DataError: a subclass naming the file and the problem.
    """
    spec = get_dataset(name) if isinstance(name, str) else name
    files = fetch_dataset(spec, data_dir, verify=False, download=download, show_progress=show_progress)
    arrays = {role: read_idx(f.path, sha256=spec.files[role].sha256) for role, f in files.items()}
    ds = Dataset(spec=spec, files=files, **arrays)
    if validate:
        validate_against_spec(ds)
    return ds
