"""The non-digit detector's parts, on synthetic inputs (no MNIST): the networks' features, fitting and
the two thresholds (test_rejection.py has the file and the Predictor's rule; the runs of
test_predict.py, test_export.py and test_evaluation.py cover it end to end on real MNIST)."""

import numpy as np
import pytest
import torch

from digitlab.data.preprocess import PreprocessSpec
from digitlab.inference.detector import DetectorError, fit_detector, rejection_thresholds
from digitlab.models import create_model, list_models
from digitlab.models.registry import get_entry
from digitlab.models.runtime import has_features, predict_features

NETWORKS = ("cnn", "lenet5", "mlp", "resnet", "rnn")
SMALL = {"resnet": {"width": 8, "stages": [1, 1]}, "rnn": {"hidden_size": 16}}
SPEC = PreprocessSpec(mean=0.13, std=0.31)


def test_every_network_and_only_networks_give_features() -> None:
    # digit classifiers only: a sequence model (crnn) reads lines, and the detector judges single digits
    classifiers = [n for n in list_models() if get_entry(n).kind != "sequence"]
    assert {n for n in classifiers if has_features(create_model(n, **SMALL.get(n, {})))} == set(NETWORKS)


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
