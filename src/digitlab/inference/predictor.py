"""The Predictor: a trained model (torch, ONNX or scikit-learn) and its rejection policy, as batched predictions.

Usage::

    predictor = Predictor.from_path("runs/20261121-101500-cnn-default")   # a run, a .onnx file or a hub folder
    results = predictor.predict_images("photo.png")     # real images (paths, bytes, PIL, arrays), prepared first
    results[0].label, results[0].confidence, results[0].rejected, results[0].reason
    out = predictor.predict(images_uint8)               # model-ready (N, 28, 28) uint8 arrays
    out.labels, out.confidence, out.rejected, out.top(0)

A Predictor is three parts: the model's description (``formats.ModelInfo``, read the same way from a
run, a hub folder or an ONNX file), a backend (``inference.backends``: torch, ONNX Runtime, scikit-learn)
that turns uint8 images into logits through the preprocessing spec, and the rejection fitted for it
(``inference.rejection``: temperature, confidence threshold, non-digit detector). A model without a
rejection file gives uncalibrated probabilities and rejects only real images with no digit in them or
with strokes too thick for a digit (``MAX_STROKE``).
"""

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitlab.core.errors import DigitlabError, first_line
from digitlab.core.rundir import RunDir
from digitlab.data.errors import DataError
from digitlab.inference.backends import (
    DEFAULT_BATCH,
    Backend,
    BackendError,
    OnnxBackend,
    SklearnBackend,
    TorchBackend,
)
from digitlab.inference.formats import (
    HUB_CONFIG,
    HUB_ONNX,
    HUB_WEIGHTS,
    META_MODEL,
    META_REJECTION,
    ONNX_INPUT,
    ONNX_OUTPUT,
    ModelInfo,
    ModelInfoError,
    read_model_info,
)
from digitlab.inference.prepare import Polarity, Prepared, prepare_image
from digitlab.inference.rejection import (
    REASON_BLOB,
    REASON_NO_DIGIT,
    REJECTION_FILE,
    Rejection,
    RejectionError,
    decide,
    load_rejection,
    policy_from_json,
    softmax,
)
from digitlab.models.registry import ModelError
from digitlab.models.runtime import resolve_device

# A real image whose strokes, fitted into the 28x28 frame, are wider than this is a blob, not a digit
# (docs/decisions.md#blobs).
MAX_STROKE = 8.0
_OLD_CALIBRATION = "calibration.json"  # what digitlab wrote before the rejection file


class PredictorError(DigitlabError):
    """A model that cannot be loaded, or inputs it cannot take."""


@dataclass(frozen=True)
class Predictions:
    """A batch of predictions: probabilities (calibrated when the model has a rejection policy), and which
    are rejected, with a plain reason each."""

    class_names: list[str]
    proba: np.ndarray  # (N, n_classes)
    rejected: np.ndarray  # (N,) bool
    reasons: list[str | None]  # why each is rejected (None: kept)
    k: int = 3
    nondigit_score: np.ndarray | None = None  # (N,) the detector's score (higher: less digit-like), or None

    def reason(self, i: int) -> str | None:
        """Why item ``i`` is rejected (None when it is not)."""
        return self.reasons[i]

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

    def __repr__(self) -> str:
        return f"Predictions(n={len(self)}, labels={self.labels[:8]}{'...' if len(self) > 8 else ''}, " \
               f"rejected={int(self.rejected.sum())})"

    def top(self, i: int, k: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` most likely classes of item ``i`` with their probabilities, best first."""
        order = np.argsort(-self.proba[i], kind="stable")[: k or self.k]
        return [(self.class_names[j], float(self.proba[i, j])) for j in order]

    def record(self, i: int) -> dict[str, Any]:
        """Item ``i`` as JSON-ready data."""
        return {"label": self.class_names[int(self.indices[i])], "confidence": float(self.confidence[i]),
                "rejected": bool(self.rejected[i]), "reason": self.reasons[i],
                "nondigit_score": None if self.nondigit_score is None else float(self.nondigit_score[i]),
                "top_k": [{"label": c, "probability": p} for c, p in self.top(i)],
                "probabilities": {c: float(p) for c, p in zip(self.class_names, self.proba[i], strict=True)}}


@dataclass(frozen=True, repr=False)
class ImagePrediction:
    """One real image: how it was prepared, and what the model read (``label`` None when no digit was found).

    ``label`` is the best guess even when ``rejected``; ``reason`` says why it was not read."""

    source: str
    prepared: Prepared
    label: str | None = None
    confidence: float = 0.0
    rejected: bool = True  # no digit found is rejected too
    reason: str | None = REASON_NO_DIGIT
    top_k: list[tuple[str, float]] = field(default_factory=list)
    proba: np.ndarray | None = None
    nondigit_score: float | None = None  # the detector's score, when the model has one

    def __repr__(self) -> str:
        if self.label is None:
            return f"ImagePrediction({self.source!r}: {self.reason})"
        if self.rejected:
            return f"ImagePrediction({self.source!r}: not read, {self.reason}; best guess {self.label})"
        return f"ImagePrediction({self.source!r}: {self.label}, confidence {self.confidence:.3f})"

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "found": self.prepared.found, "label": self.label,
                "confidence": round(self.confidence, 6), "rejected": self.rejected, "reason": self.reason,
                "nondigit_score": None if self.nondigit_score is None else round(self.nondigit_score, 6),
                "top_k": [{"label": c, "probability": round(p, 6)} for c, p in self.top_k],
                "inverted": self.prepared.inverted, "box": list(self.prepared.box) if self.prepared.box else None,
                "notes": list(self.prepared.notes)}


class Predictor:
    """Batched predictions of one trained model on raw uint8 images (``predict``) or real images
    (``predict_images``), with its rejection policy."""

    def __init__(self, info: ModelInfo, backend: Backend, *, rejection: Rejection | None = None,
                 source: Path | None = None) -> None:
        self.info = info
        self.backend = backend
        self.rejection = rejection
        self.source = source
        if rejection is not None and rejection.detector is not None and not backend.has_detector:
            if not isinstance(backend, TorchBackend):
                raise PredictorError(f"{source or info.name}: a non-digit detector for a model that gives no features")
            try:
                backend.attach_detector(rejection.detector, source=str(source or info.name))
            except BackendError as e:
                raise PredictorError(str(e)) from None

    def __repr__(self) -> str:
        return (f"Predictor({self.name}, {self.backend.name} on {self.device}, "
                f"{'rejection fitted' if self.rejection else 'no rejection'}, source={str(self.source)!r})")

    # ------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], *, backend: str = "auto", device: str = "auto") -> "Predictor":
        """Load a model from a run directory, an ONNX file or a hub folder (``digitlab export``).

        Args:
            backend: "auto" (torch where weights exist, else ONNX Runtime), "torch" or "onnx".
            device: "auto" (CUDA when present), "cpu" or "cuda"; for ONNX, the provider ONNX Runtime uses.

        Raises:
            PredictorError: nothing loadable at ``path``, or the backend asked for is not there.
        """
        p = Path(path)
        if backend not in ("auto", "torch", "onnx"):
            raise PredictorError(f"backend {backend!r}: choose from auto, torch, onnx")
        if p.is_file() and p.suffix == ".onnx":
            if backend == "torch":
                raise PredictorError(f"{p}: an ONNX file runs on ONNX Runtime (backend auto or onnx)")
            return cls._from_onnx(p, device=device)
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
                return cls._from_onnx(p / HUB_ONNX, device=device)
            raise PredictorError(f"{p}: a hub folder without {HUB_WEIGHTS if backend == 'torch' else HUB_ONNX}")
        raise PredictorError(f"{p}: neither a run directory ({RunDir.MODEL_JSON}) nor a hub folder ({HUB_CONFIG})")

    @classmethod
    def from_run(cls, path: str | os.PathLike[str], *, device: str = "auto", rejection: bool = True) -> "Predictor":
        """Load the model a run directory holds (and its rejection file, unless ``rejection`` is False).

        Raises:
            PredictorError: no model.json, weights missing or not matching it, or a rejection file from
                an older digitlab.
        """
        run = RunDir(path)
        info = _read_info(run.file(RunDir.MODEL_JSON))
        if info.kind == "classical":
            from digitlab.models.classical import ClassicalModel
            from digitlab.models.registry import make_config

            try:
                config = make_config(info.name, **info.args)
                _check_class_names(info, config.n_classes, run.path)
                model = ClassicalModel.load(run.file("model.skops"), info.name, config)
            except (ModelError, DataError) as e:
                raise PredictorError(str(e)) from None
            backend: Backend = SklearnBackend(model)
        else:
            dev = resolve_device(device)
            channels_last = _trained_channels_last(run)
            net = _load_torch(info, run.file(RunDir.WEIGHTS), dev)
            if channels_last:  # a network trained channels-last runs faster that way (docs/decisions.md#channels-last)
                net.to(memory_format=torch.channels_last)
            backend = TorchBackend(net, info.preprocess, device=dev, channels_last=channels_last)
        return cls._with_rejection(info, backend, run.path, run.path if rejection else None)

    @classmethod
    def _from_hub(cls, folder: Path, *, device: str) -> "Predictor":
        info = _read_info(folder / HUB_CONFIG)
        if info.kind == "classical":
            raise PredictorError(f"{folder}: a classical model has no torch weights")
        dev = resolve_device(device)
        backend = TorchBackend(_load_torch(info, folder / HUB_WEIGHTS, dev), info.preprocess, device=dev)
        return cls._with_rejection(info, backend, folder, folder)

    @classmethod
    def _from_onnx(cls, path: Path, *, device: str = "auto") -> "Predictor":
        import onnx  # imported here: only ONNX users pay for them
        import onnxruntime as ort

        try:
            proto = onnx.load(str(path))  # read once: its weights are checked, and the session is built from it
            options = ort.SessionOptions()
            options.log_severity_level = 3  # warnings about unused initializers are not the user's problem
            # as many threads as torch would use (docs/decisions.md#onnx-runtime-threads)
            options.intra_op_num_threads = torch.get_num_threads()
            session = ort.InferenceSession(proto.SerializeToString(), options,
                                           providers=_onnx_providers(ort, device))
            meta = session.get_modelmeta().custom_metadata_map
        except Exception as e:  # onnxruntime raises its own kinds for a corrupt or foreign file
            raise PredictorError(f"{path}: not a loadable ONNX model ({first_line(e)})") from None
        if META_MODEL not in meta:
            raise PredictorError(f"{path}: an ONNX file without digitlab's metadata ({META_MODEL}); export it with "
                                 "`digitlab export`")
        try:
            info = _digit_classifier(read_model_info(meta[META_MODEL], source=f"{path} metadata"), path)
            policy = policy_from_json(meta[META_REJECTION], source=f"{path} metadata") \
                if META_REJECTION in meta else None
        except (ModelInfoError, RejectionError) as e:
            raise PredictorError(f"{e} (export it again with this digitlab)") from None
        _check_onnx_graph(session, proto, info, path)
        backend = OnnxBackend(session, info.preprocess)
        if policy is not None and policy.detector_threshold is not None and not backend.has_detector:
            raise PredictorError(f"{path}: its rejection policy names a non-digit detector that its graph lacks")
        return cls(info, backend, rejection=Rejection(policy) if policy else None, source=path)

    @classmethod
    def _with_rejection(cls, info: ModelInfo, backend: Backend, source: Path, folder: Path | None) -> "Predictor":
        """The Predictor, with the rejection file in ``folder`` when there is one (its detector attached)."""
        rejection = None
        if folder is not None:
            file = folder / REJECTION_FILE
            if file.is_file():
                try:
                    rejection = load_rejection(file, device=backend.device)
                except RejectionError as e:
                    raise PredictorError(str(e)) from None
            elif (folder / _OLD_CALIBRATION).is_file():
                raise PredictorError(f"{folder}: calibrated by an older digitlab ({_OLD_CALIBRATION}); run "
                                     f"`digitlab calibrate {folder}` to fit its rejection again")
        return cls(info, backend, rejection=rejection, source=source)  # the constructor attaches its detector

    # ------------------------------------------------------------------------------------------ the model

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def kind(self) -> str:
        """"torch" (a network, whatever runs it) or "classical"."""
        return self.info.kind

    @property
    def spec(self) -> Any:
        """The preprocessing spec (``PreprocessSpec``)."""
        return self.info.preprocess

    @property
    def class_names(self) -> list[str]:
        return self.info.class_names

    @property
    def n_classes(self) -> int:
        return len(self.info.class_names)

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def model(self) -> Any:
        """The torch network or the scikit-learn model (for export and inspection)."""
        return getattr(self.backend, "model", None)

    @property
    def has_features(self) -> bool:
        """Whether the model is a torch network that returns its features (what a detector reads)."""
        return self.backend.has_features

    @property
    def has_detector(self) -> bool:
        return self.backend.has_detector

    @property
    def temperature(self) -> float:
        return self.rejection.temperature if self.rejection else 1.0

    @property
    def threshold(self) -> float | None:
        """The calibrated confidence below which a prediction is rejected (chosen on validation), or None."""
        return self.rejection.policy.confidence_threshold if self.rejection else None

    @property
    def detector_threshold(self) -> float | None:
        """The non-digit score above which a prediction is rejected (chosen on validation), or None."""
        return self.rejection.policy.detector_threshold if self.rejection else None

    # ------------------------------------------------------------------------------------- model-ready input

    def _check(self, images: Any) -> np.ndarray:
        hint = ("; for photos, scans, files or PIL images use predict_images(), which prepares them first")
        if not isinstance(images, np.ndarray | torch.Tensor | list | tuple):
            raise PredictorError(f"predict() takes model-ready uint8 arrays, not {type(images).__name__}{hint}")
        images = np.asarray(images)
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3 or tuple(images.shape[1:]) != tuple(self.spec.input_size):
            h, w = self.spec.input_size
            raise PredictorError(f"images of shape {images.shape}: predict() takes (N, {h}, {w}) uint8{hint}")
        if images.dtype != np.uint8:
            raise PredictorError(f"images of dtype {images.dtype}: predict() takes uint8 pixels (0-255){hint}")
        return images

    def logits(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Uncalibrated logits ``(N, n_classes)`` of model-ready images (a classical model's
        log-probabilities or decision function)."""
        return self.backend.logits(self._check(images), batch_size=batch_size)

    def logits_and_nondigit(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH,
                            detector: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Logits and the non-digit scores ``(N,)`` in one pass (of ``detector`` when given, else the model's).

        Raises:
            PredictorError: no detector to score with.
        """
        try:
            return self.backend.logits_and_nondigit(self._check(images), batch_size=batch_size, detector=detector)
        except BackendError as e:
            raise PredictorError(f"{self.source or self.name}: {e}") from None

    def features(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """Logits ``(N, n_classes)`` and the network's features ``(N, F)`` (``forward_features``), batched.

        Raises:
            PredictorError: not a torch network with features (classical models, ONNX files).
        """
        try:
            return self.backend.features(self._check(images), batch_size=batch_size)
        except BackendError as e:
            raise PredictorError(f"{self.name}: {e}") from None

    def predict_proba(self, images: np.ndarray, *, calibrated: bool = True,
                      batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Class probabilities ``(N, n_classes)``; temperature-scaled when the model has a rejection policy."""
        return softmax(self.logits(images, batch_size=batch_size), self.temperature if calibrated else 1.0)

    def classify(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Predicted class indices ``(N,)`` (no rejection)."""
        return self.logits(images, batch_size=batch_size).argmax(axis=1)

    def predict(self, images: np.ndarray, *, top_k: int = 3, min_confidence: float | None = None,
                batch_size: int = DEFAULT_BATCH) -> Predictions:
        """Predictions of model-ready images ``(N, H, W)`` uint8 (MNIST's convention), with rejection.

        Args:
            min_confidence: reject below this calibrated confidence instead of the fitted threshold (the
                non-digit detector, when the model has one, rejects by its own threshold either way).

        Raises:
            PredictorError: not model-ready images (use ``predict_images`` for real ones).
        """
        images = self._check(images)
        nondigit = None
        if not len(images):
            logits = np.zeros((0, self.n_classes))
            nondigit = np.zeros(0) if self.detector_threshold is not None else None
        elif self.detector_threshold is not None:
            logits, nondigit = self.logits_and_nondigit(images, batch_size=batch_size)
        else:
            logits = self.backend.logits(images, batch_size=batch_size)
        proba = softmax(logits, self.temperature)
        rejected, reasons = decide(proba, nondigit, detector_threshold=self.detector_threshold,
                                   confidence_threshold=self.threshold if min_confidence is None else min_confidence)
        return Predictions(self.class_names, proba, rejected, reasons, max(1, min(top_k, self.n_classes)), nondigit)

    # ----------------------------------------------------------------------------------------- real images

    def prepare(self, source: Any, *, polarity: Polarity = "auto", deskew: bool = False,
                fix_stroke: bool = True, box: tuple[int, int, int, int] | None = None) -> Prepared:
        """A real image prepared for this model (its spec): see ``digitlab.inference.prepare``."""
        return prepare_image(source, self.spec, polarity=polarity, deskew=deskew, fix_stroke=fix_stroke, box=box)

    def predict_images(self, sources: Any, *, names: Sequence[str] | None = None, top_k: int = 3,
                       min_confidence: float | None = None, polarity: Polarity = "auto", deskew: bool = False,
                       fix_stroke: bool = True, box: tuple[int, int, int, int] | None = None) -> list[ImagePrediction]:
        """Real images (photos, scans, drawings) -> one ``ImagePrediction`` each, prepared then read in one batch.

        Args:
            sources: one image or several: a path, bytes, a PIL image or a NumPy array (``(H, W)`` grey or
                ``(H, W, 3|4)`` colour is one image; a list, or an ``(N, H, W)`` stack, is several).
            names: what to call each image in the results (default: its path, else ``#i``).
            box: ``(x, y, width, height)``: read only this region of each image (a form's field).

        Raises:
            ImageError: an input that is not a readable image (the first one met).
        """
        items = as_image_list(sources)
        labels = list(names) if names is not None else [str(s) if isinstance(s, str | os.PathLike) else f"#{i}"
                                                        for i, s in enumerate(items)]
        prepared = [self.prepare(s, polarity=polarity, deskew=deskew, fix_stroke=fix_stroke, box=box) for s in items]
        return self.predict_prepared(prepared, names=labels, top_k=top_k, min_confidence=min_confidence)

    def predict_image(self, source: Any, **options: Any) -> ImagePrediction:
        """``predict_images`` for one image: its one ``ImagePrediction``."""
        return self.predict_images([source], **options)[0]

    def predict_prepared(self, prepared: Sequence[Prepared], *, names: Sequence[str], top_k: int = 3,
                         min_confidence: float | None = None) -> list[ImagePrediction]:
        """Classify already prepared images in one batch (those without a digit are rejected as such)."""
        found = [i for i, p in enumerate(prepared) if p.found]
        out = [ImagePrediction(names[i], p) for i, p in enumerate(prepared)]
        if found:
            preds = self.predict(np.stack([prepared[i].image for i in found]), top_k=top_k,
                                 min_confidence=min_confidence)
            for j, i in enumerate(found):
                blob = (prepared[i].stroke or 0.0) > MAX_STROKE
                reason = REASON_BLOB if blob and not preds.rejected[j] else preds.reasons[j]
                score = None if preds.nondigit_score is None else float(preds.nondigit_score[j])
                out[i] = ImagePrediction(names[i], prepared[i], preds.labels[j], float(preds.confidence[j]),
                                         bool(preds.rejected[j]) or blob, reason, preds.top(j), preds.proba[j], score)
        return out


def as_image_list(sources: Any) -> list[Any]:
    """One image or several as a list: a path, bytes, a PIL image, or a ``(H, W)`` / ``(H, W, 3|4)`` array is
    one image; an ``(N, H, W)`` stack and any other iterable are several."""
    if isinstance(sources, str | os.PathLike | bytes | bytearray | memoryview) or hasattr(sources, "getpixel"):
        return [sources]
    if isinstance(sources, np.ndarray):
        one = sources.ndim == 2 or (sources.ndim == 3 and sources.shape[-1] in (3, 4))
        return [sources] if one else list(sources)
    if isinstance(sources, Iterable):
        return list(sources)
    return [sources]  # prepare_image says what it cannot read


def _read_info(path: Path) -> ModelInfo:
    if not path.is_file():
        raise PredictorError(f"{path.parent}: no {path.name} (not a finished run directory or hub folder)")
    try:
        return _digit_classifier(read_model_info(path.read_bytes(), source=str(path)), path.parent)
    except ModelInfoError as e:
        raise PredictorError(str(e)) from None
    except OSError as e:
        raise PredictorError(f"{path}: unreadable ({e.strerror})") from None


def _digit_classifier(info: ModelInfo, source: Path) -> ModelInfo:
    """``info``, when it describes a digit classifier; a string model is refused in one line."""
    if info.kind == "sequence":
        raise PredictorError(f"{source}: {info.name} is a string model: it reads lines of digits (StringReader, "
                             "digitlab predict --multi)")
    return info


def _trained_channels_last(run: RunDir) -> bool:
    import yaml

    try:
        cfg = yaml.safe_load(run.file(RunDir.CONFIG).read_text()) or {}
        return bool((cfg.get("train") or {}).get("channels_last", False))
    except (OSError, yaml.YAMLError, AttributeError):
        return False


def _load_torch(info: ModelInfo, weights: Path, device: torch.device) -> torch.nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from digitlab.models.registry import create_model, make_config

    if not weights.is_file():
        raise PredictorError(f"{weights.parent}: no {weights.name}")
    try:
        _check_class_names(info, make_config(info.name, **info.args).n_classes, weights.parent)  # before allocating
        model = create_model(info.name, **info.args)
    except ModelError as e:
        raise PredictorError(str(e)) from None
    try:
        state = load_file(str(weights))
        model.load_state_dict(state)
    except (RuntimeError, OSError, SafetensorError) as e:
        raise PredictorError(f"{weights}: cannot load the {info.name} weights its config describes: "
                             f"{first_line(e)}") from None
    _check_finite(state, weights)
    return model.to(device).eval()


def _check_finite(tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse weights holding a NaN or an infinity: such a model answers label 0 with confidence NaN.

    Raises:
        PredictorError: naming the file and the first tensor that is not finite.
    """
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise PredictorError(f"{source}: {key} holds NaN or infinite values: the weights are corrupt (a "
                                 "diverged training run or a damaged file); train again or restore them")


def _check_class_names(info: ModelInfo, n_out: int | None, source: Path | str) -> None:
    """The model description's class names must name every output of the model (``n_out``; None: unknown).

    Raises:
        PredictorError: one line naming ``source`` and both numbers.
    """
    n_names = len(info.class_names)
    if n_out is not None and n_names != n_out:
        raise PredictorError(f"{source}: the model has {n_out} outputs but its description names {n_names} "
                             f"classes ({', '.join(info.class_names[:12])}); the model description does not "
                             "match the model")


def _check_onnx_graph(session: Any, proto: Any, info: ModelInfo, path: Path) -> None:
    """The graph takes ``ONNX_INPUT`` and gives ``ONNX_OUTPUT`` with one column per class name; its float
    initializers (the weights) are finite.

    Raises:
        PredictorError: one line naming the file and what is wrong.
    """
    inputs = [i.name for i in session.get_inputs()]
    if inputs != [ONNX_INPUT]:
        raise PredictorError(f"{path}: the graph's inputs are {inputs}, not the one input {ONNX_INPUT!r} digitlab "
                             "feeds; export it with `digitlab export`")
    outputs = {o.name: o for o in session.get_outputs()}
    if ONNX_OUTPUT not in outputs:
        raise PredictorError(f"{path}: the graph has no output {ONNX_OUTPUT!r} (it has {sorted(outputs)}); "
                             "export it with `digitlab export`")
    shape = outputs[ONNX_OUTPUT].shape
    _check_class_names(info, shape[-1] if shape and isinstance(shape[-1], int) else None, path)
    from onnx import numpy_helper

    for init in proto.graph.initializer:
        a = numpy_helper.to_array(init)
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise PredictorError(f"{path}: initializer {init.name} holds NaN or infinite values: the weights "
                                 "are corrupt; export them again from a good run")


def _onnx_providers(ort: Any, device: str) -> list[str]:
    """ONNX Runtime's providers for ``device``: CUDA first where asked for (or auto) and installed."""
    wanted = ("CPUExecutionProvider",) if device == "cpu" else ("CUDAExecutionProvider", "CPUExecutionProvider")
    available = ort.get_available_providers()
    return [p for p in wanted if p in available] or available
