"""The preprocessing spec: how pixels become model inputs, saved with every model.

Usage::

    spec = compute_preprocess_spec(train_images)           # mean/std of the training split only
    spec.to_json()  /  PreprocessSpec.from_json(text)      # round-trips exactly
    x = spec.normalize(torch.from_numpy(batch_uint8))      # (B, 28, 28) uint8 -> (B, 1, 28, 28) float32
    x = spec.normalize_array(batch_uint8)                  # the same for NumPy arrays

Training, evaluation, prediction, the ONNX export and the service all feed a model through one
spec, so a model is never fed differently at inference than in training.
"""

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from digitlab.core.errors import describe_validation_error
from digitlab.data.errors import DataError

# MNIST's own convention: a bright digit on a dark background, fitted into a 20x20 box with its
# aspect kept and placed in the 28x28 frame by its centre of mass.
MNIST_FIT_BOX = 20


class PreprocessSpec(BaseModel):
    """What a model expects and how a raw image is turned into it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: tuple[int, int] = (28, 28)
    channels: int = 1
    polarity: Literal["light-on-dark", "dark-on-light"] = "light-on-dark"
    scale: float = Field(1 / 255, description="applied to raw uint8 pixels before normalising")
    mean: float = Field(description="mean of scaled pixels over the training split")
    std: float = Field(gt=0, description="std of scaled pixels over the training split")
    fit_box: int = Field(MNIST_FIT_BOX, description="longest side of the ink after resizing, px")
    center: Literal["mass", "box"] = "mass"
    dataset: str | None = None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "preprocessing spec") -> "PreprocessSpec":
        """Parse what ``to_json`` wrote.

        Args:
            text: the JSON.
            source: what the text came from (e.g. the ``model.json`` path), to start the message.

        Raises:
            DataError: bad JSON, an unknown field or an invalid value; one line naming each problem.
        """
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            raise DataError(" ".join(f"{source}: {describe_validation_error(e)}".split())) from None

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` or ``(B, 1, H, W)`` raw pixels -> ``(B, 1, H, W)`` float32, normalised.

        Returns a new tensor; ``images`` is never modified (a float32 input is copied, not reused).
        """
        if images.dim() == 3:
            images = images.unsqueeze(1)
        # (x * scale - mean) / std as one multiply and one subtract, in place on the one new tensor
        # that copy=True guarantees (uint8 -> float32 converts while copying: a single allocation).
        a, b = self._affine
        return images.to(torch.float32, copy=True).mul_(a).sub_(b)

    def normalize_array(self, images: np.ndarray) -> np.ndarray:
        """``normalize`` for NumPy arrays: the ONNX Runtime backend wakes no torch thread pool
        (docs/decisions.md#onnx-runtime-threads)."""
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[:, None]
        a, b = self._affine
        out = x.astype(np.float32)
        out *= np.float32(a)
        out -= np.float32(b)
        return out

    @property
    def _affine(self) -> tuple[float, float]:
        return self.scale / self.std, self.mean / self.std

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """Raw pixels -> ``(B, 1, H, W)`` float32 in [0, 1] (the space augmentation works in).

        Returns a new tensor that the caller (augmentation) may modify; ``images`` is left as it was.
        """
        if images.dim() == 3:
            images = images.unsqueeze(1)
        return images.to(torch.float32, copy=True).mul_(self.scale)

    def standardize(self, x_unit: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> normalised model input, in place (pass a tensor ``to_unit`` made)."""
        return x_unit.sub_(self.mean).div_(self.std)


def compute_preprocess_spec(train_images: np.ndarray, *, dataset: str | None = None) -> PreprocessSpec:
    """Mean and std of ``train_images`` (raw uint8) after scaling by 1/255.

    Pass the training split only: statistics from validation or test data leak into the model.
    Computed from the 256-bin histogram, so it is exact and makes no float copy of the data.

    Raises:
        DataError: the images are not uint8 or are empty.
    """
    x = np.asarray(train_images)
    if x.dtype != np.uint8 or x.size == 0:
        raise DataError(f"preprocessing statistics need non-empty uint8 images, got {x.dtype} {x.shape}")
    hist = np.bincount(x.reshape(-1), minlength=256).astype(np.float64)
    scale = 1 / 255
    values = np.arange(256, dtype=np.float64) * scale
    n = hist.sum()
    mean = float((hist * values).sum() / n)
    var = max(float((hist * values**2).sum() / n) - mean * mean, 0.0)
    return PreprocessSpec(scale=scale, mean=mean, std=float(np.sqrt(var)) or 1.0, dataset=dataset)
