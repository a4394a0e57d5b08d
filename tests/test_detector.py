"""The non-digit detector's parts, on synthetic inputs (no MNIST): the networks' features, fitting,
the two thresholds, the file, and the Predictor's rule with and without a detector (the runs of
test_predict.py, test_export.py and test_evaluation.py cover it end to end on real MNIST)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from digitlab.data.preprocess import PreprocessSpec
from digitlab.inference.detector import (
    DETECTOR_FILE,
    DetectorError,
    NonDigitDetector,
    fit_detector,
    load_detector,
    rejection_thresholds,
    save_detector,
)
from digitlab.inference.predictor import (
    CALIBRATION,
    Calibration,
    Predictor,
    PredictorError,
    read_calibration,
    write_calibration,
)
from digitlab.models import create_model, list_models
from digitlab.models.runtime import has_features, predict_features

NETWORKS = ("cnn", "lenet5", "mlp", "resnet", "rnn")
SMALL = {"resnet": {"width": 8, "stages": [1, 1]}, "rnn": {"hidden_size": 16}}
SPEC = PreprocessSpec(mean=0.13, std=0.31)
CLASSES = [str(d) for d in range(10)]
OLD_CALIBRATION = {"temperature": 0.8, "fitted_on": "val", "n": 5000, "nll_before": 0.07, "nll_after": 0.02,
                   "threshold": 0.6, "threshold_rule": "rejects 0.7% of validation digits"}


def test_every_network_and_only_networks_give_features() -> None:
    assert {n for n in list_models() if has_features(create_model(n, **SMALL.get(n, {})))} == set(NETWORKS)


@pytest.mark.parametrize("name", NETWORKS)
def test_forward_features_gives_the_same_logits_as_forward(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, **SMALL.get(name, {})).eval()
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        logits, features = model.forward_features(x)
        torch.testing.assert_close(logits, model(x), rtol=0, atol=1e-5)
    assert features.ndim == 2 and features.shape[0] == 5 and torch.isfinite(features).all()


def test_cnn_features_are_the_penultimate_then_each_block_pooled() -> None:
    model = create_model("cnn", blocks=[{"filters": 4}, {"filters": 6}], dense=[12]).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        _, features = model.forward_features(x)
        penultimate = model.head[:-1](model.features(x))
        block1 = model.features[:2](x)  # conv, relu
        block2 = model.features[:5](x)  # + pool, conv, relu
    assert features.shape == (3, 12 + 4 + 6)
    torch.testing.assert_close(features[:, :12], penultimate)
    torch.testing.assert_close(features[:, 12:16], block1.mean(dim=(2, 3)))
    torch.testing.assert_close(features[:, 16:], block2.mean(dim=(2, 3)))


def test_predict_features_is_batched_and_matches_one_pass() -> None:
    model = create_model("cnn", blocks=[{"filters": 4}], dense=[]).eval()
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    logits, feats = predict_features(model, images, SPEC, device=torch.device("cpu"), batch_size=3)
    with torch.no_grad():
        z, f = model.forward_features(SPEC.normalize(torch.as_tensor(images)))
    torch.testing.assert_close(logits, z)
    torch.testing.assert_close(feats, f)


def separable(seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    digits = (torch.randn(300, 12, generator=g), 4 * torch.randn(300, 10, generator=g))
    nondigits = (torch.randn(200, 12, generator=g) + 1.5, torch.randn(200, 10, generator=g))
    return digits, nondigits


def test_fit_detector_separates_is_seeded_and_leaves_the_global_stream_alone() -> None:
    digits, nondigits = separable()
    state = torch.random.get_rng_state()
    a = fit_detector(digits, nondigits, temperature=0.5, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = fit_detector(digits, nondigits, temperature=0.5, seed=3)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    with torch.no_grad():
        assert (a(*digits) < 0).float().mean() > 0.95 and (a(*nondigits) > 0).float().mean() > 0.95
    # the scaler lives in the module: its inputs are standardised on the fitting data
    x = torch.cat([a.inputs(*digits), a.inputs(*nondigits)])
    torch.testing.assert_close(a.mean, x.mean(dim=0))
    assert float(a.temperature) == 0.5 and a.n_features == 12


def test_fit_detector_refuses_what_cannot_be_fitted() -> None:
    digits, nondigits = separable()
    with pytest.raises(DetectorError, match="digits and non-digits"):
        fit_detector(digits, (nondigits[0][:0], nondigits[1][:0]), temperature=1.0)
    with pytest.raises(DetectorError, match="mismatched"):
        fit_detector(digits, (nondigits[0][:, :5], nondigits[1]), temperature=1.0)


def test_rejection_thresholds_split_the_rate() -> None:
    rng = np.random.default_rng(0)
    conf, score = rng.random(1000), rng.normal(size=1000)
    t_soft, t_det = rejection_thresholds(conf, score, rate=0.007, softmax_rate=0.003)
    assert (conf < t_soft).mean() == 0.003
    assert ((conf < t_soft) | (score > t_det)).mean() == 0.007
    # nothing left for the detector: it rejects no validation digit
    t_soft, t_det = rejection_thresholds(conf, score, rate=0.003, softmax_rate=0.003)
    assert not (score[conf >= t_soft] > t_det).any()
    # ties in the score never push the union over the rate
    t_soft, t_det = rejection_thresholds(conf, np.zeros(1000), rate=0.007, softmax_rate=0.003)
    assert ((conf < t_soft) | (np.zeros(1000) > t_det)).mean() <= 0.007
    with pytest.raises(DetectorError):
        rejection_thresholds(conf[:0], score[:0], rate=0.007, softmax_rate=0.003)


def test_save_and_load(tmp_path: Path) -> None:
    digits, nondigits = separable()
    detector = fit_detector(digits, nondigits, temperature=0.7)
    path = save_detector(detector, tmp_path / DETECTOR_FILE)
    loaded = load_detector(path)
    assert set(loaded.state_dict()) == set(detector.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded(*digits), detector(*digits), rtol=0, atol=0)
    (tmp_path / "junk.safetensors").write_bytes(b"not a detector")
    with pytest.raises(DetectorError, match="not a digitlab non-digit detector"):
        load_detector(tmp_path / "junk.safetensors")


# ---------------------------------------------------------------------------------------------------------------
# The Predictor's rule


def make_run(folder: Path, model: torch.nn.Module, name: str = "cnn", args: dict | None = None) -> Path:
    """A run directory by hand: model.json and the weights (what from_run reads)."""
    folder.mkdir(parents=True)
    info = {"name": name, "kind": "torch", "args": args or {}, "class_names": CLASSES, "preprocess": SPEC.model_dump()}
    (folder / "model.json").write_text(json.dumps(info))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture
def tiny_run(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    args = {"blocks": [{"filters": 4}], "dense": []}
    torch.manual_seed(0)
    model = create_model("cnn", **args)
    return make_run(tmp_path / "run", model, args=args), model


def images(n: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def test_an_old_calibration_without_detector_fields_still_loads(tiny_run) -> None:
    run, _ = tiny_run
    (run / CALIBRATION).write_text(json.dumps(OLD_CALIBRATION))
    cal = read_calibration(run)
    assert cal.threshold == 0.6 and cal.detector_threshold is None and cal.threshold_without_detector is None
    p = Predictor.from_run(run)
    assert p.detector is None and not p.has_detector and p.threshold == 0.6 and p.detector_threshold is None
    out = p.predict(images())
    assert out.nondigit_score is None and np.array_equal(out.rejected, out.confidence < 0.6)
    assert out.record(0)["nondigit_score"] is None and not out.not_digit_like.any()
    # written back without a detector, the file keeps its old keys
    write_calibration(run, cal)
    assert json.loads((run / CALIBRATION).read_text()) == OLD_CALIBRATION


def test_the_predictor_rejects_by_confidence_or_detector(tiny_run) -> None:
    run, model = tiny_run
    x = images()
    with torch.no_grad():
        z, f = model.eval().forward_features(SPEC.normalize(torch.as_tensor(x)))
    torch.manual_seed(1)
    detector = NonDigitDetector(f.shape[1], temperature=0.8)
    save_detector(detector, run / DETECTOR_FILE)
    with torch.no_grad():
        expected = detector(f, z).numpy()
    t_det = float(np.median(expected))
    write_calibration(run, Calibration(**{**OLD_CALIBRATION, "threshold": 0.15}, detector_threshold=t_det,
                                       threshold_without_detector=0.5))
    p = Predictor.from_run(run)
    assert p.has_detector and p.threshold == 0.15 and p.detector_threshold == t_det
    out = p.predict(x)
    np.testing.assert_allclose(out.nondigit_score, expected, rtol=0, atol=1e-5)
    assert np.array_equal(out.not_digit_like, out.nondigit_score > t_det) and out.not_digit_like.any()
    assert np.array_equal(out.rejected, (out.confidence < 0.15) | out.not_digit_like)
    assert out.record(0)["nondigit_score"] == pytest.approx(float(out.nondigit_score[0]))
    # min_confidence replaces the confidence threshold; the detector stays
    assert np.array_equal(p.predict(x, min_confidence=0.0).rejected, out.not_digit_like)
    # the same calibration without the detector file: the threshold chosen for confidence alone
    (run / DETECTOR_FILE).unlink()
    p = Predictor.from_run(run)
    assert not p.has_detector and p.threshold == 0.5 and p.detector_threshold is None
    assert np.array_equal(p.predict(x).rejected, p.predict(x).confidence < 0.5)


def test_a_detector_that_does_not_fit_the_model_is_one_error(tiny_run) -> None:
    run, _ = tiny_run
    save_detector(NonDigitDetector(7), run / DETECTOR_FILE)
    with pytest.raises(PredictorError, match="a detector for 7 features"):
        Predictor.from_run(run)
    (run / DETECTOR_FILE).write_bytes(b"junk")
    with pytest.raises(PredictorError, match="not a digitlab non-digit detector"):
        Predictor.from_run(run)
