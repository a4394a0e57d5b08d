"""Splits, the preprocessing spec and the in-memory batch iterator."""

import numpy as np
import pytest
import torch

from digitlab.data.batching import BatchLoader
from digitlab.data.errors import DataError
from digitlab.data.preprocess import PreprocessSpec, compute_preprocess_spec
from digitlab.data.splits import split_train_val


def test_split_is_stratified_seeded_and_disjoint() -> None:
    labels = np.repeat(np.arange(10), [100, 200, 100, 100, 100, 100, 100, 100, 100, 100])
    tr, va = split_train_val(labels, n_val=110, seed=3)
    assert len(va) == 110 and len(tr) == len(labels) - 110
    assert not set(tr) & set(va) and set(tr) | set(va) == set(range(len(labels)))
    # Stratified: class 1 is 2/11 of the data, so 20 of 110.
    assert np.bincount(labels[va], minlength=10).tolist() == [10, 20, 10, 10, 10, 10, 10, 10, 10, 10]
    _, va2 = split_train_val(labels, n_val=110, seed=3)
    np.testing.assert_array_equal(va, va2)
    _, va3 = split_train_val(labels, n_val=110, seed=4)
    assert not np.array_equal(va, va3)


def test_split_bad_sizes() -> None:
    labels = np.arange(20) % 10
    tr, va = split_train_val(labels, n_val=0)
    assert len(tr) == 20 and len(va) == 0
    for bad in (-1, 20, 25):
        with pytest.raises(DataError, match="validation size"):
            split_train_val(labels, n_val=bad)


def test_spec_statistics_and_json_round_trip() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    spec = compute_preprocess_spec(x, dataset="tiny")
    ref = x.astype(np.float64) / 255
    assert spec.mean == pytest.approx(ref.mean(), rel=1e-12)
    assert spec.std == pytest.approx(ref.std(), rel=1e-12)
    again = PreprocessSpec.from_json(spec.to_json())
    assert again == spec
    with pytest.raises(DataError, match=r"^preprocessing spec: chanels: Extra inputs are not permitted$"):
        PreprocessSpec.from_json(spec.to_json().replace('"channels"', '"chanels"'))
    with pytest.raises(DataError):
        compute_preprocess_spec(np.zeros((2, 2), np.float32))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"mean": 0.1, "std": 0.3', "runs/x/model.json: Invalid JSON"),
        ("[0.1, 0.3]", "runs/x/model.json: Input should be an object"),
        ('{"mean": 0.1, "std": 0.3, "chanels": 1}', "runs/x/model.json: chanels: Extra inputs"),
        ('{"mean": 0.1, "std": 0}', "runs/x/model.json: std: Input should be greater than 0"),
        ('{"mean": "a lot", "std": 0.3, "polarity": "sideways"}', "runs/x/model.json: "),
        ('{"std": 0.3}', "runs/x/model.json: mean: Field required"),
    ],
)
def test_bad_spec_json_is_a_one_line_data_error(text: str, expected: str) -> None:
    with pytest.raises(DataError) as e:
        PreprocessSpec.from_json(text, source="runs/x/model.json")
    msg = str(e.value)
    assert msg.startswith(expected) and "\n" not in msg, msg
    if "sideways" in text:  # every problem is named, not only the first
        assert "polarity: Input should be" in msg and "mean: Input should be a valid number" in msg


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_normalize_and_to_unit_never_modify_their_input(dtype: torch.dtype) -> None:
    spec = PreprocessSpec(mean=0.1307, std=0.3081)
    x = torch.randint(0, 256, (4, 1, 28, 28)).to(dtype)
    before = x.clone()
    y = spec.normalize(x)
    torch.testing.assert_close(y, (before.float() / 255 - 0.1307) / 0.3081, rtol=1e-5, atol=1e-5)
    unit = spec.to_unit(x)
    assert unit.dtype == torch.float32 and unit.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    spec.standardize(unit.mul_(0.5))  # augmentation and standardize work in place on to_unit's tensor
    assert torch.equal(x, before)


def test_normalize_matches_the_formula() -> None:
    spec = PreprocessSpec(mean=0.1307, std=0.3081)
    x = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    y = spec.normalize(x)
    assert y.shape == (4, 1, 28, 28) and y.dtype == torch.float32
    torch.testing.assert_close(y, ((x.float() / 255 - 0.1307) / 0.3081).unsqueeze(1), rtol=1e-5, atol=1e-5)


def _loader(n: int = 103, **kw) -> BatchLoader:
    images = np.arange(n, dtype=np.uint8)[:, None, None].repeat(28, 1).repeat(28, 2)
    labels = np.arange(n) % 10
    return BatchLoader(images, labels, PreprocessSpec(mean=0.0, std=1.0, scale=1.0), **kw)


def _ids(loader: BatchLoader) -> list[list[int]]:
    # With scale 1, mean 0, std 1 every pixel equals the image's index, so ids can be read back.
    return [x[:, 0, 0, 0].long().tolist() for x, _ in loader]


def test_loader_epoch_covers_everything_once_in_seeded_order() -> None:
    loader = _loader(batch_size=10, seed=7)
    assert len(loader) == 11
    e0 = _ids(loader)
    assert [len(b) for b in e0] == [10] * 10 + [3]
    flat = sum(e0, [])
    assert sorted(flat) == list(range(103)) and flat != list(range(103))
    e1 = _ids(loader)
    assert sum(e1, []) != flat, "each epoch reshuffles"
    loader.set_epoch(0)
    assert _ids(loader) == e0, "an epoch can be replayed"
    assert _ids(_loader(batch_size=10, seed=7)) == e0


def test_loader_labels_follow_images_and_drop_last() -> None:
    loader = _loader(batch_size=10, seed=1, drop_last=True)
    assert len(loader) == 10
    batches = list(loader)
    assert len(batches) == 10 and all(len(y) == 10 for _, y in batches)
    for x, y in batches:
        assert y.dtype == torch.int64
        assert (x[:, 0, 0, 0].long() % 10 == y).all()


def test_loader_without_shuffle_keeps_order() -> None:
    assert sum(_ids(_loader(batch_size=32, shuffle=False)), []) == list(range(103))


def test_loader_rejects_bad_input() -> None:
    spec = PreprocessSpec(mean=0.0, std=1.0)
    with pytest.raises(DataError, match="uint8"):
        BatchLoader(np.zeros((2, 28, 28), np.float32), np.zeros(2), spec)
    with pytest.raises(DataError, match="labels"):
        BatchLoader(np.zeros((2, 28, 28), np.uint8), np.zeros(3), spec)
    with pytest.raises(DataError, match="batch size"):
        BatchLoader(np.zeros((2, 28, 28), np.uint8), np.zeros(2), spec, batch_size=0)
