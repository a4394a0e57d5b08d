"""Integration tests on the real MNIST files (../shared/data/mnist via DIGITLAB_DATA_DIR).

Under CI=true a missing MNIST is a failure, not a skip (see the ``mnist_dataset`` fixture).
"""

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from conftest import mnist_file
from digitlab.data.check import check_dataset
from digitlab.data.datasets import get_dataset
from digitlab.data.explore import explore_dataset
from digitlab.data.idx import read_idx
from digitlab.data.loading import load_dataset
from digitlab.data.preprocess import compute_preprocess_spec
from digitlab.data.sources import fetch_dataset
from digitlab.data.splits import split_train_val

pytestmark = pytest.mark.mnist

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_files_verify_and_come_from_the_data_dir(mnist_dataset) -> None:
    found = fetch_dataset(get_dataset("mnist"), download=False)  # verify=True hashes each file
    assert all(f.source.startswith("$DIGITLAB_DATA_DIR") for f in found.values())
    assert mnist_dataset.train_images.shape == (60000, 28, 28)
    assert mnist_dataset.test_images.shape == (10000, 28, 28)


def test_reading_60000_images_copies_the_payload_at_most_once(mnist_dataset) -> None:
    path = mnist_file("train-images-idx3-ubyte")
    tracemalloc.start()
    try:
        images = read_idx(path, sha256=get_dataset("mnist").files["train_images"].sha256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert images.nbytes == 47_040_000
    assert peak < images.nbytes * 1.1, f"peak {peak / 1e6:.1f} MB"


def test_check_reports_mnist_as_it_is(mnist_dataset) -> None:
    report = check_dataset(mnist_dataset)
    by = {c.name: c for c in report.checks}
    assert report.ok
    assert by["class balance"].details["train"]["counts"] == TRAIN_COUNTS
    assert sum(by["class balance"].details["test"]["counts"]) == 10000
    assert by["duplicates within splits"].details["train"]["n_redundant"] == 0
    assert by["train/test leakage"].details["n_test_in_train"] == 0
    assert by["pixel range"].details["train"]["min"] == 0 and by["pixel range"].details["train"]["max"] == 255


def test_unverified_load_records_the_real_hashes_for_check(mnist_dataset) -> None:
    # What ``digitlab data check`` does: read without stopping on a mismatch, report it as a row.
    ds = load_dataset("mnist", download=False, validate=False, verify=False)
    assert ds.sha256 == {role: f.sha256 for role, f in get_dataset("mnist").files.items()}
    report = check_dataset(ds)
    assert report.checks[0].name == "checksums" and report.checks[0].status == "pass"
    assert report.ok


def test_validation_split_and_normalisation_from_train_only(mnist_dataset) -> None:
    tr, va = split_train_val(mnist_dataset.train_labels, n_val=5000, seed=0)
    assert len(tr) == 55000 and len(va) == 5000
    counts = np.bincount(mnist_dataset.train_labels[va], minlength=10)
    expected = np.array(TRAIN_COUNTS) * 5000 / 60000
    assert np.all(np.abs(counts - expected) <= 1)
    spec = compute_preprocess_spec(mnist_dataset.train_images[tr], dataset="mnist")
    # The well-known full-train figures are 0.1307 / 0.3081; 55,000 images land close to them.
    assert spec.mean == pytest.approx(0.1307, abs=2e-3) and spec.std == pytest.approx(0.3081, abs=2e-3)


def test_explore_mnist(mnist_dataset, tmp_path: Path) -> None:
    summary = explore_dataset(mnist_dataset, tmp_path)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["class_counts"]["train"]["1"] == 6742
    assert on_disk["n_images"] == {"train": 60000, "test": 10000}
    for path in summary["figures"].values():
        assert Path(path).stat().st_size > 10_000
    # Ones are the thinnest digits, zeros have the most ink.
    widths = {d: on_disk["ink_per_class"][d]["bbox_width"]["median"] for d in "0123456789"}
    assert min(widths, key=widths.get) == "1"
    areas = {d: on_disk["ink_per_class"][d]["area"]["mean"] for d in "0123456789"}
    assert max(areas, key=areas.get) == "0"
