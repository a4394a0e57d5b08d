"""Evaluation figures: each function writes one valid PNG atomically, edge cases included."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import confusion_matrix

from digitlab.evaluation import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N_CLASSES = 10
N_SAMPLES = 60
CLASS_NAMES = [str(c) for c in range(N_CLASSES)]


def assert_png(path: Path, *, min_side: int = 150) -> None:
    """``path`` is a PNG that Pillow reads, of a plausible size, and the only file in its folder."""
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert min_side <= width <= 6000 and min_side <= height <= 6000, image.size
    assert [p.name for p in path.parent.iterdir()] == [path.name], "temp files left behind"


@pytest.fixture(scope="module")
def preds() -> dict[str, np.ndarray]:
    """60 random 'digits', every class present, probabilities right for all but 5 samples."""
    rng = np.random.default_rng(0)
    images = np.zeros((N_SAMPLES, 28, 28), dtype=np.uint8)
    images[:, 4:24, 6:22] = rng.integers(0, 256, size=(N_SAMPLES, 20, 16), dtype=np.uint8)
    y_true = np.arange(N_SAMPLES) % N_CLASSES
    target = y_true.copy()
    target[[3, 13, 23, 7, 17]] = [5, 5, 8, 1, 1]  # 3 -> 5 twice: the most common confusion of class 3
    logits = rng.normal(0.0, 1.0, (N_SAMPLES, N_CLASSES))
    logits[np.arange(N_SAMPLES), target] += 6.0
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return {"images": images, "y_true": y_true, "proba": proba, "y_pred": proba.argmax(axis=1)}


def learning_rows(n_epochs: int) -> list[dict]:
    return [
        {"epoch": e, "train_loss": 0.5 / e, "train_acc": 1 - 0.1 / e, "val_loss": 0.1 / e + 0.01 * e,
         "val_acc": 0.97 + 0.002 * min(e, 3), "lr": 1e-3, "seconds": 2.0}
        for e in range(1, n_epochs + 1)
    ]


MODELS = [
    {"name": "cnn", "accuracy": 0.992, "accuracy_std": 0.0005, "train_seconds": 90, "size_bytes": 1_700_000},
    {"name": "mlp", "accuracy": 0.981, "accuracy_std": 0.001, "train_seconds": 40, "size_bytes": 1_070_000},
    {"name": "logreg", "accuracy": 0.926, "train_seconds": 35, "size_bytes": 31_400},
]


def test_confusion_matrix(preds: dict[str, np.ndarray], tmp_path: Path) -> None:
    cm = confusion_matrix(preds["y_true"], preds["y_pred"], labels=range(N_CLASSES))
    cm[9] = 0  # a class absent from the test set: a blank row, not a division by zero
    out = plots.plot_confusion_matrix(cm, CLASS_NAMES, tmp_path / "confusion.png")
    assert out == tmp_path / "confusion.png"
    assert_png(out)


def test_roc_and_pr_curves(preds: dict[str, np.ndarray], tmp_path: Path) -> None:
    assert_png(plots.plot_roc_curves(preds["y_true"], preds["proba"], CLASS_NAMES, tmp_path / "a" / "roc.png"))
    assert_png(plots.plot_pr_curves(preds["y_true"], preds["proba"], CLASS_NAMES, tmp_path / "b" / "pr.png"))


def test_curves_survive_a_class_absent_from_y_true(preds: dict[str, np.ndarray], tmp_path: Path) -> None:
    # ROC and PR share the one-vs-rest split that skips such a class; one of them is enough here.
    keep = preds["y_true"] != 4
    assert_png(plots.plot_roc_curves(preds["y_true"][keep], preds["proba"][keep], CLASS_NAMES, tmp_path / "roc.png"))


@pytest.mark.parametrize("n_epochs", [1, 12])
def test_learning_curves(n_epochs: int, tmp_path: Path) -> None:
    assert_png(plots.plot_learning_curves(learning_rows(n_epochs), tmp_path / "learning.png"))


def test_learning_curves_of_a_classical_model_to_a_name_without_suffix(tmp_path: Path) -> None:
    """The trainer logs only epoch, val_acc and seconds for a classical model; the file is a PNG all the same."""
    rows = [{"epoch": 1, "val_acc": 0.97, "seconds": 12.0}]
    out = plots.plot_learning_curves(rows, tmp_path / "learning")
    assert out.name == "learning"
    assert_png(out)


def test_reliability(preds: dict[str, np.ndarray], tmp_path: Path) -> None:
    sharpened = preds["proba"] ** 2 / (preds["proba"] ** 2).sum(axis=1, keepdims=True)
    out = plots.plot_reliability(preds["y_true"], sharpened, preds["proba"], tmp_path / "reliability.png",
                                 n_bins=15, ece_before=0.031, ece_after=0.012, temperature=1.7)
    assert_png(out)


def test_confident_mistakes(preds: dict[str, np.ndarray], tmp_path: Path) -> None:
    out = plots.plot_confident_mistakes(preds["images"], preds["y_true"], preds["proba"], CLASS_NAMES,
                                        tmp_path / "mistakes.png", n=3)
    assert_png(out)


def test_confident_mistakes_with_no_mistakes(preds: dict[str, np.ndarray], tmp_path: Path) -> None:
    perfect = np.eye(N_CLASSES)[preds["y_true"]]
    out = plots.plot_confident_mistakes(preds["images"], preds["y_true"], perfect, CLASS_NAMES, tmp_path / "m.png")
    assert_png(out, min_side=100)


def test_common_confusions(preds: dict[str, np.ndarray], tmp_path: Path) -> None:
    # Most classes have no errors here; class 3 has two of the same kind.
    out = plots.plot_common_confusions(preds["images"], preds["y_true"], preds["y_pred"], CLASS_NAMES,
                                       tmp_path / "confusions.png", per_class=3)
    assert_png(out)


def test_common_confusions_with_no_errors_at_all(preds: dict[str, np.ndarray], tmp_path: Path) -> None:
    out = plots.plot_common_confusions(preds["images"], preds["y_true"], preds["y_true"], CLASS_NAMES,
                                       tmp_path / "confusions.png", per_class=1)
    assert_png(out)


def test_prediction_grid(preds: dict[str, np.ndarray], tmp_path: Path) -> None:
    args = (preds["images"], preds["y_true"], preds["y_pred"], preds["proba"], CLASS_NAMES)
    assert_png(plots.plot_prediction_grid(*args, tmp_path / "a" / "grid.png", n=12, seed=1))
    # More asked for than there are samples: all of them, once each.
    few = [a[:7] for a in args[:4]]
    assert_png(plots.plot_prediction_grid(*few, CLASS_NAMES, tmp_path / "b" / "grid.png", n=100))


def test_prediction_grid_with_long_class_names(preds: dict[str, np.ndarray], tmp_path: Path) -> None:
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    args = (preds["images"], preds["y_true"], preds["y_pred"], preds["proba"], names)
    assert_png(plots.plot_prediction_grid(*args, tmp_path / "grid.png", n=8))


def test_robustness(tmp_path: Path) -> None:
    results = {
        "rotation": {"levels": [0, 15, 30, 45], "accuracy": [0.99, 0.97, 0.9, 0.7], "unit": "degrees"},
        "noise": {"levels": [0.0, 0.2, 0.4], "accuracy": [0.99, 0.95, 0.8], "unit": "std"},
        "invert": {"levels": [0, 1], "accuracy": [0.99, 0.1], "unit": "off/on"},
        "blur": {"levels": [0], "accuracy": [0.99], "unit": ""},
        "scale": {"levels": [0.8, 1.0, 1.2], "accuracy": [0.96, 0.99, 0.97], "unit": "factor"},
    }
    assert_png(plots.plot_robustness(results, tmp_path / "robustness.png"))


@pytest.mark.parametrize("models", [MODELS, MODELS[:1]], ids=["three", "one"])
def test_accuracy_vs(models: list[dict], tmp_path: Path) -> None:
    assert_png(plots.plot_accuracy_vs(models, "size_bytes", tmp_path / "size.png", xlabel="model size (bytes)"))


def test_accuracy_vs_linear_axis(tmp_path: Path) -> None:
    models = [dict(m, train_seconds=0.0) if m["name"] == "mlp" else m for m in MODELS]  # 0 cannot go on a log axis
    assert_png(plots.plot_accuracy_vs(MODELS[2:], "train_seconds", tmp_path / "a" / "one.png", xlabel="s", log_x=False))
    assert_png(plots.plot_accuracy_vs(models, "train_seconds", tmp_path / "b" / "time.png", xlabel="training time (s)"))


def test_f1_heatmap(tmp_path: Path) -> None:
    f1 = np.random.default_rng(0).uniform(0.95, 1.0, (3, N_CLASSES))
    assert_png(plots.plot_f1_heatmap(["cnn", "mlp", "rnn"], CLASS_NAMES, f1, tmp_path / "f1.png"))


def test_f1_heatmap_of_one_model_with_identical_values(tmp_path: Path) -> None:
    """A single model whose F1s are all equal still gets a valid (non-empty) colour range."""
    assert_png(plots.plot_f1_heatmap(["cnn"], CLASS_NAMES, np.ones((1, N_CLASSES)), tmp_path / "f1.png"))


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "learning.png"
    target.write_bytes(b"old")

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", fail)
    with pytest.raises(OSError, match="disk full"):
        plots.plot_learning_curves(learning_rows(2), target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["learning.png"]


def test_mismatched_inputs_are_rejected(preds: dict[str, np.ndarray], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="class names"):
        plots.plot_roc_curves(preds["y_true"], preds["proba"], CLASS_NAMES[:9], tmp_path / "roc.png")
    with pytest.raises(ValueError, match="cm must be"):
        plots.plot_confusion_matrix(np.zeros((3, 4), dtype=int), CLASS_NAMES[:3], tmp_path / "cm.png")
    with pytest.raises(ValueError, match="no metrics"):
        plots.plot_learning_curves([], tmp_path / "learning.png")
    with pytest.raises(ValueError, match="lacks"):
        plots.plot_accuracy_vs([{"name": "cnn", "accuracy": 0.99}], "size_bytes", tmp_path / "x.png", xlabel="x")
    assert not any(tmp_path.iterdir())
