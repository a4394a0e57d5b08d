"""Rejection as its own artifact, on synthetic inputs (no MNIST): the typed policy, the one file (policy and
detector), the rule and its plain reasons, the temperature fit, and the Predictor loading and applying it
(test_predict.py and test_evaluation.py fit it end to end on real MNIST)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from digitlab.data.preprocess import PreprocessSpec
from digitlab.inference.detector import NonDigitDetector, fit_detector
from digitlab.inference.predictor import Predictor, PredictorError
from digitlab.inference.rejection import (
    REASON_NOT_A_DIGIT,
    REASON_UNSURE,
    REJECTION_FILE,
    Rejection,
    RejectionError,
    RejectionPolicy,
    decide,
    fit_rejection,
    fit_temperature,
    load_rejection,
    save_rejection,
    softmax,
)
from digitlab.models import create_model

SPEC = PreprocessSpec(mean=0.13, std=0.31)
CLASSES = [str(d) for d in range(10)]
POLICY = {"temperature": 0.8, "fitted_on": "validation", "n_val": 5000, "confidence_threshold": 0.6,
          "rule": "calibrated confidence below 0.6"}


def separable(seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    digits = (torch.randn(300, 12, generator=g), 4 * torch.randn(300, 10, generator=g))
    nondigits = (torch.randn(200, 12, generator=g) + 1.5, torch.randn(200, 10, generator=g))
    return digits, nondigits


@pytest.mark.parametrize("bad", [{"temperature": 0}, {"temperature": math.nan}, {"temperature": "hot"},
                                 {"confidence_threshold": 1.5}, {"detector_threshold": math.inf},
                                 {"colour": "blue"}, {"format": "digitlab-rejection/0"}])
def test_the_policy_refuses_what_would_answer_nonsense(bad: dict) -> None:
    with pytest.raises(ValueError):
        RejectionPolicy(**{**POLICY, **bad})


def test_the_file_round_trips_with_and_without_a_detector(tmp_path: Path) -> None:
    plain = Rejection(RejectionPolicy(**POLICY))
    save_rejection(tmp_path / "a.safetensors", plain)
    assert load_rejection(tmp_path / "a.safetensors") == plain
    digits, nondigits = separable()
    detector = fit_detector(digits, nondigits, temperature=0.8)
    full = Rejection(RejectionPolicy(**POLICY, detector_threshold=0.25), detector)
    save_rejection(tmp_path / "b.safetensors", full)
    loaded = load_rejection(tmp_path / "b.safetensors")
    assert loaded.policy == full.policy and loaded.uses_detector
    with torch.no_grad():
        torch.testing.assert_close(loaded.detector(*digits), detector(*digits), rtol=0, atol=0)


def test_a_bad_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"not a rejection file")
    with pytest.raises(RejectionError, match="not a digitlab rejection file"):
        load_rejection(tmp_path / "junk")
    save_file({}, str(tmp_path / "foreign"), metadata={"format": "something else"})
    with pytest.raises(RejectionError, match="not a digitlab rejection file"):
        load_rejection(tmp_path / "foreign")
    save_file({}, str(tmp_path / "zero"), metadata={"format": "digitlab-rejection/1", "digitlab.rejection":
                                                    json.dumps({**POLICY, "temperature": 0})})
    with pytest.raises(RejectionError, match="temperature"):
        load_rejection(tmp_path / "zero")
    detector = NonDigitDetector(12)
    with torch.no_grad():
        detector.out.weight.fill_(math.nan)
    save_rejection(tmp_path / "nan", Rejection(RejectionPolicy(**POLICY, detector_threshold=0.0), detector))
    with pytest.raises(RejectionError, match="NaN"):
        load_rejection(tmp_path / "nan")


def test_the_rule_and_its_plain_reasons() -> None:
    proba = np.array([[0.9, 0.1], [0.55, 0.45], [0.95, 0.05], [0.5, 0.5]])
    nondigit = np.array([-3.0, -3.0, 2.0, 2.0])
    rejected, reasons = decide(proba, nondigit, confidence_threshold=0.6, detector_threshold=0.0)
    assert rejected.tolist() == [False, True, True, True]
    assert reasons == [None, REASON_UNSURE, REASON_NOT_A_DIGIT, REASON_NOT_A_DIGIT]
    assert all("detector" not in r for r in reasons if r)  # words a user understands
    rejected, _ = decide(proba, None, confidence_threshold=None, detector_threshold=None)
    assert not rejected.any()


def test_fit_temperature_undoes_over_confidence() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2000)
    logits = rng.normal(size=(2000, 10))
    logits[np.arange(2000), labels] += 2.0
    t, before, after = fit_temperature(3 * logits, labels)
    assert t > 1.2 and after < before  # over-confident logits are cooled down
    assert fit_temperature(np.empty((0, 10)), np.empty(0, dtype=np.int64))[0] == 1.0
    np.testing.assert_allclose(softmax(logits[:3], 2.0).sum(axis=1), 1.0)


class FakePredictor:
    """What fit_rejection reads of a Predictor, for a model without features (a classical one)."""

    has_features = False
    class_names = CLASSES

    def logits(self, images: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(len(images))
        z = rng.normal(size=(len(images), 10))
        z[:, 3] += 4.0
        return z


def test_fit_rejection_chooses_the_threshold_on_validation_only() -> None:
    val = np.zeros((1000, 28, 28), np.uint8)
    labels = np.full(1000, 3)
    rejection = fit_rejection(FakePredictor(), val_images=val, val_labels=labels, train_digits=val[:10])
    p = rejection.policy
    assert p.detector_threshold is None and rejection.detector is None and p.n_val == 1000
    assert p.val_rejected == pytest.approx(0.007, abs=0.002) and 0 < p.confidence_threshold < 1
    # no validation split: identity temperature and nothing rejected, said plainly
    none = fit_rejection(FakePredictor(), val_images=val[:0], val_labels=labels[:0], train_digits=val[:10])
    assert none.policy.temperature == 1.0 and none.policy.confidence_threshold is None


# ---------------------------------------------------------------------------------------------------------------
# The Predictor loads and applies it


def make_run(folder: Path, model: torch.nn.Module, args: dict) -> Path:
    """A run directory by hand: model.json and the weights (what from_run reads)."""
    folder.mkdir(parents=True)
    info = {"name": "cnn", "kind": "torch", "args": args, "class_names": CLASSES, "preprocess": SPEC.model_dump()}
    (folder / "model.json").write_text(json.dumps(info))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture
def tiny_run(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    args = {"blocks": [{"filters": 4}], "dense": []}
    torch.manual_seed(0)
    model = create_model("cnn", **args)
    return make_run(tmp_path / "run", model, args), model


def images(n: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def test_a_run_without_rejection_rejects_nothing_it_read(tiny_run) -> None:
    run, _ = tiny_run
    p = Predictor.from_run(run)
    assert p.rejection is None and p.threshold is None and p.temperature == 1.0
    out = p.predict(images())
    assert not out.rejected.any() and out.nondigit_score is None and out.reasons == [None] * 20
    empty = p.predict(np.zeros((0, 28, 28), np.uint8))
    assert len(empty) == 0 and empty.proba.shape == (0, 10) and empty.labels == []


def test_the_predictor_rejects_by_confidence_or_detector(tiny_run) -> None:
    run, model = tiny_run
    x = images()
    with torch.no_grad():
        z, f = model.eval().forward_features(SPEC.normalize(torch.as_tensor(x)))
    torch.manual_seed(1)
    detector = NonDigitDetector(f.shape[1], temperature=0.8)
    with torch.no_grad():
        expected = detector(f, z).numpy()
    t_det = float(np.median(expected))
    save_rejection(run / REJECTION_FILE, Rejection(RejectionPolicy(**{**POLICY, "confidence_threshold": 0.15},
                                                                   detector_threshold=t_det), detector))
    p = Predictor.from_run(run)
    assert p.has_detector and p.threshold == 0.15 and p.detector_threshold == t_det and p.temperature == 0.8
    out = p.predict(x)
    np.testing.assert_allclose(out.nondigit_score, expected, rtol=0, atol=1e-5)
    foreign = out.nondigit_score > t_det
    assert foreign.any() and np.array_equal(out.rejected, (out.confidence < 0.15) | foreign)
    assert [r == REASON_NOT_A_DIGIT for r in out.reasons] == foreign.tolist() or (out.confidence < 0.15).any()
    np.testing.assert_allclose(out.proba, softmax(p.logits(x), 0.8))
    # min_confidence replaces the confidence threshold; the detector stays
    assert np.array_equal(p.predict(x, min_confidence=0.0).rejected, foreign)


def test_an_old_calibration_is_one_error_that_says_what_to_run(tiny_run) -> None:
    run, _ = tiny_run
    (run / "calibration.json").write_text(json.dumps({"temperature": 0.8, "threshold": 0.6}))
    with pytest.raises(PredictorError, match="digitlab calibrate"):
        Predictor.from_run(run)


def test_a_detector_that_does_not_fit_the_model_is_one_error(tiny_run) -> None:
    run, _ = tiny_run
    save_rejection(run / REJECTION_FILE, Rejection(RejectionPolicy(**POLICY, detector_threshold=0.0),
                                                   NonDigitDetector(7)))
    with pytest.raises(PredictorError, match="a detector for 7 features"):
        Predictor.from_run(run)
    (run / REJECTION_FILE).write_bytes(b"junk")
    with pytest.raises(PredictorError, match="not a digitlab rejection file"):
        Predictor.from_run(run)


def test_predict_points_real_images_to_predict_images(tiny_run, tmp_path: Path) -> None:
    run, _ = tiny_run
    p = Predictor.from_run(run)
    with pytest.raises(PredictorError, match="predict_images"):
        p.predict("photo.png")  # type: ignore[arg-type]
    with pytest.raises(PredictorError, match="predict_images"):
        p.predict(np.zeros((1, 100, 100), np.uint8))
