"""Load a verified dataset into memory as uint8 arrays, and check it against its spec.

Usage::

    ds = load_dataset("mnist")                       # ds.train_images: (60000, 28, 28) uint8
    images, labels = ds.split_arrays("test")

Each file is read once: decompressed straight into its array while its SHA-256 is computed.
The shape and label rules live here once (``spec_mismatches``, ``label_range_errors``): the
loader raises the first problem, ``data check`` reports them all.
"""

import os
from dataclasses import dataclass, field

import numpy as np

from digitlab.data.datasets import DatasetSpec, get_dataset
from digitlab.data.errors import DataError, LabelRangeError, SpecMismatchError
from digitlab.data.idx import format_shape, read_idx, read_idx_with_hash
from digitlab.data.sources import FoundFile, fetch_dataset

SPLITS = ("train", "test")


@dataclass
class Dataset:
    """A dataset's four arrays, its spec, and where each file came from.

    ``sha256`` maps a file role to the SHA-256 of the file as read; ``load_dataset`` fills it when
    called with ``verify=False`` (a verified load has already proved every hash equals the spec's),
    and it is empty for a Dataset built in memory.
    """

    spec: DatasetSpec
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    files: dict[str, FoundFile]
    sha256: dict[str, str] = field(default_factory=dict)

    def split_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` of ``"train"`` or ``"test"``."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}: choose train or test")
        return getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")


def spec_mismatches(ds: Dataset) -> list[SpecMismatchError]:
    """Every way ``ds``'s arrays contradict its spec: shape or dtype per file, then count per split."""
    errors = []
    for role, fspec in ds.spec.files.items():
        arr = getattr(ds, role)
        if arr.shape != fspec.shape:
            errors.append(SpecMismatchError(
                f"{fspec.filename}: count contradicts the spec: header says {format_shape(arr.shape)}, "
                f"spec {ds.spec.name!r} says {format_shape(fspec.shape)}"
            ))
        if arr.dtype != np.dtype(fspec.dtype):
            errors.append(SpecMismatchError(f"{fspec.filename}: dtype {arr.dtype}, spec says {fspec.dtype}"))
    for split in SPLITS:
        n_img, n_lab = len(getattr(ds, f"{split}_images")), len(getattr(ds, f"{split}_labels"))
        if n_img != n_lab:
            errors.append(SpecMismatchError(f"{split}: {n_img} images but {n_lab} labels"))
    return errors


def out_of_range_labels(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Indices of the labels outside ``0 .. n_classes - 1``."""
    return np.flatnonzero((labels < 0) | (labels >= n_classes))


def label_range_errors(ds: Dataset) -> list[LabelRangeError]:
    """One error per labels file that holds a label outside ``0 .. n_classes - 1``."""
    k = ds.spec.n_classes
    errors = []
    for split in SPLITS:
        labels = getattr(ds, f"{split}_labels")
        bad = out_of_range_labels(labels, k)
        if bad.size:
            name = ds.spec.files[f"{split}_labels"].filename
            errors.append(LabelRangeError(
                f"{name}: label out of range: {bad.size} labels outside 0..{k - 1} "
                f"(first: {labels[bad[0]]} at index {bad[0]})"
            ))
    return errors


def validate_against_spec(ds: Dataset) -> None:
    """Check shapes, dtypes and the label range against the spec.

    Raises:
        SpecMismatchError: a shape or dtype contradicts the spec, or images and labels disagree.
        LabelRangeError: a label outside ``0 .. n_classes - 1``.
    """
    problems: list[DataError] = [*spec_mismatches(ds), *label_range_errors(ds)]
    if problems:
        raise problems[0]


def load_dataset(
    name: str | DatasetSpec,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    validate: bool = True,
    verify: bool = True,
    show_progress: bool = False,
) -> Dataset:
    """Find (or fetch), verify and read a dataset.

    Args:
        name: a registered name or a spec.
        data_dir: an explicit folder, searched first.
        download: allow fetching missing files.
        validate: check shapes and labels against the spec (``data check`` passes False to
            report every problem instead of stopping at the first).
        verify: stop on a file whose SHA-256 differs from the spec's. When False (``data check``)
            the files are read anyway and each actual hash, computed in the same read, is kept in
            ``Dataset.sha256`` for ``check_dataset`` to report. Downloaded files are verified
            before they are stored either way.
        show_progress: progress bars for downloads.

    Raises:
        DataError: a subclass naming the file and the problem.
    """
    spec = get_dataset(name) if isinstance(name, str) else name
    files = fetch_dataset(spec, data_dir, verify=False, download=download, show_progress=show_progress)
    arrays: dict[str, np.ndarray] = {}
    hashes: dict[str, str] = {}
    for role, f in files.items():
        if verify:
            arrays[role] = read_idx(f.path, sha256=spec.files[role].sha256)
        else:
            arrays[role], hashes[role] = read_idx_with_hash(f.path)
    ds = Dataset(spec=spec, files=files, sha256=hashes, **arrays)
    if validate:
        validate_against_spec(ds)
    return ds
