"""Every registered model: forward shape, backward, no NaN; the classical contract; registry errors."""

import numpy as np
import pytest
import torch

from digitlab.models import ModelError, count_parameters, create_model, get_entry, list_models
from digitlab.models.classical import ClassicalModel, HOGFeatures

TORCH_MODELS = [n for n in list_models() if get_entry(n).kind == "torch"]
CLASSICAL_MODELS = [n for n in list_models() if get_entry(n).kind == "classical"]


def test_registry_lists_every_family() -> None:
    assert set(list_models()) >= {"mlp", "rnn", "cnn", "lenet5", "resnet", "svm", "knn", "random-forest", "logistic"}
    assert list_models("r*") == ["random-forest", "resnet", "rnn"]


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_forward_backward_no_nan(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(5, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (5, 10)
    logits.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(logits).all()
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert count_parameters(model) > 1000


def test_model_configs_shape_the_network() -> None:
    mlp = create_model("mlp", hidden_sizes=[256, 128])
    assert count_parameters(mlp) == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    lstm = create_model("rnn", cell="lstm", hidden_size=32, num_layers=2, bidirectional=True)
    assert isinstance(lstm.rnn, torch.nn.LSTM) and lstm.rnn.bidirectional and lstm.rnn.num_layers == 2
    wide = create_model("resnet", width=16, stages=[1, 1])
    assert count_parameters(wide) < count_parameters(create_model("resnet", width=32, stages=[2, 2, 2]))
    lenet = create_model("lenet5")
    assert count_parameters(lenet) == 61706  # the paper's sizes with full C3 connectivity
    pooled = create_model("cnn", blocks=[{"filters": 8, "pool_first": True, "batch_norm": True}], dense=[])
    assert pooled(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_registry_errors_are_one_line() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'cnnn': choose one of .*cnn"):
        create_model("cnnn")
    with pytest.raises(ModelError, match=r"model 'mlp': bad config: hiden_sizes: Extra inputs") as e:
        create_model("mlp", hiden_sizes=[3])
    assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match="cell"):
        create_model("rnn", cell="transformer")


OVERSIZED = [("cnn", {"blocks": [{"filters": -5}]}, "blocks.0.filters: Input should be greater than or equal to 1"),
             ("cnn", {"blocks": [{"filters": 1e6}]}, "blocks.0.filters: Input should be less than or equal to 65536"),
             ("cnn", {"dense": [100_000_000]}, "dense.0: Input should be less than or equal to 65536"),
             ("cnn", {"input_size": [100_000, 100_000]}, "input_size.0: Input should be less than or equal to 1024"),
             ("cnn", {"dense_dropout": float("nan")}, "dense_dropout: Input should be a finite number"),
             ("mlp", {"hidden_sizes": [0]}, "hidden_sizes.0: Input should be greater than or equal to 1"),
             ("mlp", {"dropout": 1.0}, "dropout: Input should be less than 1"),
             ("rnn", {"hidden_size": -1}, "hidden_size: Input should be greater than or equal to 1"),
             ("resnet", {"width": 10**9}, "width: Input should be less than or equal to 65536"),
             ("lenet5", {"n_classes": 0}, "n_classes: Input should be greater than or equal to 1"),
             ("knn", {"n_neighbors": 0}, "n_neighbors: Input should be greater than or equal to 1"),
             # each layer within the maxima, the whole far over the budget: refused before allocating
             ("cnn", {"dense": [65_536, 65_536]}, "4,501,293,450 parameters is over the 50,000,000-parameter budget"),
             ("mlp", {"hidden_sizes": [60_000] * 3}, "parameter budget")]


@pytest.mark.parametrize("name, cfg, why", OVERSIZED)
def test_nonsense_and_oversized_configs_are_one_line_before_allocating(name: str, cfg: dict, why: str) -> None:
    with pytest.raises(ModelError) as e:
        create_model(name, **cfg)
    assert str(e.value).startswith(f"model {name!r}: ") and why in str(e.value) and "\n" not in str(e.value)


def test_the_parameter_budget_counts_on_the_meta_device() -> None:
    from digitlab.models.registry import check_size, make_config

    for name in list_models():
        if get_entry(name).kind == "torch":
            config = make_config(name)
            assert check_size(name, config) == count_parameters(create_model(name))
    with pytest.raises(ModelError, match=r"^model 'cnn': 421,642 parameters is over the 1,000-parameter budget"):
        check_size("cnn", make_config("cnn"), budget=1000)


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """Ten separable classes: class k has a bright square at a k-dependent place."""
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 10
    images = rng.integers(0, 40, size=(200, 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        r, c = divmod(int(k), 5)
        images[i, 4 + 10 * r : 12 + 10 * r, 2 + 5 * c : 6 + 5 * c] = 255
    return images, labels


@pytest.mark.parametrize("name", CLASSICAL_MODELS)
def test_classical_fit_predict_save_load(name: str, blobs, tmp_path) -> None:
    images, labels = blobs
    model = create_model(name, **({"pca_components": 20} if name == "svm" else {}))
    assert model.fit(images, labels) is model
    pred = model.predict(images)
    assert (pred == labels).mean() > 0.9
    scores = model.predict_scores(images[:7])
    assert scores.shape == (7, 10)
    assert model.n_parameters_ > 0
    path = model.save(tmp_path / f"{name}.skops")
    again = ClassicalModel.load(path, name, model.config)
    np.testing.assert_array_equal(again.predict(images), pred)


def test_classical_load_refuses_foreign_types(tmp_path, blobs) -> None:
    import skops.io as sio

    class Foreign:  # a type digitlab never writes
        pass

    path = tmp_path / "foreign.skops"
    sio.dump({"x": Foreign()}, path)
    cfg = create_model("knn").config
    with pytest.raises(ModelError, match="refusing to load types digitlab did not write"):
        ClassicalModel.load(path, "knn", cfg)
    (tmp_path / "junk.skops").write_bytes(b"\x80\x04not a zip")
    with pytest.raises(ModelError, match="not a readable skops model file"):
        ClassicalModel.load(tmp_path / "junk.skops", "knn", cfg)


def test_hog_is_vectorised_and_orientation_aware() -> None:
    img = np.zeros((2, 28, 28), np.float32)
    img[0, :, 14:] = 1.0  # vertical edge: horizontal gradient, orientation 0
    img[1, 14:, :] = 1.0  # horizontal edge: vertical gradient, orientation pi/2
    feats = HOGFeatures().transform(img.reshape(2, -1))
    assert feats.shape == (2, 16 * 9)
    cells = feats.reshape(2, 16, 9).sum(1)
    assert cells[0].argmax() == 0 and cells[1].argmax() == 4


def test_keras_init_matches_what_keras_starts_from() -> None:
    torch.manual_seed(0)
    rnn = create_model("rnn", cell="rnn", hidden_size=32, init="keras")
    w_hh = rnn.rnn.weight_hh_l0.detach()
    assert torch.allclose(w_hh @ w_hh.T, torch.eye(32), atol=1e-5)  # orthogonal recurrent weights
    assert all(float(b.detach().abs().max()) == 0 for n, b in rnn.rnn.named_parameters() if n.startswith("bias"))
    lstm = create_model("rnn", cell="lstm", hidden_size=8, init="keras")
    assert torch.equal(lstm.rnn.bias_ih_l0[8:16], torch.ones(8))  # the forget gate starts open
    cnn = create_model("cnn", init="keras")
    convs = [m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)]
    w = convs[0].weight.detach()
    fan_in, fan_out = w.shape[1] * w[0, 0].numel(), w.shape[0] * w[0, 0].numel()
    assert float(w.abs().max()) <= (6 / (fan_in + fan_out)) ** 0.5 and float(convs[0].bias.detach().abs().max()) == 0
    default_conv = next(m for m in create_model("cnn").modules() if isinstance(m, torch.nn.Conv2d))
    assert float(default_conv.bias.detach().abs().max()) > 0
