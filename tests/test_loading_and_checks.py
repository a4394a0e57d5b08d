"""Loading against the spec, the integrity checks, and exploration, on synthetic data with known faults."""

import errno
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import make_arrays, write_dataset
from digitlab.data import explore
from digitlab.data.check import check_dataset, find_duplicates, find_leaks, ink_pixel_counts
from digitlab.data.datasets import get_dataset, list_datasets, register_dataset
from digitlab.data.errors import (
    ChecksumMismatchError,
    DataError,
    FileAccessError,
    LabelRangeError,
    SpecMismatchError,
    UnknownDatasetError,
)
from digitlab.data.explore import class_mean_images, explore_dataset
from digitlab.data.loading import Dataset, load_dataset, validate_against_spec


def test_registry_has_mnist_and_fashion_and_refuses_duplicates() -> None:
    assert {"mnist", "fashion-mnist"} <= set(list_datasets())
    mnist = get_dataset("mnist")
    assert mnist.n_classes == 10
    assert mnist.files["train_images"].shape == (60000, 28, 28)
    assert get_dataset("fashion-mnist").class_names[9] == "Ankle boot"
    with pytest.raises(DataError, match="already registered"):
        register_dataset(mnist)
    with pytest.raises(UnknownDatasetError, match=r"choose one of .*mnist"):
        get_dataset("emnist-typo")


def test_load_tiny(tiny) -> None:
    spec, folder = tiny
    ds = load_dataset(spec, folder, download=False)
    assert ds.train_images.shape == (40, 28, 28) and ds.train_images.dtype == np.uint8
    assert ds.test_labels.tolist() == [i % 10 for i in range(20)]
    assert all(f.source.startswith("--data-dir") for f in ds.files.values())
    images, labels = ds.split_arrays("test")
    assert images is ds.test_images and labels is ds.test_labels


def test_count_that_contradicts_the_spec(tmp_path: Path) -> None:
    spec = write_dataset(tmp_path / "d", make_arrays(), shapes={"train_labels": (41,)})
    with pytest.raises(SpecMismatchError, match=r"train-labels-idx1-ubyte: count contradicts the spec: header "
                                                r"says 40, spec 'tiny' says 41"):
        load_dataset(spec, tmp_path / "d", download=False)


def test_label_out_of_range(tmp_path: Path) -> None:
    arrays = make_arrays()
    arrays["test_labels"][7] = 12
    spec = write_dataset(tmp_path / "d", arrays)
    with pytest.raises(LabelRangeError, match=r"t10k-labels-idx1-ubyte: label out of range: 1 labels outside "
                                              r"0\.\.9 \(first: 12 at index 7\)"):
        load_dataset(spec, tmp_path / "d", download=False)
    report = check_dataset(load_dataset(spec, tmp_path / "d", download=False, validate=False))
    labels = next(c for c in report.checks if c.name == "label range")
    assert labels.status == "fail" and labels.details["test"]["first_out_of_range"] == [7]
    assert not report.ok


def test_tampered_file_is_a_checksum_error(tiny) -> None:
    spec, folder = tiny
    arrays = make_arrays(seed=5)
    write_dataset(folder, arrays)  # same names, other bytes: the spec's hashes no longer match
    with pytest.raises(ChecksumMismatchError, match=r"checksum mismatch: expected sha256 [0-9a-f]{64}, got"):
        load_dataset(spec, folder, download=False)


def test_clean_tiny_passes_every_check(tiny) -> None:
    spec, folder = tiny
    report = check_dataset(load_dataset(spec, folder, download=False))
    assert report.ok
    assert {c.name: c.status for c in report.checks} == {
        "counts and shapes": "pass", "label range": "pass", "class balance": "pass", "blank images": "pass",
        "duplicates within splits": "pass", "train/test leakage": "pass", "pixel range": "pass",
    }
    balance = next(c for c in report.checks if c.name == "class balance").details
    assert balance["train"]["counts"] == [4] * 10 and balance["test"]["percent"] == [10.0] * 10
    assert report.to_dict()["ok"] is True


def test_checks_find_blanks_duplicates_leaks_and_imbalance(tmp_path: Path) -> None:
    arrays = make_arrays()
    x, xt = arrays["train_images"], arrays["test_images"]
    x[3] = 0                      # blank
    x[4] = 0
    x[4, 10, 10] = 255            # near-blank: one ink pixel
    x[11] = x[10]                 # duplicate pair in train
    x[12] = x[10]                 # ... a third copy
    xt[5] = xt[6]                 # duplicate pair in test
    xt[0] = x[20]                 # leaked into test
    arrays["train_labels"][:20] = 1  # class 1 dominates train
    spec = write_dataset(tmp_path / "d", arrays)
    report = check_dataset(load_dataset(spec, tmp_path / "d", download=False))
    by = {c.name: c for c in report.checks}
    assert by["blank images"].status == "warn"
    assert by["blank images"].details["train"]["indices"] == [3, 4]
    assert by["blank images"].details["train"]["n_all_zero"] == 1
    assert by["duplicates within splits"].details["train"]["groups"] == [[10, 11, 12]]
    assert by["duplicates within splits"].details["train"]["n_redundant"] == 2
    assert by["duplicates within splits"].details["test"]["groups"] == [[5, 6]]
    assert by["train/test leakage"].status == "fail"
    assert by["train/test leakage"].details["test_indices"] == [0]
    assert by["class balance"].status == "warn"
    assert not report.ok


def test_duplicate_and_leak_helpers_on_edge_cases() -> None:
    empty = np.zeros((0, 28, 28), np.uint8)
    assert find_duplicates(empty) == []
    assert find_leaks(empty, np.zeros((2, 28, 28), np.uint8)).size == 0
    same = np.ones((3, 2, 2), np.uint8)
    assert find_duplicates(same) == [[0, 1, 2]]


def test_check_reports_a_checksum_mismatch_as_a_failed_row(tiny) -> None:
    spec, folder = tiny
    write_dataset(folder, make_arrays(seed=5))  # same names, other bytes: the spec's hashes no longer match
    ds = load_dataset(spec, folder, download=False, validate=False, verify=False)  # no raise
    report = check_dataset(ds)
    first = report.checks[0]
    assert first.name == "checksums" and first.status == "fail" and not report.ok
    assert "t10k-images-idx3-ubyte.gz" in first.summary and "checksum mismatch" in first.summary
    row = first.details["test_images"]
    assert row["expected"] == spec.files["test_images"].sha256
    assert row["actual"] == ds.sha256["test_images"] != row["expected"]
    assert row["file"] == str(folder / "t10k-images-idx3-ubyte.gz")
    # The other checks still ran on the data as read.
    assert [c.name for c in report.checks[1:3]] == ["counts and shapes", "label range"]


def test_checksums_row_passes_and_is_absent_without_hashes(tiny) -> None:
    spec, folder = tiny
    unverified = load_dataset(spec, folder, download=False, verify=False)
    assert unverified.sha256 == {role: f.sha256 for role, f in spec.files.items()}
    first = check_dataset(unverified).checks[0]
    assert (first.name, first.status) == ("checksums", "pass")
    verified = load_dataset(spec, folder, download=False)
    assert verified.sha256 == {}
    assert "checksums" not in {c.name for c in check_dataset(verified).checks}
    arrays = {r: getattr(verified, r) for r in spec.files}
    in_memory = Dataset(spec=spec, files={}, **arrays)  # built without any file information
    assert check_dataset(in_memory).ok


def test_loader_and_check_share_the_spec_rules(tmp_path: Path) -> None:
    arrays = make_arrays()
    arrays["test_labels"][7] = 12
    spec = write_dataset(tmp_path / "d", arrays, shapes={"train_labels": (41,)})
    ds = load_dataset(spec, tmp_path / "d", download=False, validate=False)
    by = {c.name: c for c in check_dataset(ds).checks}
    with pytest.raises(SpecMismatchError) as shape_error:
        validate_against_spec(ds)
    assert by["counts and shapes"].summary == str(shape_error.value)
    with pytest.raises(LabelRangeError) as label_error:
        validate_against_spec(replace(ds, spec=write_dataset(tmp_path / "e", arrays)))
    assert by["label range"].summary == str(label_error.value)


def _empty_like(spec, n_classes: int = 10) -> Dataset:
    empty = {
        "train_images": np.zeros((0, 28, 28), np.uint8), "train_labels": np.zeros(0, np.uint8),
        "test_images": np.zeros((0, 28, 28), np.uint8), "test_labels": np.zeros(0, np.uint8),
    }
    files = {r: replace(f, shape=empty[r].shape) for r, f in spec.files.items()}
    return Dataset(spec=replace(spec, files=files, class_names=spec.class_names[:n_classes]), files={}, **empty)


def test_empty_splits_are_checked_and_explored_without_crashing(tiny, tmp_path: Path) -> None:
    ds = _empty_like(tiny[0])
    assert ink_pixel_counts(ds.train_images).shape == (0,)
    by = {c.name: c for c in check_dataset(ds).checks}
    assert by["counts and shapes"].summary.startswith("train 0, test 0")
    assert by["blank images"].details["train"]["n_all_zero"] == 0
    assert by["pixel range"].details["test"]["min"] is None
    summary = explore_dataset(ds, tmp_path / "out")
    assert summary["n_images"] == {"train": 0, "test": 0}
    assert all(Path(f).is_file() for f in summary["figures"].values())


def test_explore_a_single_class_dataset(tiny, tmp_path: Path) -> None:
    spec, folder = tiny
    ds = load_dataset(spec, folder, download=False)
    ds.train_labels[:] = 0
    ds.test_labels[:] = 0
    one = replace(ds, spec=replace(spec, class_names=("only",)))
    summary = explore_dataset(one, tmp_path / "out")
    assert summary["class_counts"]["train"] == {"only": 40}
    assert Path(summary["figures"]["samples"]).stat().st_size > 1000


def test_explore_into_a_file_is_a_data_error(tiny, tmp_path: Path) -> None:
    spec, folder = tiny
    ds = load_dataset(spec, folder, download=False)
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    with pytest.raises(FileAccessError) as err:
        explore_dataset(ds, blocker)
    assert str(err.value) == f"{blocker}: not a folder (a file of that name exists)"
    with pytest.raises(FileAccessError) as err:
        explore_dataset(ds, blocker / "sub")
    assert str(err.value) == f"{blocker / 'sub'}: cannot create the folder: Not a directory"


def test_explore_write_failure_is_a_data_error(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, folder = tiny
    ds = load_dataset(spec, folder, download=False)

    def full_disk(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(explore, "atomic_path", full_disk)
    with pytest.raises(FileAccessError) as err:
        explore_dataset(ds, tmp_path / "out")
    assert str(err.value) == f"{tmp_path / 'out'}: cannot write: No space left on device"


def test_class_mean_images_are_exact_and_make_no_float_copy() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20000, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=20000).astype(np.uint8)
    reference = np.stack([images[labels == c].astype(np.float64).mean(axis=0) for c in range(10)])
    tracemalloc.start()
    try:
        means = class_mean_images(images, labels, 11)  # class 10 is absent: zeros, no division by 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(means[:10], reference, rtol=1e-12)
    assert not means[10].any()
    # A float32 copy of the images would be 4x their size; one class's uint8 rows are a tenth.
    assert peak < images.nbytes / 2, f"peak {peak / 1e6:.1f} MB for {images.nbytes / 1e6:.1f} MB of images"

