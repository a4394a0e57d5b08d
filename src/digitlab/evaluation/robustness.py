"""Robustness sweeps: accuracy as images are rotated, shifted, scaled, blurred, thinned, occluded, inverted.

Usage::

    # predictor: a digitlab.inference.Predictor; images, labels: (N, 28, 28) uint8 test digits, (N,) ints
    results = robustness_sweep(predictor.classify, images, labels, n=2000, seed=0, spec=predictor.spec)
    results["translation"]["accuracy"]            # raw 28x28 tensors, fed to the model as they are
    results["translation"]["accuracy_prepared"]   # the same images through the real-image preparation

``predict`` maps uint8 images ``(N, H, W)`` to class indices ``(N,)`` (``Predictor.classify``, or a
classical model's ``predict``). Each perturbation works on a whole batch at once (kornia / torch ops,
per-sample random parameters from a seeded generator) on the 28x28 tensors, in MNIST's convention.

Two curves, because the two ways digits reach a model differ:

- ``accuracy``: the perturbed tensor goes to the model as it is, without the real-image preparation
  (what ``Predictor.predict`` and the service's ``pixels`` field do). A shifted digit stays shifted.
- ``accuracy_prepared`` (the ``PREPARED`` perturbations only): each perturbed image first goes through
  ``digitlab.inference.prepare.prepare_image`` (polarity from the border, crop, fit to the 20 px box,
  centre of mass at the frame's centre), as ``digitlab predict``, the service's images and
  ``evaluate_images`` prepare a real image. The preparation undoes a shift, most of a scale change and
  an inversion, not a rotation. An image where it finds no digit counts as an error
  (``no_digit_found_prepared``). It is slow next to the model's batched call, so it is measured for
  the geometric perturbations and the inversion only: noise, blur, stroke thickness and occlusion
  stay raw-only (docs/decisions.md#prepared-robustness-curves).
"""

import hashlib
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import kornia
import numpy as np
import torch

from digitlab.data.preprocess import PreprocessSpec
from digitlab.inference.prepare import prepare_image

# What each curve measured, in words: written into metrics.json beside the numbers.
RAW_INPUT = "raw 28x28 tensors, without the real-image preparation"
PREPARED_INPUT = ("the same perturbed images through the real-image preparation (prepare_image: polarity, crop, "
                  "20 px box, centre of mass), as digitlab predict reads an image")


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
# The perturbations also measured through the real-image preparation (see the module doc for why these).
PREPARED: tuple[str, ...] = ("rotation", "translation", "scale", "invert")


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


def prepare_images(images: np.ndarray, spec: PreprocessSpec | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each image through the real-image preparation (``prepare_image``, polarity detected).

    Returns:
        the prepared images ``(N, H, W)`` uint8 (zeros where no digit was found) and the found mask ``(N,)``.
    """
    out = np.zeros((len(images), *(spec.input_size if spec else images.shape[1:])), dtype=np.uint8)
    found = np.zeros(len(images), dtype=bool)
    for i, image in enumerate(images):
        p = prepare_image(image, spec)
        if p.found and p.image is not None:
            out[i], found[i] = p.image, True
    return out, found


def robustness_sweep(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray, *,
                     n: int | None = 2000, seed: int = 0, spec: PreprocessSpec | None = None,
                     prepared: Collection[str] = PREPARED,
                     log: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Accuracy of ``predict`` (uint8 images -> class indices) under every perturbation and level.

    Args:
        n: how many images to use (a seeded random sample; None for all). Slow models (SVM) need it.
        spec: the model's preprocessing spec, for the prepared curves (MNIST's when None).
        prepared: the perturbations that also get a curve through the real-image preparation
            (``()``: raw tensors only).
        log: a callable taking one progress line per perturbation, or None.

    Returns:
        perturbation name -> ``levels``, ``labels`` (each level in words), ``unit``, ``n``, ``input``
        (what ``accuracy`` measured), ``accuracy`` (fractions, one per level), ``seconds``; and for the
        ``prepared`` ones ``accuracy_prepared``, ``no_digit_found_prepared`` (counts) and
        ``seconds_prepared``.
    """
    unknown = set(prepared) - {p.name for p in PERTURBATIONS}
    if unknown:
        known = ", ".join(p.name for p in PERTURBATIONS)
        raise ValueError(f"unknown perturbation(s) {', '.join(sorted(unknown))}; known: {known}")
    rng = np.random.default_rng(seed)
    if n is not None and n < len(images):
        keep = np.sort(rng.choice(len(images), size=n, replace=False))
        images, labels = images[keep], labels[keep]
    labels = np.asarray(labels)
    # identity levels (rotation 0, scale 1, ...) give the same images: each distinct batch is prepared once
    prepared_cache: dict[bytes, tuple[float, int]] = {}
    results: dict[str, dict] = {}
    for k, pert in enumerate(PERTURBATIONS, 1):
        if log is not None:
            log(f"robustness: {pert.name} ({k}/{len(PERTURBATIONS)})")
        accs, accs_prep, missed = [], [], []
        seconds = seconds_prep = 0.0
        for level in pert.levels:
            start = time.perf_counter()
            perturbed = perturb(images, pert.name, level, seed=seed)
            accs.append(float(np.mean(predict(perturbed) == labels)))
            seconds += time.perf_counter() - start
            if pert.name in prepared:
                start = time.perf_counter()
                key = hashlib.blake2b(perturbed.tobytes(), digest_size=16).digest()
                if key not in prepared_cache:
                    ready, found = prepare_images(perturbed, spec)
                    right = (predict(ready) == labels) & found
                    prepared_cache[key] = (float(np.mean(right)), int((~found).sum()))
                accs_prep.append(prepared_cache[key][0])
                missed.append(prepared_cache[key][1])
                seconds_prep += time.perf_counter() - start
        results[pert.name] = {"levels": [float(v) for v in pert.levels], "accuracy": accs, "unit": pert.unit,
                              "labels": [pert.label.format(v) for v in pert.levels], "n": len(labels),
                              "input": RAW_INPUT, "seconds": round(seconds, 2)}
        if pert.name in prepared:
            results[pert.name].update(accuracy_prepared=accs_prep, no_digit_found_prepared=missed,
                                      prepared_input=PREPARED_INPUT, seconds_prepared=round(seconds_prep, 2))
    return results
