"""Batch augmentation: every op runs on a whole batch with per-sample parameters, stays in [0, 1]."""

import torch

from digitlab.core.config import AugmentSection
from digitlab.training.augment import build_augmenter


def _batch() -> torch.Tensor:
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 6:22, 12:16] = 1.0  # the same vertical bar in every image
    return x


def test_nothing_enabled_is_no_augmenter() -> None:
    assert build_augmenter(AugmentSection()) is None


def test_every_op_runs_per_sample_and_keeps_the_range() -> None:
    cfg = AugmentSection(rotation=15, translate=0.1, scale=(0.9, 1.1), shear=8, elastic_alpha=1.0,
                         elastic_sigma=4.0, contrast=0.2, noise_std=0.05, erasing=0.5, p=1.0)
    aug = build_augmenter(cfg)
    torch.manual_seed(0)
    x = _batch()
    y = aug(x.clone())
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert y.min() >= 0 and y.max() <= 1
    flat = y.flatten(1)
    # Per-sample parameters: no two augmented copies of the same image are equal.
    assert torch.cdist(flat, flat).add(torch.eye(16) * 1e9).min() > 1e-3


def test_augmentation_is_reproducible_from_the_global_seed() -> None:
    aug = build_augmenter(AugmentSection(rotation=10, translate=0.1, elastic_alpha=1.0))
    torch.manual_seed(3)
    a = aug(_batch())
    torch.manual_seed(3)
    b = aug(_batch())
    assert torch.equal(a, b)
