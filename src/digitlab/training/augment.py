"""Batch augmentation on tensors: per-sample random parameters, one vectorised call per op.

Usage::

    aug = build_augmenter(cfg.augment)       # None when nothing is enabled
    x_unit = aug(x_unit)                     # (B, 1, H, W) in [0, 1], before normalisation

Geometry (rotation, translation, scale, shear) is one ``RandomAffine``; elastic distortion,
contrast, Gaussian noise and random erasing follow, all from kornia. Augmenting in [0, 1] pixel
units keeps padding equal to the background (0). Randomness comes from torch's global generator,
which the trainer seeds and checkpoints.
"""

import torch
from torch import Tensor, nn

from digitlab.core.config import AugmentSection


class _Clamp01(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.clamp_(0.0, 1.0)


class RandomStroke(nn.Module):
    """Strokes made thinner or thicker, per sample: a random blend (0-1) towards a 3x3 grey erosion or
    dilation, applied to a share ``p`` of the batch (half thinner, half thicker). Pens differ, MNIST's
    too (docs/decisions.md#stroke-augmentation)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        u = torch.rand(b, 1, 1, 1, device=x.device)
        alpha = torch.rand(b, 1, 1, 1, device=x.device)
        dilated = torch.nn.functional.max_pool2d(x, 3, 1, 1)
        eroded = -torch.nn.functional.max_pool2d(-x, 3, 1, 1)
        thicker = (u < self.p / 2).to(x.dtype) * alpha
        thinner = ((u >= self.p / 2) & (u < self.p)).to(x.dtype) * alpha
        return x + thicker * (dilated - x) + thinner * (eroded - x)


def build_augmenter(cfg: AugmentSection) -> nn.Module | None:
    """An ``nn.Sequential`` of kornia ops for ``cfg``, or None when nothing is enabled."""
    if not cfg.enabled:
        return None
    import kornia.augmentation as K  # slow to import: only runs that augment pay (docs/decisions.md#deferred-imports)

    ops: list[nn.Module] = []
    if cfg.rotation or cfg.translate or cfg.scale != (1.0, 1.0) or cfg.shear:
        ops.append(
            K.RandomAffine(
                degrees=cfg.rotation,
                translate=(cfg.translate, cfg.translate) if cfg.translate else None,
                scale=cfg.scale if cfg.scale != (1.0, 1.0) else None,
                shear=cfg.shear or None,
                p=cfg.p,
            )
        )
    if cfg.elastic_alpha:
        size = int(4 * cfg.elastic_sigma) | 1  # odd kernel covering +-2 sigma
        ops.append(K.RandomElasticTransform(kernel_size=(size, size), sigma=(cfg.elastic_sigma, cfg.elastic_sigma),
                                            alpha=(cfg.elastic_alpha, cfg.elastic_alpha), p=cfg.p))
    if cfg.contrast:
        ops.append(K.RandomContrast(contrast=(1 - cfg.contrast, 1 + cfg.contrast), p=1.0))
    if cfg.noise_std:
        ops.append(K.RandomGaussianNoise(std=cfg.noise_std, p=1.0))
        ops.append(_Clamp01())
    if cfg.stroke:
        ops.append(RandomStroke(cfg.stroke))
    if cfg.erasing:
        ops.append(K.RandomErasing(scale=(0.02, 0.15), p=cfg.erasing))
    return nn.Sequential(*ops)


@torch.no_grad()
def apply_augmenter(aug: nn.Module | None, x: Tensor) -> Tensor:
    """Run ``aug`` on a ``(B, 1, H, W)`` batch in [0, 1] (identity when ``aug`` is None)."""
    return x if aug is None else aug(x)
