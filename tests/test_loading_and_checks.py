"""Loading against the spec, and the integrity checks on synthetic data with known faults."""

from pathlib import Path

import numpy as np
import pytest

from conftest import make_arrays, write_dataset
from digitlab.data.check import check_dataset, find_duplicates, find_leaks
from digitlab.data.datasets import get_dataset, list_datasets, register_dataset
from digitlab.data.errors import (
    ChecksumMismatchError,
    DataError,
    LabelRangeError,
    SpecMismatchError,
    UnknownDatasetError,
)
from digitlab.data.loading import load_dataset


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
