"""The Predictor: a trained run directory turned into batched predictions from raw images.

Usage::

    predictor = Predictor.from_run("runs/20261121-101500-cnn-default")
    proba = predictor.predict_proba(images_uint8)        # (N, 28, 28) uint8 -> (N, 10), calibrated
    labels = predictor.predict(images_uint8)

One object for torch and classical (scikit-learn) runs. Inputs are images in the model's own
convention (MNIST: 28x28, light ink on dark); they go through the run's preprocessing spec by the
same code path training used. When ``digitlab evaluate`` has fitted a temperature on the
validation split (``calibration.json``), probabilities are calibrated with it unless asked not to.
"""

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.special
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from digitlab.core.errors import DigitlabError
from digitlab.core.fileio import atomic_write_text
from digitlab.core.rundir import RunDir
from digitlab.data.errors import DataError
from digitlab.data.preprocess import PreprocessSpec
from digitlab.models.classical import ClassicalModel
from digitlab.models.registry import ModelError, create_model, make_config
from digitlab.models.runtime import predict_logits, resolve_device

CALIBRATION = "calibration.json"
_LOG_FLOOR = 1e-12  # probabilities of 0 (k-NN votes, forests) as finite log-probabilities


class PredictorError(DigitlabError):
    """A run directory whose model cannot be loaded, or images of the wrong shape."""


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling fitted on the validation split: ``softmax(logits / temperature)``."""

    temperature: float
    fitted_on: str
    n: int
    nll_before: float
    nll_after: float


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float64)."""
    return scipy.special.softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


class Predictor:
    """Batched predictions of one trained model (torch or classical) on raw uint8 images."""

    def __init__(self, *, name: str, kind: str, model: Any, spec: PreprocessSpec, class_names: list[str],
                 info: dict[str, Any], device: torch.device, calibration: Calibration | None = None,
                 source: Path | None = None, channels_last: bool = False) -> None:
        self.name = name
        self.kind = kind
        self.model = model
        self.spec = spec
        self.class_names = class_names
        self.info = info
        self.device = device
        self.calibration = calibration
        self.source = source
        self.channels_last = channels_last

    @classmethod
    def from_run(cls, path: str | os.PathLike[str], *, device: str = "auto") -> "Predictor":
        """Load the model a run directory holds.

        Raises:
            PredictorError: no model.json, or weights missing, unreadable or not matching it.
        """
        run = RunDir(path)
        info_path = run.file(RunDir.MODEL_JSON)
        if not info_path.is_file():
            raise PredictorError(f"{run.path}: no {RunDir.MODEL_JSON} (not a finished run directory)")
        try:
            info = json.loads(info_path.read_text())
            name, kind, args = info["name"], info["kind"], dict(info["args"])
            spec = PreprocessSpec.model_validate(info["preprocess"])
            class_names = [str(c) for c in info["class_names"]]
        except (ValueError, KeyError, TypeError) as e:
            raise PredictorError(f"{info_path}: not a digitlab model.json ({type(e).__name__}: {e})") from None
        dev = resolve_device(device) if kind != "classical" else torch.device("cpu")  # scikit-learn runs on CPU
        # a network trained channels-last runs faster that way (oneDNN's convolutions): measured 2x on CPU
        channels_last = kind != "classical" and _trained_channels_last(run)
        try:
            if kind == "classical":
                model: Any = ClassicalModel.load(run.file("model.skops"), name, make_config(name, **args))
            else:
                weights = run.file(RunDir.WEIGHTS)
                if not weights.is_file():
                    raise PredictorError(f"{run.path}: no {RunDir.WEIGHTS}")
                model = create_model(name, **args)
                try:
                    model.load_state_dict(load_file(str(weights)))
                except (RuntimeError, OSError, SafetensorError) as e:
                    first = str(e).strip().splitlines()[0]
                    raise PredictorError(f"{weights}: cannot load the {name} weights model.json describes: "
                                         f"{first}") from None
                model.to(dev).eval()
                if channels_last:
                    model.to(memory_format=torch.channels_last)
        except (ModelError, DataError) as e:
            raise PredictorError(str(e)) from None
        return cls(name=name, kind=kind, model=model, spec=spec, class_names=class_names, info=info, device=dev,
                   calibration=read_calibration(run.path), source=run.path, channels_last=channels_last)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def _check(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3 or tuple(images.shape[1:]) != tuple(self.spec.input_size):
            h, w = self.spec.input_size
            raise PredictorError(f"images of shape {images.shape}: the model takes (N, {h}, {w})")
        if images.dtype != np.uint8:
            raise PredictorError(f"images of dtype {images.dtype}: the model takes uint8 pixels (0-255)")
        return images

    @property
    def has_probabilities(self) -> bool:
        """A classical model whose scores are probabilities (k-NN, forest, logistic), not a decision function."""
        return self.kind == "classical" and hasattr(self.model.pipeline, "predict_proba")

    def scores(self, images: np.ndarray, *, batch_size: int = 1000) -> np.ndarray:
        """Raw per-class scores ``(N, n_classes)``, what ROC and precision-recall curves rank by: a
        network's logits; a classical model's probabilities, or its decision function (SVM)."""
        images = self._check(images)
        if self.kind == "classical":
            return np.asarray(self.model.predict_scores(images), dtype=np.float64)
        return predict_logits(self.model, images, self.spec, device=self.device, batch_size=batch_size,
                              channels_last=self.channels_last).numpy()

    def to_logits(self, scores: np.ndarray) -> np.ndarray:
        """Scores on a logit scale, for softmax and temperature scaling (probabilities become floored
        log-probabilities; logits and decision functions stay as they are)."""
        if self.has_probabilities:
            return np.log(np.clip(scores, _LOG_FLOOR, 1.0))
        return np.asarray(scores, dtype=np.float64)

    def logits(self, images: np.ndarray, *, batch_size: int = 1000) -> np.ndarray:
        """Uncalibrated logits ``(N, n_classes)`` (see ``to_logits``)."""
        return self.to_logits(self.scores(images, batch_size=batch_size))

    def proba_from_scores(self, scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        """Probabilities from ``scores``: ``softmax(logits / temperature)``, except that at temperature 1 a
        classical model's own probabilities are returned exactly as it gave them (a softmax of floored
        log-probabilities would shift rows by ~1e-12 and break the ties k-NN votes make)."""
        if temperature == 1.0 and self.has_probabilities:
            return np.asarray(scores, dtype=np.float64)
        return softmax(self.to_logits(scores), temperature)

    def predict_proba(self, images: np.ndarray, *, calibrated: bool = True, batch_size: int = 1000) -> np.ndarray:
        """Class probabilities ``(N, n_classes)``; temperature-scaled when the run has a calibration."""
        t = self.calibration.temperature if calibrated and self.calibration else 1.0
        return self.proba_from_scores(self.scores(images, batch_size=batch_size), t)

    def predict(self, images: np.ndarray, *, batch_size: int = 1000) -> np.ndarray:
        """Predicted class indices ``(N,)``."""
        return self.scores(images, batch_size=batch_size).argmax(axis=1)


def _trained_channels_last(run: RunDir) -> bool:
    try:
        cfg = yaml.safe_load(run.file(RunDir.CONFIG).read_text()) or {}
        return bool((cfg.get("train") or {}).get("channels_last", False))
    except (OSError, yaml.YAMLError, AttributeError):
        return False


def read_calibration(run_path: str | os.PathLike[str]) -> Calibration | None:
    """The run's fitted temperature, or None when it has none (or an unreadable file)."""
    path = Path(run_path) / CALIBRATION
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return Calibration(**{k: data[k] for k in ("temperature", "fitted_on", "n", "nll_before", "nll_after")})
    except (ValueError, KeyError, TypeError):
        return None


def write_calibration(run_path: str | os.PathLike[str], calibration: Calibration) -> Path:
    """Store a fitted temperature in the run directory (atomically)."""
    path = Path(run_path) / CALIBRATION
    atomic_write_text(path, json.dumps(asdict(calibration), indent=2) + "\n")
    return path
