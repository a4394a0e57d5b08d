"""Rejection, its own step and its own artifact: a temperature, a confidence threshold and (for networks)
a non-digit detector, fitted on a run's training and validation data, saved as one typed file in the run.

Usage::

    rejection = calibrate_run("runs/20261121-101500-cnn-default")   # fits and writes RUN/rejection.safetensors
    rejection = load_rejection("runs/.../rejection.safetensors")     # what the Predictor loads
    proba = rejection.proba(logits)                                  # calibrated probabilities
    rejected, reasons = rejection.decide(proba, nondigit_scores)     # (N,) bool, a plain reason each

``digitlab train`` runs this at its end, ``digitlab calibrate RUN`` on its own; ``digitlab evaluate``
only measures what it fitted. The rule: reject when the calibrated confidence is below
``confidence_threshold``, or when the detector's non-digit score is above ``detector_threshold``; both
thresholds are chosen on validation digits (docs/decisions.md#rejection). The test split is never read.

The file is safetensors: the detector's tensors (``detector.*``, none for a model without one) and the
policy as JSON in the metadata (``RejectionPolicy``), so weights and thresholds cannot drift apart.
"""

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from digitlab import __version__
from digitlab.core.config import ConfigError, read_run_config
from digitlab.core.errors import DigitlabError, first_line
from digitlab.core.fileio import atomic_path
from digitlab.core.rundir import RunDir

REJECTION_FILE = "rejection.safetensors"  # in the run directory and the hub folder
FORMAT = "digitlab-rejection/1"
_META_POLICY = "digitlab.rejection"
_META_FORMAT = "format"
_DETECTOR_PREFIX = "detector."
# Shares of validation digits the rule rejects (docs/decisions.md#rejection).
REJECT_VAL_RATE = 0.007
RELAXED_SOFTMAX_RATE = 0.003  # the confidence threshold's share when a detector takes the rest
DETECTOR_NONDIGITS = 8000  # synthetic non-digits the detector learns from (at most as many as training digits)
NONDIGITS_SEED = 0  # one cached bank for every run (digitlab.data.nondigits)
DIGIT_CLASSES = [str(d) for d in range(10)]  # the synthetic non-digits make a detector for digits only
FEATURE_BATCH = 2000
# Digits and non-digits also drawn on paper and read back through the preparation, for the detector and
# the thresholds: real inputs arrive that way (docs/decisions.md#prepared-digits-for-rejection).
REREAD_TRAIN = 1500
REREAD_VAL = 1000

# Why a prediction is rejected, in the words a user reads (the CLI, the service, the drawing page).
REASON_NO_DIGIT = "no digit found"
REASON_UNSURE = "not sure which digit this is"
REASON_NOT_A_DIGIT = "does not look like a digit"
REASON_BLOB = "strokes too thick for a digit"


class RejectionError(DigitlabError):
    """A rejection file that cannot be read or used, or a run that cannot be calibrated."""


class DetectorInfo(BaseModel):
    """How the non-digit detector was fitted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_digits: int = Field(ge=1)
    n_nondigits: int = Field(ge=1)
    n_features: int = Field(ge=1)
    hidden: int = Field(ge=1)
    seed: int
    seconds: float = Field(ge=0)


class RejectionPolicy(BaseModel):
    """The fitted numbers of the rejection rule (the JSON half of the rejection file).

    ``temperature``: probabilities are ``softmax(logits / temperature)``. ``confidence_threshold``: reject
    below this calibrated confidence (None: no validation split to choose it on). ``detector_threshold``:
    reject when the non-digit score is above it (None: no detector). ``val_rejected``: the share of
    validation digits the rule rejects."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = FORMAT
    temperature: float = Field(gt=0)
    confidence_threshold: float | None = Field(default=None, ge=0, le=1)
    detector_threshold: float | None = None
    fitted_on: str
    n_val: int = Field(ge=0)
    nll_before: float | None = None
    nll_after: float | None = None
    val_rejected: float | None = Field(default=None, ge=0, le=1)
    rule: str
    detector: DetectorInfo | None = None
    digitlab_version: str = __version__

    @field_validator("temperature", "detector_threshold", "nll_before", "nll_after")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v != FORMAT:
            raise ValueError(f"format {v!r}; this digitlab reads {FORMAT}")
        return v


@dataclass(frozen=True)
class Rejection:
    """A fitted policy and its detector (None for a model without one): turns logits into calibrated
    probabilities and decides what is rejected."""

    policy: RejectionPolicy
    detector: Any = None  # a NonDigitDetector (torch), or None

    @property
    def temperature(self) -> float:
        return self.policy.temperature

    @property
    def uses_detector(self) -> bool:
        return self.policy.detector_threshold is not None

    def proba(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(N, C)`` (float64)."""
        return softmax(logits, self.policy.temperature)

    def decide(self, proba: np.ndarray, nondigit: np.ndarray | None = None, *,
               min_confidence: float | None = None) -> tuple[np.ndarray, list[str | None]]:
        """Which predictions are rejected, and why (``None`` for those kept).

        Args:
            min_confidence: replaces the fitted confidence threshold (the detector's stays).
        """
        return decide(proba, nondigit, confidence_threshold=(self.policy.confidence_threshold
                                                             if min_confidence is None else min_confidence),
                      detector_threshold=self.policy.detector_threshold)


def decide(proba: np.ndarray, nondigit: np.ndarray | None, *, confidence_threshold: float | None,
           detector_threshold: float | None) -> tuple[np.ndarray, list[str | None]]:
    """``confidence < confidence_threshold OR nondigit > detector_threshold``, with a plain reason each."""
    confidence = np.asarray(proba).max(axis=1) if len(proba) else np.zeros(0)
    unsure = (confidence < confidence_threshold if confidence_threshold is not None
              else np.zeros(len(confidence), bool))
    foreign = (np.asarray(nondigit) > detector_threshold if detector_threshold is not None and nondigit is not None
               else np.zeros(len(confidence), bool))
    reasons = [REASON_NOT_A_DIGIT if f else REASON_UNSURE if u else None for u, f in zip(unsure, foreign, strict=True)]
    return unsure | foreign, reasons


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float64, numerically stable)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True) if z.size else z
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True) if e.size else e


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> tuple[float, float, float]:
    """The temperature minimising the negative log-likelihood of ``softmax(logits / T)``.

    Returns:
        (temperature, nll at T=1, nll at the fitted T). With no samples: (1.0, nan, nan).
    """
    from scipy.optimize import minimize_scalar  # SciPy's optimiser: only calibration pays for its import

    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if len(y) == 0:
        return 1.0, math.nan, math.nan
    res = minimize_scalar(lambda log_t: _nll(logits, y, math.exp(log_t)), bounds=(-4.0, 4.0), method="bounded",
                          options={"xatol": 1e-4})
    t = float(math.exp(res.x))
    before, after = _nll(logits, y, 1.0), _nll(logits, y, t)
    if not after <= before:  # never worse than leaving the model alone (nor NaN)
        t, after = 1.0, before
    return t, before, after


# ------------------------------------------------------------------------------------------------ the file

def save_rejection(path: str | os.PathLike[str], rejection: Rejection) -> Path:
    """Write the policy and its detector as one safetensors file (atomically)."""
    from safetensors.torch import save_file

    target = Path(path)
    tensors = {}
    if rejection.detector is not None:
        tensors = {_DETECTOR_PREFIX + k: v.detach().cpu().contiguous()
                   for k, v in rejection.detector.state_dict().items()}
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata={_META_FORMAT: FORMAT,
                                               _META_POLICY: rejection.policy.model_dump_json()})
    return target


def policy_from_json(text: str, *, source: str) -> RejectionPolicy:
    """A ``RejectionPolicy`` from its JSON (the rejection file's metadata, or an ONNX file's).

    Raises:
        RejectionError: not a policy this digitlab reads (one line naming ``source``).
    """
    try:
        return RejectionPolicy.model_validate_json(text)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "policy"
        raise RejectionError(f"{source}: a bad rejection policy ({where}: {first['msg']}); run `digitlab calibrate` "
                             "on the run again") from None


def load_rejection(path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> Rejection:
    """A rejection file written by ``save_rejection``.

    Raises:
        RejectionError: a missing, unreadable, foreign or inconsistent file.
    """
    from safetensors import SafetensorError, safe_open

    from digitlab.inference.detector import NonDigitDetector

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            state = {k.removeprefix(_DETECTOR_PREFIX): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as e:
        raise RejectionError(f"{path}: not a digitlab rejection file ({first_line(e)})") from None
    if meta.get(_META_FORMAT) != FORMAT or _META_POLICY not in meta:
        raise RejectionError(f"{path}: not a digitlab rejection file (format {meta.get(_META_FORMAT)!r}); run "
                             "`digitlab calibrate` on the run again")
    policy = policy_from_json(meta[_META_POLICY], source=str(path))
    if policy.detector_threshold is None:
        if state:
            raise RejectionError(f"{path}: detector weights without a detector threshold")
        return Rejection(policy)
    try:
        detector = NonDigitDetector(int(state["mean"].shape[0]) - 2, int(state["hidden.weight"].shape[0]))
        detector.load_state_dict(state)
    except (KeyError, RuntimeError, IndexError) as e:
        raise RejectionError(f"{path}: a damaged non-digit detector ({first_line(e)})") from None
    if not all(torch.isfinite(t).all() for t in state.values()):
        raise RejectionError(f"{path}: the non-digit detector holds NaN or infinite weights")
    return Rejection(policy, detector.to(device).eval())


# --------------------------------------------------------------------------------------------- fitting

def fit_rejection(predictor: Any, *, val_images: np.ndarray, val_labels: np.ndarray, train_digits: np.ndarray,
                  seed: int = 0, fitted_on: str = "validation split", detector: bool = True,
                  show_progress: bool = False, log: Callable[[str], None] | None = None) -> Rejection:
    """Fit the temperature and the thresholds on validation digits, and (for a network, when ``detector``)
    a non-digit detector on ``train_digits`` against the library's synthetic non-digits.

    Args:
        predictor: a ``Predictor`` (its rejection, if any, is ignored: logits and features only).
        val_images, val_labels: the validation split, uint8 ``(N, H, W)`` and ``(N,)``.
        train_digits: the training digits the detector learns "digit" from.

    Raises:
        RejectionError: inputs that cannot be fitted on.
    """
    say = log or (lambda _msg: None)
    val_labels = np.asarray(val_labels, dtype=np.int64)
    if not len(val_labels):
        say("no validation split: temperature 1, no rejection threshold")
        return Rejection(RejectionPolicy(temperature=1.0, fitted_on="nothing (no validation split)", n_val=0,
                                         rule="nothing is rejected (no validation split to choose a threshold on)"))
    say(f"temperature: fitting on {len(val_labels):,} validation digits")
    val_logits = predictor.logits(val_images)
    temperature, nll_before, nll_after = fit_temperature(val_logits, val_labels)
    val_conf = softmax(val_logits, temperature).max(axis=1)
    common = {"temperature": temperature, "fitted_on": fitted_on, "n_val": len(val_labels),
              "nll_before": nll_before, "nll_after": nll_after}
    if not (detector and predictor.has_features and predictor.class_names == DIGIT_CLASSES):
        t = float(np.quantile(val_conf, REJECT_VAL_RATE))
        share = float((val_conf < t).mean())  # below the aim where confidences tie (k-NN's vote shares)
        return Rejection(RejectionPolicy(**common, confidence_threshold=t, val_rejected=share,
                                         rule=f"calibrated confidence below {t:.4f} (rejects {share:.2%} of "
                                              "validation digits)"))
    from digitlab.inference.detector import fit_detector, rejection_thresholds

    start = time.perf_counter()
    n_neg = min(DETECTOR_NONDIGITS, len(train_digits))
    nondigits = _nondigits(n_neg)
    rng = np.random.default_rng(seed)
    say(f"non-digit detector: {min(REREAD_TRAIN, len(train_digits)):,} training digits, as many non-digits and "
        f"{min(REREAD_VAL, len(val_images)):,} validation digits drawn on paper and prepared as real images")
    train_digits = np.concatenate([train_digits, reread(_sample(train_digits, REREAD_TRAIN, rng), predictor.spec,
                                                        seed)])
    nondigits = np.concatenate([nondigits, reread(_sample(nondigits, REREAD_TRAIN, rng), predictor.spec, seed + 1)])
    val_reread = reread(_sample(val_images, REREAD_VAL, rng), predictor.spec, seed + 2)
    say(f"non-digit detector: reading {len(train_digits):,} training digits and {len(nondigits):,} non-digits")
    z_pos, f_pos = _features(predictor, train_digits, "features of training digits", show_progress)
    z_neg, f_neg = _features(predictor, nondigits, "features of non-digits", show_progress)
    det = fit_detector((f_pos, z_pos), (f_neg, z_neg), temperature=temperature, seed=seed,
                       show_progress=show_progress).to(predictor.device)
    info = DetectorInfo(n_digits=len(f_pos), n_nondigits=len(f_neg), n_features=int(f_pos.shape[1]),
                        hidden=det.hidden.out_features, seed=seed, seconds=time.perf_counter() - start)
    say(f"non-digit detector: fitted in {info.seconds:.1f} s")
    # the thresholds: on the validation digits as MNIST gives them and as the preparation gives them
    val_images = np.concatenate([val_images, val_reread])
    val_logits, val_nondigit = predictor.logits_and_nondigit(val_images, detector=det)
    val_conf = softmax(val_logits, temperature).max(axis=1)
    t_soft, t_det = rejection_thresholds(val_conf, val_nondigit, rate=REJECT_VAL_RATE,
                                         softmax_rate=RELAXED_SOFTMAX_RATE)
    share = float(((val_conf < t_soft) | (val_nondigit > t_det)).mean())
    policy = RejectionPolicy(**common, confidence_threshold=t_soft, detector_threshold=t_det, val_rejected=share,
                             detector=info, rule=f"calibrated confidence below {t_soft:.4f} or non-digit score above "
                                                 f"{t_det:.4f} (rejects {share:.2%} of validation digits)")
    return Rejection(policy, det)


def _sample(images: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return images[np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))]


def reread(images: np.ndarray, spec: Any, seed: int) -> np.ndarray:
    """Model-ready images drawn as a person's scan would show them (dark ink on light paper, 2x, a little
    noise) and prepared again by ``prepare_image``: what the model sees of a real input. Those in which the
    preparation finds nothing are left out."""
    from PIL import Image

    from digitlab.inference.prepare import prepare_image

    rng = np.random.default_rng(seed)
    out = []
    light = spec.polarity != "dark-on-light"
    for img in images:
        ink = img if light else 255 - img
        big = np.asarray(Image.fromarray(ink).resize((2 * ink.shape[1], 2 * ink.shape[0]), Image.BILINEAR),
                         np.float32) / 255
        paper, dark = rng.uniform(0.8, 0.97), rng.uniform(0.0, 0.25)
        photo = paper - big * (paper - dark) + rng.normal(0, 0.01, big.shape)
        p = prepare_image((photo.clip(0, 1) * 255).astype(np.uint8), spec, polarity="dark-on-light")
        if p.found and p.image is not None:
            out.append(p.image)
    return np.stack(out) if out else np.zeros((0, *images.shape[1:]), np.uint8)


def _nondigits(n: int) -> np.ndarray:
    from digitlab.data.nondigits import cached_nondigits

    return cached_nondigits(n, seed=NONDIGITS_SEED)


def _features(predictor: Any, images: np.ndarray, what: str, show_progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and features of ``images``, ``FEATURE_BATCH`` at a time, with a progress bar when asked."""
    from tqdm import tqdm

    logits, feats = [], []
    with tqdm(total=len(images), desc=what, unit="img", disable=not show_progress, leave=False) as bar:
        for start in range(0, len(images), FEATURE_BATCH):
            z, f = predictor.features(images[start:start + FEATURE_BATCH])
            logits.append(torch.from_numpy(z))
            feats.append(torch.from_numpy(f))
            bar.update(len(z))
    return torch.cat(logits), torch.cat(feats)


def calibrate_run(run_path: str | os.PathLike[str], *, device: str = "auto", data_dir: str | None = None,
                  show_progress: bool = False, log: Callable[[str], None] | None = None) -> Rejection:
    """Fit a run's rejection on its own training and validation data, and write ``RUN/rejection.safetensors``.

    The validation split is the one training carved (same size, same seed); the detector learns from the
    digits training used. The test split is never read.

    Raises:
        RejectionError, RunDirError, PredictorError, DataError: one line each.
    """
    from digitlab.data.labelled import USER_DIGITS_FILE, load_user_digits
    from digitlab.data.loading import load_dataset
    from digitlab.data.splits import run_split
    from digitlab.inference.predictor import Predictor

    run = RunDir.open(run_path)
    try:
        cfg = read_run_config(run.file(RunDir.CONFIG))
    except ConfigError as e:
        raise RejectionError(str(e)) from None
    predictor = Predictor.from_run(run.path, device=device, rejection=False)
    dataset = predictor.info.dataset or cfg.data.dataset
    ds = load_dataset(dataset, data_dir or cfg.data.data_dir)
    if ds.spec.n_classes != predictor.n_classes:
        raise RejectionError(f"dataset {dataset} has {ds.spec.n_classes} classes; the model predicts "
                             f"{predictor.n_classes}")
    train_idx, val_idx = run_split(ds.train_labels, n_val=cfg.data.n_val, seed=cfg.data.split_seed,
                                   train_subset=cfg.data.train_subset)  # the digits training used
    val_images, val_labels = ds.train_images[val_idx], ds.train_labels[val_idx]
    train_digits = ds.train_images[train_idx]
    fitted_on = f"{dataset} validation split ({len(val_idx):,} images, seed {cfg.data.split_seed})"
    if cfg.finetune is not None and run.file(USER_DIGITS_FILE).is_file():  # a fine-tuned run: the user's digits too
        user = load_user_digits(run.file(USER_DIGITS_FILE))
        val_images, val_labels = np.concatenate([val_images, user.val_images]), np.concatenate([val_labels,
                                                                                               user.val_labels])
        train_digits = np.concatenate([train_digits, user.train_images])
        fitted_on += f" and {len(user.val_labels):,} held-out user digits"
    rejection = fit_rejection(predictor, val_images=val_images, val_labels=val_labels, train_digits=train_digits,
                              seed=cfg.seed, fitted_on=fitted_on, show_progress=show_progress, log=log)
    save_rejection(run.file(REJECTION_FILE), rejection)
    return rejection


def describe(policy: RejectionPolicy) -> dict[str, Any]:
    """The policy as JSON-ready data (for reports and the service)."""
    return json.loads(policy.model_dump_json())
