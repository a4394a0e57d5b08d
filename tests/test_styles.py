"""Synthetic digits in continental styles: MNIST's convention (box, centre of mass, ink), seeding, and shapes."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from digitlab.data.styles import STYLES, synthetic_digits


@pytest.fixture(scope="module")
def bank() -> tuple[np.ndarray, np.ndarray]:
    images, labels = synthetic_digits(600, seed=11)
    assert images.shape == (600, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (600,) and labels.dtype == torch.int64
    return images.numpy(), labels.numpy()


def test_labels_are_digits_and_balanced(bank) -> None:
    _, labels = bank
    assert labels.min() >= 0 and labels.max() <= 9
    counts = np.bincount(labels, minlength=10)
    assert counts.min() >= 50 and counts.max() <= 70, counts
    assert len(set(labels[:50].tolist())) >= 8  # shuffled, not in blocks


def test_style_shares_favour_what_mnist_lacks() -> None:
    for options in STYLES.values():
        assert abs(sum(share for _, share, _ in options) - 1) < 1e-6
    ones = {name: share for name, share, _ in STYLES[1]}
    assert ones["flag"] + ones["flag+base"] >= 0.7


def test_seeded_and_deterministic() -> None:
    a, la = synthetic_digits(40, seed=3)
    b, lb = synthetic_digits(40, seed=3)
    c, _ = synthetic_digits(40, seed=4)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)
    state = torch.random.get_rng_state()
    synthetic_digits(5, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone


def test_every_digit_is_fitted_the_mnist_way(bank) -> None:
    images, _ = bank
    for im in images:
        assert im.max() >= 230  # the stroke's core is near 255, like MNIST's
        ys, xs = np.nonzero(im)
        longest = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
        assert 19 <= longest <= 21, longest
        cy, cx = ndi.center_of_mass(im.astype(float))
        # MNIST moved digits by whole pixels: the centre of mass is within half a pixel of (14, 14).
        assert abs(cy - 14) <= 0.51 and abs(cx - 14) <= 0.51, (cy, cx)


def test_stroke_width_is_like_mnists(bank) -> None:
    images, _ = bank
    widths = []
    for im in images:
        length = skeletonize(im > 127).sum()
        widths.append(im.sum() / 255 / max(length, 1))
    widths = np.array(widths)
    assert 1.5 <= np.median(widths) <= 4.5, np.median(widths)
    assert np.mean((widths >= 1.5) & (widths <= 4.5)) >= 0.9


def test_ones_have_flags_and_feet(bank) -> None:
    images, labels = bank
    ones = images[labels == 1]
    # A plain bar 20 px tall, even slanted 20 degrees, is at most ~10 px wide; flags and feet make a 1 wider.
    widths = np.array([np.ptp(np.nonzero(im)[1]) + 1 for im in ones])
    assert np.mean(widths >= 9) >= 0.5, np.sort(widths)
    # The flag hangs down-left from the top of the stem. A bar leaning right (as most do) would put more ink in
    # the lower left than in the upper left.
    upper_left = ones[:, :12, :12].astype(float).sum()
    lower_left = ones[:, 16:, :12].astype(float).sum()
    assert upper_left > lower_left


def test_synthetic_styles_join_the_training_set_the_same_every_time() -> None:
    """``data.synthetic_styles`` adds that many styled digits to the training split, drawn from the run's seed
    (a resumed run sees the same set); validation and test are untouched."""
    from digitlab.core.config import RunConfig
    from digitlab.training.trainer import Split, _with_styles

    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 255, (50, 28, 28), dtype=np.uint8), rng.integers(0, 10, 50).astype(np.int64),
                  np.zeros((5, 28, 28), np.uint8), np.zeros(5, np.int64), np.zeros((5, 28, 28), np.uint8),
                  np.zeros(5, np.int64))
    assert _with_styles(split, RunConfig()) is split
    cfg = RunConfig.model_validate({"seed": 3, "data": {"synthetic_styles": 40}})
    a, b = _with_styles(split, cfg), _with_styles(split, cfg)
    assert a.train_images.shape == (90, 28, 28) and a.train_labels.shape == (90,)
    assert a.train_labels.dtype == split.train_labels.dtype and set(a.train_labels[50:]) <= set(range(10))
    assert np.array_equal(a.train_images, b.train_images) and np.array_equal(a.train_images[:50], split.train_images)
    assert a.val_images is split.val_images and a.test_labels is split.test_labels
