"""The Predictor: a trained model turned into batched predictions, with rejection.

Usage::

    predictor = Predictor.from_run("runs/20261121-101500-cnn-default")   # torch or scikit-learn run
    predictor = Predictor.from_path("model.onnx")                        # ONNX file (onnxruntime)
    predictor = Predictor.from_path("hub-folder/")                       # hub folder (torch, else ONNX)
    out = predictor.predict(images_uint8, top_k=3)                       # (N, 28, 28) uint8
    out.labels, out.confidence, out.rejected, out.top(0), out.nondigit_score
    results = predictor.predict_images(["a.png", "b.jpg"])               # real images, prepared first

One object for torch, onnxruntime and classical (scikit-learn) backends. Inputs are images in the
model's own convention (MNIST: 28x28, light ink on dark); they go through the preprocessing spec by
the same code path training used. Real images (photos, scans, drawings) go through
``prepare_image`` first (``predict_images``). When ``digitlab evaluate`` has fitted a temperature on
the validation split (``calibration.json``), probabilities are calibrated with it, and a prediction
whose calibrated confidence is below the threshold chosen there (or ``min_confidence``) is
``rejected``. When evaluate has also fitted a non-digit detector (``detector.safetensors``, see
``digitlab.inference.detector``; networks only), a prediction is rejected too when the detector's score
is above its threshold: ``confidence < threshold OR nondigit_score > detector_threshold``, both chosen
on validation digits. ``min_confidence`` replaces the confidence threshold only; the detector stays.
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
from digitlab.inference.detector import DETECTOR_FILE, DetectorError, NonDigitDetector, load_detector
from digitlab.inference.formats import (
    HUB_CALIBRATION,
    HUB_CONFIG,
    HUB_DETECTOR,
    HUB_ONNX,
    HUB_PREPROCESS,
    HUB_WEIGHTS,
    META_CALIBRATION,
    META_CLASS_NAMES,
    META_MODEL,
    META_PREPROCESS,
    ONNX_INPUT,
    ONNX_OUTPUT,
    ONNX_SCORE,
)
from digitlab.inference.prepare import Polarity, Prepared, prepare_image
from digitlab.models.classical import ClassicalModel
from digitlab.models.registry import ModelError, create_model, make_config
from digitlab.models.runtime import has_features as model_has_features
from digitlab.models.runtime import predict_features, predict_logits, resolve_device

CALIBRATION = "calibration.json"
# A real image whose strokes, fitted into the 28x28 frame, are wider than this is a blob, not a digit:
# MNIST's widest 1% are 6.4 px (ink area over skeleton length; see prepare.WIDTH_OK).
MAX_STROKE = 8.0
REASON_LOW_CONFIDENCE = "low confidence"
REASON_DETECTOR = "not digit-like (detector)"
_LOG_FLOOR = 1e-12  # probabilities of 0 (k-NN votes, forests) as finite log-probabilities


class PredictorError(DigitlabError):
    """A run directory whose model cannot be loaded, or images of the wrong shape."""


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling fitted on the validation split: ``softmax(logits / temperature)``, and the
    confidence below which a prediction is rejected (chosen on the same split; None: never).

    With a non-digit detector, ``threshold`` is the (relaxed) confidence threshold of the combined rule,
    ``detector_threshold`` the score above which the detector rejects, and ``threshold_without_detector``
    the confidence threshold to use alone where the detector is not there (rejecting as much of
    validation as the combined rule). Calibrations written before the detector have neither."""

    temperature: float
    fitted_on: str
    n: int
    nll_before: float
    nll_after: float
    threshold: float | None = None
    threshold_rule: str | None = None
    detector_threshold: float | None = None
    threshold_without_detector: float | None = None


@dataclass(frozen=True)
class Predictions:
    """A batch of predictions: calibrated probabilities, and which are rejected."""

    class_names: list[str]
    proba: np.ndarray  # (N, n_classes), calibrated when the model has a calibration
    threshold: float | None
    k: int = 3
    nondigit_score: np.ndarray | None = None  # (N,) the detector's score (higher: less digit-like), or None
    detector_threshold: float | None = None

    @property
    def low_confidence(self) -> np.ndarray:
        """(N,) bool: calibrated confidence below the threshold."""
        return self.confidence < self.threshold if self.threshold is not None else np.zeros(len(self), bool)

    @property
    def not_digit_like(self) -> np.ndarray:
        """(N,) bool: the detector's score above its threshold (all False without a detector)."""
        if self.nondigit_score is None or self.detector_threshold is None:
            return np.zeros(len(self), bool)
        return self.nondigit_score > self.detector_threshold

    @property
    def rejected(self) -> np.ndarray:
        """(N,) bool: confidence below the threshold, or flagged by the detector."""
        return self.low_confidence | self.not_digit_like

    def reason(self, i: int) -> str | None:
        """Why item ``i`` is rejected (None when it is not)."""
        return (REASON_LOW_CONFIDENCE if self.low_confidence[i] else REASON_DETECTOR if self.not_digit_like[i]
                else None)

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
                "nondigit_score": None if self.nondigit_score is None else float(self.nondigit_score[i]),
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
    # why rejected: "no digit found", "low confidence", "not digit-like (strokes N px wide: a blob?)" or
    # "not digit-like (detector)"
    reason: str | None = "no digit found"
    top_k: list[tuple[str, float]] = field(default_factory=list)
    proba: np.ndarray | None = None
    nondigit_score: float | None = None  # the detector's score, when the model has one

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "found": self.prepared.found, "label": self.label,
                "confidence": round(self.confidence, 6), "rejected": self.rejected, "reason": self.reason,
                "nondigit_score": None if self.nondigit_score is None else round(self.nondigit_score, 6),
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
                 source: Path | None = None, channels_last: bool = False, backend: str | None = None,
                 detector: NonDigitDetector | None = None) -> None:
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
        self.detector = detector  # torch backend; an ONNX graph carries its detector as a second output
        self._onnx_score = self.backend == "onnx" and ONNX_SCORE in {o.name for o in model.get_outputs()}

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
        detector = _load_detector(run.path / DETECTOR_FILE, model, spec, dev)
        return cls(name=name, kind=kind, model=model, spec=spec, class_names=class_names, info=info, device=dev,
                   calibration=read_calibration(run.path), source=run.path, channels_last=channels_last,
                   detector=detector)

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
                   calibration=read_calibration(folder, HUB_CALIBRATION), source=folder,
                   detector=_load_detector(folder / HUB_DETECTOR, model, spec, dev))

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
            return run_onnx(self.model, images, self.spec, [ONNX_OUTPUT], batch_size=batch_size)[0]
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

    @property
    def has_features(self) -> bool:
        """Whether the model is a torch network that returns its features (what a detector reads)."""
        return self.backend == "torch" and model_has_features(self.model)

    @property
    def has_detector(self) -> bool:
        """Whether a non-digit detector is loaded (torch) or in the graph (ONNX)."""
        return self.detector is not None or self._onnx_score

    def scores_and_nondigit(self, images: np.ndarray, *, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """Scores (as ``scores``) and the detector's non-digit scores ``(N,)``, in one pass.

        Raises:
            PredictorError: a model without a detector.
        """
        images = self._check(images)
        if self._onnx_score:
            logits, score = run_onnx(self.model, images, self.spec, [ONNX_OUTPUT, ONNX_SCORE], batch_size=batch_size)
            return logits, score
        if self.detector is None:
            raise PredictorError(f"{self.source or self.name}: no non-digit detector (`digitlab evaluate` fits one)")
        logits, score = predict_features(self.model, images, self.spec, device=self.device, batch_size=batch_size,
                                         channels_last=self.channels_last, head=self.detector)
        return logits.numpy(), score.numpy()

    def features(self, images: np.ndarray, *, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """Logits ``(N, n_classes)`` and the network's features ``(N, F)`` (``forward_features``), batched.

        Raises:
            PredictorError: not a torch network with features (classical models, ONNX files).
        """
        images = self._check(images)
        if not self.has_features:
            raise PredictorError(f"{self.name}: a {self.backend} model has no features to read")
        logits, feats = predict_features(self.model, images, self.spec, device=self.device, batch_size=batch_size,
                                         channels_last=self.channels_last)
        return logits.numpy(), feats.numpy()

    def classify(self, images: np.ndarray, *, batch_size: int = 1000) -> np.ndarray:
        """Predicted class indices ``(N,)`` (no calibration, no rejection)."""
        return self.scores(images, batch_size=batch_size).argmax(axis=1)

    @property
    def threshold(self) -> float | None:
        """The confidence below which a prediction is rejected by default (from validation), or None. With
        the detector, the relaxed threshold of the combined rule; a calibration that names a detector this
        Predictor lacks gives the threshold chosen for confidence alone."""
        cal = self.calibration
        if cal is None:
            return None
        if cal.detector_threshold is not None and not self.has_detector and cal.threshold_without_detector is not None:
            return cal.threshold_without_detector
        return cal.threshold

    @property
    def detector_threshold(self) -> float | None:
        """The non-digit score above which a prediction is rejected (chosen on validation), or None when
        the model has no detector or no threshold for it."""
        cal = self.calibration
        return cal.detector_threshold if cal is not None and self.has_detector else None

    def predict(self, images: np.ndarray, *, top_k: int = 3, min_confidence: float | None = None,
                batch_size: int = 1000) -> Predictions:
        """Calibrated predictions of model-ready images ``(N, H, W)`` uint8, with rejection.

        Args:
            min_confidence: reject below this calibrated confidence (default: the run's threshold
                chosen on validation; none when the run was not evaluated). The non-digit detector,
                when the run has one, rejects by its own threshold either way.
        """
        threshold = self.threshold if min_confidence is None else min_confidence
        t_det = self.detector_threshold
        nondigit = None
        if t_det is not None:
            scores, nondigit = self.scores_and_nondigit(images, batch_size=batch_size)
        else:
            scores = self.scores(images, batch_size=batch_size)
        proba = self.proba_from_scores(scores, self.calibration.temperature if self.calibration else 1.0)
        return Predictions(self.class_names, proba, threshold, max(1, min(top_k, self.n_classes)), nondigit, t_det)

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
            low, flagged = preds.low_confidence, preds.not_digit_like
            for j, i in enumerate(found):
                blob = (prepared[i].stroke or 0.0) > MAX_STROKE
                rejected = bool(preds.rejected[j]) or blob
                reason = (REASON_LOW_CONFIDENCE if low[j] else
                          f"not digit-like (strokes {prepared[i].stroke:.0f} px wide: a blob?)" if blob else
                          REASON_DETECTOR if flagged[j] else None)
                score = None if preds.nondigit_score is None else float(preds.nondigit_score[j])
                out[i] = ImagePrediction(names[i], prepared[i], preds.labels[j], float(preds.confidence[j]), rejected,
                                         reason, preds.top(j), preds.proba[j], score)
        return out


def run_onnx(session: Any, images: np.ndarray, spec: PreprocessSpec, outputs: list[str], *,
             batch_size: int = 1000) -> list[np.ndarray]:
    """The named outputs of an ONNX Runtime session for raw uint8 images (normalised by ``spec``, the same
    code path as the torch backend), run ``batch_size`` at a time and concatenated, in ``outputs``' order."""
    runs = [session.run(outputs, {ONNX_INPUT: spec.normalize_array(images[i:i + batch_size])})
            for i in range(0, len(images), batch_size)]
    if not runs:
        return [_empty_output(session, name) for name in outputs]
    return [np.concatenate([r[k] for r in runs]) for k in range(len(outputs))]


def _empty_output(session: Any, name: str) -> np.ndarray:
    """A zero-row array shaped like the session's output ``name`` (its non-batch dimensions as declared)."""
    shape = next(o.shape for o in session.get_outputs() if o.name == name)
    return np.empty((0, *(d if isinstance(d, int) else 0 for d in shape[1:])), np.float32)


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


def _load_detector(path: Path, model: Any, spec: PreprocessSpec, device: torch.device) -> NonDigitDetector | None:
    """The non-digit detector stored beside a network's weights, or None when there is none (or the model
    has no features to give it).

    Raises:
        PredictorError: an unreadable detector file, or one made for other features.
    """
    if not path.is_file() or not model_has_features(model):
        return None
    try:
        detector = load_detector(path, device=device)
    except DetectorError as e:
        raise PredictorError(str(e)) from None
    with torch.no_grad():  # one blank image: the features must be as wide as the detector reads
        was_training = model.training
        model.eval()
        _, feats = model.forward_features(torch.zeros(1, 1, *spec.input_size, device=device))
        model.train(was_training)
    if feats.shape[1] != detector.n_features:
        raise PredictorError(f"{path}: a detector for {detector.n_features} features; this model gives "
                             f"{feats.shape[1]} (run `digitlab evaluate` again)")
    return detector


def _onnx_providers(ort: Any) -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available


def _calibration_from_json(text: str | None) -> Calibration | None:
    if not text:
        return None
    try:
        data = json.loads(text)
        return Calibration(**{k: data[k] for k in ("temperature", "fitted_on", "n", "nll_before", "nll_after")},
                           threshold=data.get("threshold"), threshold_rule=data.get("threshold_rule"),
                           detector_threshold=data.get("detector_threshold"),
                           threshold_without_detector=data.get("threshold_without_detector"))
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
    data = asdict(calibration)
    for key in ("detector_threshold", "threshold_without_detector"):  # as before the detector, without one
        if data[key] is None:
            del data[key]
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path
