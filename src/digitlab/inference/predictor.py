"""The Predictor: a trained model turned into batched predictions, with rejection.

Usage::

    predictor = Predictor.from_run("runs/20261121-101500-cnn-default")   # torch or scikit-learn run
    predictor = Predictor.from_path("model.onnx")                        # ONNX file (onnxruntime)
    predictor = Predictor.from_path("hub-folder/")                       # hub folder (torch, else ONNX)
    out = predictor.predict(images_uint8, top_k=3)                       # (N, 28, 28) uint8
    out.labels, out.confidence, out.rejected, out.top(0)
    results = predictor.predict_images(["a.png", "b.jpg"])               # real images, prepared first

One object for torch, onnxruntime and classical (scikit-learn) backends. Inputs are images in the
model's own convention (MNIST: 28x28, light ink on dark); they go through the preprocessing spec by
the same code path training used. Real images (photos, scans, drawings) go through
``prepare_image`` first (``predict_images``). When ``digitlab evaluate`` has fitted a temperature on
the validation split (``calibration.json``), probabilities are calibrated with it, and a prediction
whose calibrated confidence is below the threshold chosen there (or ``min_confidence``) is
``rejected``.
"""

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
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
from digitlab.inference.formats import (
    HUB_CALIBRATION,
    HUB_CONFIG,
    HUB_ONNX,
    HUB_PREPROCESS,
    HUB_WEIGHTS,
    META_CALIBRATION,
    META_CLASS_NAMES,
    META_MODEL,
    META_PREPROCESS,
    ONNX_INPUT,
    ONNX_OUTPUT,
)
from digitlab.inference.prepare import Polarity, Prepared, prepare_image
from digitlab.models.classical import ClassicalModel
from digitlab.models.registry import ModelError, create_model, make_config
from digitlab.models.runtime import predict_logits, resolve_device

CALIBRATION = "calibration.json"
# A real image whose strokes, fitted into the 28x28 frame, are wider than this is a blob, not a digit:
# MNIST's widest 1% are 6.4 px (ink area over skeleton length; see prepare.WIDTH_OK).
MAX_STROKE = 8.0
_LOG_FLOOR = 1e-12  # probabilities of 0 (k-NN votes, forests) as finite log-probabilities


class PredictorError(DigitlabError):
    """A run directory whose model cannot be loaded, or images of the wrong shape."""


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling fitted on the validation split: ``softmax(logits / temperature)``, and the
    confidence below which a prediction is rejected (chosen on the same split; None: never)."""

    temperature: float
    fitted_on: str
    n: int
    nll_before: float
    nll_after: float
    threshold: float | None = None
    threshold_rule: str | None = None


@dataclass(frozen=True)
class Predictions:
    """A batch of predictions: calibrated probabilities, and which are rejected."""

    class_names: list[str]
    proba: np.ndarray  # (N, n_classes), calibrated when the model has a calibration
    rejected: np.ndarray  # (N,) bool: confidence below the threshold
    threshold: float | None
    k: int = 3

    @property
    def indices(self) -> np.ndarray:
        return self.proba.argmax(axis=1)

    @property
    def labels(self) -> list[str]:
        return [self.class_names[i] for i in self.indices]

    @property
    def confidence(self) -> np.ndarray:
        return self.proba.max(axis=1)

    def __len__(self) -> int:
        return len(self.proba)

    def top(self, i: int, k: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` most likely classes of item ``i`` with their probabilities, best first."""
        order = np.argsort(-self.proba[i], kind="stable")[: k or self.k]
        return [(self.class_names[j], float(self.proba[i, j])) for j in order]

    def record(self, i: int) -> dict[str, Any]:
        """Item ``i`` as JSON-ready data."""
        return {"label": self.class_names[int(self.indices[i])], "confidence": float(self.confidence[i]),
                "rejected": bool(self.rejected[i]),
                "top_k": [{"label": c, "probability": p} for c, p in self.top(i)],
                "probabilities": {c: float(p) for c, p in zip(self.class_names, self.proba[i], strict=True)}}


@dataclass(frozen=True)
class ImagePrediction:
    """One real image: how it was prepared, and what the model read (None when no digit was found)."""

    source: str
    prepared: Prepared
    label: str | None = None
    confidence: float = 0.0
    rejected: bool = True  # no digit found is rejected too
    reason: str | None = "no digit found"  # why rejected: "no digit found" or "low confidence"
    top_k: list[tuple[str, float]] = field(default_factory=list)
    proba: np.ndarray | None = None

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "found": self.prepared.found, "label": self.label,
                "confidence": round(self.confidence, 6), "rejected": self.rejected, "reason": self.reason,
                "top_k": [{"label": c, "probability": round(p, 6)} for c, p in self.top_k],
                "inverted": self.prepared.inverted, "box": list(self.prepared.box) if self.prepared.box else None,
                "notes": list(self.prepared.notes)}


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float64)."""
    return scipy.special.softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


class Predictor:
    """Batched predictions of one trained model (torch, onnxruntime or classical) on raw uint8 images."""

    def __init__(self, *, name: str, kind: str, model: Any, spec: PreprocessSpec, class_names: list[str],
                 info: dict[str, Any], device: torch.device, calibration: Calibration | None = None,
                 source: Path | None = None, channels_last: bool = False, backend: str | None = None) -> None:
        self.name = name
        self.kind = kind
        self.backend = backend or ("classical" if kind == "classical" else "torch")
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
                model = _load_torch(name, args, run.file(RunDir.WEIGHTS), dev)
                if channels_last:
                    model.to(memory_format=torch.channels_last)
        except (ModelError, DataError) as e:
            raise PredictorError(str(e)) from None
        return cls(name=name, kind=kind, model=model, spec=spec, class_names=class_names, info=info, device=dev,
                   calibration=read_calibration(run.path), source=run.path, channels_last=channels_last)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], *, backend: str = "auto", device: str = "auto") -> "Predictor":
        """Load a model from a run directory, an ONNX file or a hub folder (``digitlab export``).

        Args:
            backend: "auto" (torch where weights exist, else onnxruntime), "torch" or "onnx".

        Raises:
            PredictorError: nothing loadable at ``path``, or the backend asked for is not there.
        """
        p = Path(path)
        if backend not in ("auto", "torch", "onnx"):
            raise PredictorError(f"backend {backend!r}: choose from auto, torch, onnx")
        if p.is_file() and p.suffix == ".onnx":
            return cls._from_onnx(p)
        if not p.is_dir():
            raise PredictorError(f"{p}: no such model (want a run directory, a .onnx file or a hub folder)")
        if (p / RunDir.MODEL_JSON).is_file():
            if backend == "onnx":
                raise PredictorError(f"{p}: a run directory loads with torch; export it first (digitlab export)")
            return cls.from_run(p, device=device)
        if (p / HUB_CONFIG).is_file():
            if backend != "onnx" and (p / HUB_WEIGHTS).is_file():
                return cls._from_hub(p, device=device)
            if backend != "torch" and (p / HUB_ONNX).is_file():
                return cls._from_onnx(p / HUB_ONNX, calibration_dir=p)
            raise PredictorError(f"{p}: a hub folder without {HUB_WEIGHTS if backend == 'torch' else HUB_ONNX}")
        raise PredictorError(f"{p}: neither a run directory ({RunDir.MODEL_JSON}) nor a hub folder ({HUB_CONFIG})")

    @classmethod
    def _from_hub(cls, folder: Path, *, device: str) -> "Predictor":
        try:
            config = json.loads((folder / HUB_CONFIG).read_text())
            name, kind, args = config["name"], config["kind"], dict(config["args"])
            class_names = [str(c) for c in config["class_names"]]
            spec = PreprocessSpec.from_json((folder / HUB_PREPROCESS).read_text(), source=str(folder / HUB_PREPROCESS))
        except (OSError, ValueError, KeyError, TypeError, DataError) as e:
            raise PredictorError(f"{folder}: not a digitlab hub folder ({' '.join(str(e).split())})") from None
        if kind == "classical":
            raise PredictorError(f"{folder}: a classical model has no torch weights")
        dev = resolve_device(device)
        model = _load_torch(name, args, folder / HUB_WEIGHTS, dev)
        info = {"name": name, "kind": kind, "args": args, "class_names": class_names, "preprocess": spec.model_dump()}
        return cls(name=name, kind=kind, model=model, spec=spec, class_names=class_names, info=info, device=dev,
                   calibration=read_calibration(folder, HUB_CALIBRATION), source=folder)

    @classmethod
    def _from_onnx(cls, path: Path, *, calibration_dir: Path | None = None) -> "Predictor":
        import onnxruntime as ort  # imported here: only ONNX users pay for it

        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3  # warnings about unused initializers are not the user's problem
            options.intra_op_num_threads = torch.get_num_threads()  # threads chosen, as for torch (2 here: 1.4x)
            session = ort.InferenceSession(str(path), options, providers=_onnx_providers(ort))
            meta = session.get_modelmeta().custom_metadata_map
            spec = PreprocessSpec.from_json(meta[META_PREPROCESS], source=f"{path} metadata")
            class_names = [str(c) for c in json.loads(meta[META_CLASS_NAMES])]
            model_info = json.loads(meta.get(META_MODEL, "{}"))
        except KeyError as e:
            raise PredictorError(f"{path}: an ONNX file without digitlab's metadata ({e.args[0]}); "
                                 "export it with `digitlab export`") from None
        except (ValueError, DataError) as e:
            raise PredictorError(f"{path}: unreadable digitlab metadata ({' '.join(str(e).split())})") from None
        except Exception as e:  # onnxruntime raises its own kinds for a corrupt or foreign file
            raise PredictorError(f"{path}: not a loadable ONNX model ({str(e).strip().splitlines()[0]})") from None
        calibration = _calibration_from_json(meta.get(META_CALIBRATION))
        if calibration_dir is not None:
            calibration = read_calibration(calibration_dir, HUB_CALIBRATION) or calibration
        info = {**model_info, "class_names": class_names, "preprocess": spec.model_dump()}
        return cls(name=str(model_info.get("name", path.stem)), kind=str(model_info.get("kind", "torch")),
                   model=session, spec=spec, class_names=class_names, info=info, device=torch.device("cpu"),
                   calibration=calibration, source=path, backend="onnx")

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
        if self.backend == "classical":
            return np.asarray(self.model.predict_scores(images), dtype=np.float64)
        if self.backend == "onnx":
            out = [self.model.run([ONNX_OUTPUT], {ONNX_INPUT: self.spec.normalize_array(images[i:i + batch_size])})[0]
                   for i in range(0, len(images), batch_size)]
            return np.concatenate(out) if out else np.empty((0, self.n_classes), np.float32)
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

    def classify(self, images: np.ndarray, *, batch_size: int = 1000) -> np.ndarray:
        """Predicted class indices ``(N,)`` (no calibration, no rejection)."""
        return self.scores(images, batch_size=batch_size).argmax(axis=1)

    @property
    def threshold(self) -> float | None:
        """The confidence below which a prediction is rejected by default (from validation), or None."""
        return self.calibration.threshold if self.calibration else None

    def predict(self, images: np.ndarray, *, top_k: int = 3, min_confidence: float | None = None,
                batch_size: int = 1000) -> Predictions:
        """Calibrated predictions of model-ready images ``(N, H, W)`` uint8, with rejection.

        Args:
            min_confidence: reject below this calibrated confidence (default: the run's threshold
                chosen on validation; none when the run was not evaluated).
        """
        threshold = self.threshold if min_confidence is None else min_confidence
        proba = self.predict_proba(images, batch_size=batch_size)
        rejected = proba.max(axis=1) < threshold if threshold is not None else np.zeros(len(proba), bool)
        return Predictions(self.class_names, proba, rejected, threshold, max(1, min(top_k, self.n_classes)))

    def prepare(self, source: Any, *, polarity: Polarity = "auto", deskew: bool = False,
                fix_stroke: bool = True) -> Prepared:
        """A real image prepared for this model (its spec): see ``digitlab.inference.prepare``."""
        return prepare_image(source, self.spec, polarity=polarity, deskew=deskew, fix_stroke=fix_stroke)

    def predict_images(self, sources: Iterable[Any], *, names: Sequence[str] | None = None, top_k: int = 3,
                       min_confidence: float | None = None, polarity: Polarity = "auto", deskew: bool = False,
                       fix_stroke: bool = True) -> list[ImagePrediction]:
        """Real images (paths, bytes, PIL images, arrays) -> one ``ImagePrediction`` each, in one batch.

        Raises:
            ImageError: an input that is not a readable image (the first one met).
        """
        items = list(sources)
        labels = list(names) if names is not None else [str(s) if isinstance(s, str | os.PathLike) else f"#{i}"
                                                        for i, s in enumerate(items)]
        prepared = [self.prepare(s, polarity=polarity, deskew=deskew, fix_stroke=fix_stroke) for s in items]
        return self.predict_prepared(prepared, names=labels, top_k=top_k, min_confidence=min_confidence)

    def predict_prepared(self, prepared: Sequence[Prepared], *, names: Sequence[str], top_k: int = 3,
                         min_confidence: float | None = None) -> list[ImagePrediction]:
        """Classify already prepared images in one batch (those without a digit are rejected as such)."""
        found = [i for i, p in enumerate(prepared) if p.found]
        out = [ImagePrediction(names[i], p) for i, p in enumerate(prepared)]
        if found:
            batch = np.stack([prepared[i].image for i in found])
            preds = self.predict(batch, top_k=top_k, min_confidence=min_confidence)
            for j, i in enumerate(found):
                blob = (prepared[i].stroke or 0.0) > MAX_STROKE
                rejected = bool(preds.rejected[j]) or blob
                reason = ("low confidence" if preds.rejected[j] else
                          f"not digit-like (strokes {prepared[i].stroke:.0f} px wide: a blob?)" if blob else None)
                out[i] = ImagePrediction(names[i], prepared[i], preds.labels[j], float(preds.confidence[j]), rejected,
                                         reason, preds.top(j), preds.proba[j])
        return out


def _trained_channels_last(run: RunDir) -> bool:
    try:
        cfg = yaml.safe_load(run.file(RunDir.CONFIG).read_text()) or {}
        return bool((cfg.get("train") or {}).get("channels_last", False))
    except (OSError, yaml.YAMLError, AttributeError):
        return False


def _load_torch(name: str, args: dict[str, Any], weights: Path, device: torch.device) -> torch.nn.Module:
    if not weights.is_file():
        raise PredictorError(f"{weights.parent}: no {weights.name}")
    model = create_model(name, **args)
    try:
        model.load_state_dict(load_file(str(weights)))
    except (RuntimeError, OSError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0]
        raise PredictorError(f"{weights}: cannot load the {name} weights its config describes: {first}") from None
    return model.to(device).eval()


def _onnx_providers(ort: Any) -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available


def _calibration_from_json(text: str | None) -> Calibration | None:
    if not text:
        return None
    try:
        data = json.loads(text)
        return Calibration(**{k: data[k] for k in ("temperature", "fitted_on", "n", "nll_before", "nll_after")},
                           threshold=data.get("threshold"), threshold_rule=data.get("threshold_rule"))
    except (ValueError, KeyError, TypeError):
        return None


def read_calibration(folder: str | os.PathLike[str], name: str = CALIBRATION) -> Calibration | None:
    """The fitted temperature (and rejection threshold) stored in ``folder``, or None when it has none
    (or an unreadable file)."""
    path = Path(folder) / name
    if not path.is_file():
        return None
    try:
        return _calibration_from_json(path.read_text())
    except OSError:
        return None


def write_calibration(run_path: str | os.PathLike[str], calibration: Calibration) -> Path:
    """Store a fitted temperature in the run directory (atomically)."""
    path = Path(run_path) / CALIBRATION
    atomic_write_text(path, json.dumps(asdict(calibration), indent=2) + "\n")
    return path
