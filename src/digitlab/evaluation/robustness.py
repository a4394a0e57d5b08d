"""Robustness sweeps: accuracy as images are rotated, shifted, scaled, blurred, thinned, occluded.

Usage::

    results = robustness_sweep(predictor.predict, images, labels, n=2000, seed=0)
    results["rotation"]  # {"levels": [-45, ..., 45], "accuracy": [...], "unit": "degrees"}

Each perturbation works on a whole batch at once (kornia / torch ops, per-sample random parameters
from a seeded generator), and returns uint8 images in the model's own convention, so any model
(torch or classical) is measured through its ordinary prediction path.
"""

from collections.abc import Callable
from dataclasses import dataclass

import kornia
import numpy as np
import torch


@dataclass(frozen=True)
class Perturbation:
    name: str
    unit: str
    levels: tuple[float, ...]
    label: str  # one level in words, e.g. "rotated {:+g}°"
    apply: Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]  # (N,1,H,W) float 0-1 -> same


def _rotate(x: torch.Tensor, deg: float, g: torch.Generator) -> torch.Tensor:
    return kornia.geometry.transform.rotate(x, torch.full((len(x),), float(deg)))


def _translate(x: torch.Tensor, px: float, g: torch.Generator) -> torch.Tensor:
    theta = torch.rand(len(x), generator=g) * 2 * torch.pi  # a random direction per image
    shift = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1) * px
    return kornia.geometry.transform.translate(x, shift)


def _scale(x: torch.Tensor, factor: float, g: torch.Generator) -> torch.Tensor:
    return kornia.geometry.transform.scale(x, torch.full((len(x), 2), float(factor)))


def _noise(x: torch.Tensor, std: float, g: torch.Generator) -> torch.Tensor:
    return (x + torch.randn(x.shape, generator=g) * std).clamp(0, 1)


def _blur(x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    if sigma <= 0:
        return x
    k = 2 * int(np.ceil(3 * sigma)) + 1
    return kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma))


_DISK = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])


def _thickness(x: torch.Tensor, steps: float, g: torch.Generator) -> torch.Tensor:
    op = kornia.morphology.dilation if steps > 0 else kornia.morphology.erosion
    for _ in range(int(abs(steps))):
        x = op(x, _DISK)
    return x


def _occlude(x: torch.Tensor, side: float, g: torch.Generator) -> torch.Tensor:
    s = int(side)
    if s <= 0:
        return x
    n, _, h, w = x.shape
    top = torch.randint(0, h - s + 1, (n, 1, 1), generator=g)
    left = torch.randint(0, w - s + 1, (n, 1, 1), generator=g)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    box = (rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s)
    return x.masked_fill(box[:, None], 0.0)


def _invert(x: torch.Tensor, on: float, g: torch.Generator) -> torch.Tensor:
    return 1.0 - x if on else x


PERTURBATIONS: tuple[Perturbation, ...] = (
    Perturbation("rotation", "degrees", (-45, -30, -15, 0, 15, 30, 45), "rotated {:+g}°", _rotate),
    Perturbation("translation", "pixels (random direction)", (0, 2, 4, 6, 8), "shifted {:g} px", _translate),
    Perturbation("scale", "scale factor", (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3), "scaled ×{:g}", _scale),
    Perturbation("noise", "Gaussian noise std (of full scale)", (0, 0.1, 0.2, 0.3, 0.4, 0.5), "noise σ {:g}", _noise),
    Perturbation("blur", "Gaussian blur sigma (pixels)", (0, 0.5, 1.0, 1.5, 2.0), "blurred σ {:g} px", _blur),
    Perturbation("thickness", "erosion (-) / dilation (+) steps", (-2, -1, 0, 1, 2), "stroke {:+g} steps", _thickness),
    Perturbation("occlusion", "side of a black square (pixels)", (0, 4, 8, 12, 16), "{:g} px square hidden", _occlude),
    Perturbation("invert", "polarity inverted (0 = no, 1 = yes)", (0, 1), "inverted ({:g})", _invert),
)


def perturb(images: np.ndarray, name: str, level: float, *, seed: int = 0) -> np.ndarray:
    """One perturbation at one level, on uint8 images ``(N, H, W)``; returns uint8 images."""
    pert = next((p for p in PERTURBATIONS if p.name == name), None)
    if pert is None:
        raise ValueError(f"unknown perturbation {name!r}; known: {', '.join(p.name for p in PERTURBATIONS)}")
    g = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(images, dtype=torch.float32)[:, None] / 255.0
    with torch.no_grad():
        y = pert.apply(x, level, g)
    return (y[:, 0] * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()


def robustness_sweep(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray, *,
                     n: int | None = 2000, seed: int = 0) -> dict[str, dict]:
    """Accuracy of ``predict`` (uint8 images -> class indices) under every perturbation and level.

    Args:
        n: how many images to use (a seeded random sample; None for all). Slow models (SVM) need it.
    """
    rng = np.random.default_rng(seed)
    if n is not None and n < len(images):
        keep = np.sort(rng.choice(len(images), size=n, replace=False))
        images, labels = images[keep], labels[keep]
    results: dict[str, dict] = {}
    for pert in PERTURBATIONS:
        accs = []
        for level in pert.levels:
            pred = predict(perturb(images, pert.name, level, seed=seed))
            accs.append(float(np.mean(pred == labels)))
        results[pert.name] = {"levels": [float(v) for v in pert.levels], "accuracy": accs, "unit": pert.unit,
                              "labels": [pert.label.format(v) for v in pert.levels], "n": len(labels)}
    return results
