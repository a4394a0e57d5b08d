"""Where and how a model runs: device choice, autocast, batched prediction from raw images.

Usage::

    device = resolve_device("auto")                      # CUDA when present, else CPU
    logits = predict_logits(model, images_uint8, spec, device=device)
    logits, features = predict_features(model, images_uint8, spec, device=device)   # networks with features

Shared by training (validation, test) and inference (the Predictor): one code path from raw
uint8 images through the preprocessing spec to logits.
"""

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from digitlab.core.config import ConfigError
from digitlab.data.preprocess import PreprocessSpec


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU.

    Raises:
        ConfigError: an unknown device name, or CUDA asked for on a machine without it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"bad device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: this machine has no CUDA device (use auto or cpu)")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where it pays: on CUDA with bf16 support under ``auto``, or when asked for."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None  # fp32 on CPU: bf16 was slower for these small models (docs/decisions.md#precision)


def has_features(model: object) -> bool:
    """Whether ``model`` is a network that returns its features (``forward_features(x) -> (logits, features)``)."""
    return isinstance(model, nn.Module) and callable(getattr(model, "forward_features", None))


def _model_inputs(images: np.ndarray | torch.Tensor, spec: PreprocessSpec, device: torch.device, batch_size: int,
                  channels_last: bool) -> Iterator[torch.Tensor]:
    """Raw uint8 images as normalised model inputs on ``device``, ``batch_size`` at a time."""
    x_all = torch.as_tensor(images)
    for start in range(0, len(x_all), batch_size):
        x = spec.normalize(x_all[start : start + batch_size].to(device))
        yield x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray | torch.Tensor, spec: PreprocessSpec, *,
                   device: torch.device, batch_size: int = 1000, amp: torch.dtype | None = None,
                   channels_last: bool = False) -> torch.Tensor:
    """Logits ``(N, n_classes)`` (float32, on CPU) for raw uint8 images, batched."""
    model.eval()
    out = []
    for x in _model_inputs(images, spec, device, batch_size, channels_last):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def predict_features(model: nn.Module, images: np.ndarray | torch.Tensor, spec: PreprocessSpec, *,
                     device: torch.device, batch_size: int = 1000, channels_last: bool = False,
                     head: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, n_classes)`` and features ``(N, F)`` (float32, on CPU) of raw uint8 images, batched, in
    one pass of ``model.forward_features``. With ``head`` (a module taking ``(features, logits)``), its output
    ``(N, ...)`` comes back in place of the features: a detector's scores, without keeping every feature."""
    model.eval()
    logits, features = [], []
    for x in _model_inputs(images, spec, device, batch_size, channels_last):
        z, f = model.forward_features(x)  # type: ignore[operator]
        if head is not None:
            f = head(f, z)
        logits.append(z.float().cpu())
        features.append(f.float().cpu())
    if not logits:
        return torch.empty(0), torch.empty(0)
    return torch.cat(logits), torch.cat(features)
