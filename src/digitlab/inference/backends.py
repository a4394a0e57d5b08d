"""The Predictor's backends: one small interface, one class per runtime (torch, ONNX Runtime, scikit-learn).

Usage::

    backend = TorchBackend(model, spec, device=torch.device("cpu"))
    logits = backend.logits(images_uint8)          # (N, C) float64, on a logit scale for every backend

Every backend takes raw uint8 images ``(N, H, W)`` in the model's own convention, feeds them through the
preprocessing spec (the same code path training used) and returns scores of one kind: logits, which
``softmax(logits / temperature)`` turns into probabilities. A scikit-learn model's probabilities become
floored log-probabilities, its decision function (SVM) stays as it is. A backend with a non-digit
detector also gives the detector's scores (``logits_and_nondigit``).
"""

from typing import Any, Protocol

import numpy as np
import torch

from digitlab.core.errors import DigitlabError
from digitlab.data.preprocess import PreprocessSpec
from digitlab.inference.formats import ONNX_INPUT, ONNX_OUTPUT, ONNX_SCORE
from digitlab.models.runtime import has_features, predict_features, predict_logits

_LOG_FLOOR = 1e-12  # probabilities of 0 (k-NN votes, forests) as finite log-probabilities
DEFAULT_BATCH = 1000


class BackendError(DigitlabError):
    """A backend asked for something it cannot give (features of an ONNX file, a detector it lacks)."""


class Backend(Protocol):
    """What the Predictor needs of a runtime."""

    name: str  # "torch", "onnx" or "sklearn"
    device: torch.device

    @property
    def has_detector(self) -> bool: ...

    @property
    def has_features(self) -> bool: ...

    def logits(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray: ...

    def logits_and_nondigit(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH,
                            detector: Any = None) -> tuple[np.ndarray, np.ndarray]: ...

    def features(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, np.ndarray]: ...


class TorchBackend:
    """A torch network (and the non-digit detector that reads its features, once one is attached)."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, spec: PreprocessSpec, *, device: torch.device,
                 channels_last: bool = False) -> None:
        self.model = model
        self.spec = spec
        self.device = device
        self.channels_last = channels_last
        self.detector: torch.nn.Module | None = None

    @property
    def has_features(self) -> bool:
        return has_features(self.model)

    @property
    def has_detector(self) -> bool:
        return self.detector is not None

    def attach_detector(self, detector: torch.nn.Module, *, source: str) -> None:
        """Use ``detector`` for non-digit scores.

        Raises:
            BackendError: a network without features, or a detector made for features of another width.
        """
        if not self.has_features:
            raise BackendError(f"{source}: a non-digit detector for a network that gives no features")
        with torch.no_grad():  # one blank image: the features must be as wide as the detector reads
            was_training = self.model.training
            self.model.eval()
            _, feats = self.model.forward_features(torch.zeros(1, 1, *self.spec.input_size, device=self.device))
            self.model.train(was_training)
        if feats.shape[1] != detector.n_features:
            raise BackendError(f"{source}: a detector for {detector.n_features} features; this model gives "
                               f"{feats.shape[1]} (run `digitlab calibrate` again)")
        self.detector = detector.to(self.device).eval()

    def logits(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        return predict_logits(self.model, images, self.spec, device=self.device, batch_size=batch_size,
                              channels_last=self.channels_last).numpy().astype(np.float64)

    def logits_and_nondigit(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH,
                            detector: Any = None) -> tuple[np.ndarray, np.ndarray]:
        head = detector if detector is not None else self.detector
        if head is None:
            raise BackendError("this model has no non-digit detector (`digitlab calibrate RUN` fits one)")
        logits, score = predict_features(self.model, images, self.spec, device=self.device, batch_size=batch_size,
                                         channels_last=self.channels_last, head=head)
        return logits.numpy().astype(np.float64), score.numpy().astype(np.float64)

    def features(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, np.ndarray]:
        if not self.has_features:
            raise BackendError(f"a {type(self.model).__name__} network has no features to read")
        logits, feats = predict_features(self.model, images, self.spec, device=self.device, batch_size=batch_size,
                                         channels_last=self.channels_last)
        return logits.numpy(), feats.numpy()


class OnnxBackend:
    """An ONNX Runtime session (its graph carries the detector as a second output when the run had one)."""

    name = "onnx"
    has_features = False

    def __init__(self, session: Any, spec: PreprocessSpec) -> None:
        self.session = session
        self.spec = spec
        self._outputs = {o.name for o in session.get_outputs()}
        # where it runs: the first provider the session took
        self.device = torch.device("cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu")

    @property
    def has_detector(self) -> bool:
        return ONNX_SCORE in self._outputs

    def logits(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        return run_onnx(self.session, images, self.spec, [ONNX_OUTPUT], batch_size=batch_size)[0].astype(np.float64)

    def logits_and_nondigit(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH,
                            detector: Any = None) -> tuple[np.ndarray, np.ndarray]:
        if detector is not None or not self.has_detector:
            raise BackendError("this ONNX file has no non-digit detector in its graph")
        logits, score = run_onnx(self.session, images, self.spec, [ONNX_OUTPUT, ONNX_SCORE], batch_size=batch_size)
        return logits.astype(np.float64), score.astype(np.float64)

    def features(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, np.ndarray]:
        raise BackendError("an ONNX model has no features to read")


class SklearnBackend:
    """A classical (scikit-learn) model: its probabilities as floored log-probabilities, or its decision
    function (SVM), as logits."""

    name = "sklearn"
    device = torch.device("cpu")
    has_features = False
    has_detector = False

    def __init__(self, model: Any) -> None:
        self.model = model

    def logits(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        scores = np.asarray(self.model.predict_scores(images), dtype=np.float64)
        if hasattr(self.model.pipeline, "predict_proba"):
            return np.log(np.clip(scores, _LOG_FLOOR, 1.0))
        return scores

    def logits_and_nondigit(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH,
                            detector: Any = None) -> tuple[np.ndarray, np.ndarray]:
        raise BackendError("a classical model has no non-digit detector")

    def features(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, np.ndarray]:
        raise BackendError("a classical model has no features to read")


def run_onnx(session: Any, images: np.ndarray, spec: PreprocessSpec, outputs: list[str], *,
             batch_size: int = DEFAULT_BATCH) -> list[np.ndarray]:
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
