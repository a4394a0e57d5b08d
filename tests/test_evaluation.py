"""Evaluation: metrics worked out by hand, temperature scaling, robustness, and evaluate / compare / report
on tiny real runs, checked against scikit-learn computed here from the Predictor's outputs.

The hand-made cases need no data; the rest train three tiny runs on real MNIST once per module
(a small ``fast`` CNN, and ``knn`` with two seeds) and share them.
"""

import base64
import dataclasses
import hashlib
import json
import math
import re
import shutil
import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    roc_auc_score,
)
from typer.testing import CliRunner

from conftest import assert_one_line_error
from digitlab.cli import app
from digitlab.core.config import ConfigError, dump_config
from digitlab.data.splits import split_train_val
from digitlab.evaluation import evaluate as evaluate_module
from digitlab.evaluation.compare import compare_runs
from digitlab.evaluation.evaluate import evaluate_run
from digitlab.evaluation.metrics import (
    classification_metrics,
    expected_calibration_error,
    reliability_bins,
    top_confusions,
    wilson_interval,
)
from digitlab.evaluation.report import write_report
from digitlab.evaluation.robustness import PERTURBATIONS, perturb, robustness_sweep
from digitlab.inference import rejection as rejection_module
from digitlab.inference.predictor import Predictor
from digitlab.inference.rejection import REJECTION_FILE, calibrate_run, fit_temperature, load_rejection, softmax
from digitlab.models import create_model
from digitlab.models.runtime import resolve_device
from digitlab.training import config_from_recipe, train_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
Z_95 = 1.959963984540054  # the 97.5% quantile of the standard normal
TINY = ["data.train_subset=400", "data.n_val=200", "train.batch_size=50", "train.eval_batch_size=500"]
# The fast recipe with one 8-filter block: ~65% test accuracy, and cheap to run 10,000 test images through.
SMALL_FAST = ["model.args={blocks: [{filters: 8, pool_first: true, batch_norm: true}], dense: []}", "train.epochs=1"]
N_VAL = 200
ROBUSTNESS_SAMPLES = 200
# The level of each perturbation that leaves an image as it is.
IDENTITY = {"rotation": 0, "translation": 0, "scale": 1.0, "noise": 0, "blur": 0, "thickness": 0, "occlusion": 0,
            "invert": 0}
RUN_SECTIONS = ("findings", "dataset", "training", "metrics", "figures", "config")
CRITERIA = {"most accurate", "fastest to train", "fastest to predict", "smallest", "best calibrated"}

runner = CliRunner()


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.verify()


# ---------------------------------------------------------------------------------------------------------------
# Metrics on hand-made predictions: 10 samples, 3 classes, every number below worked out by hand.

CLASSES = ["zero", "one", "two"]
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
PROBA = np.array([
    [0.8, 0.1, 0.1],
    [0.7, 0.2, 0.1],
    [0.6, 0.3, 0.1],
    [0.4, 0.5, 0.1],  # zero read as one; the truth second: a top-2 hit
    [0.1, 0.8, 0.1],
    [0.2, 0.7, 0.1],
    [0.5, 0.1, 0.4],  # one read as zero; the truth last: a top-2 miss
    [0.1, 0.1, 0.8],
    [0.2, 0.1, 0.7],
    [0.6, 0.1, 0.3],  # two read as zero; the truth second
])
# Predictions [0 0 0 1 1 1 0 2 2 0]:
#   zero: TP 3, FP 2 (#6, #9), FN 1 (#3) -> precision 3/5, recall 3/4, F1 2*3/(2*3+2+1) = 2/3
#   one:  TP 2, FP 1 (#3),     FN 1 (#6) -> precision 2/3, recall 2/3, F1 2/3
#   two:  TP 2, FP 0,          FN 1 (#9) -> precision 1,   recall 2/3, F1 4/5
EXPECTED_PER_CLASS = [(3 / 5, 3 / 4, 2 / 3, 4), (2 / 3, 2 / 3, 2 / 3, 3), (1.0, 2 / 3, 4 / 5, 3)]


def wilson_by_hand(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    p = k / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return center - half, center + half


def test_classification_metrics_by_hand() -> None:
    m = classification_metrics(Y_TRUE, PROBA, CLASSES)
    assert m["n"] == 10 and m["errors"] == 3
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)  # mean recall = 25/36
    assert m["top2_accuracy"] == pytest.approx(0.9)
    for row, name, (precision, recall, f1, support) in zip(m["per_class"], CLASSES, EXPECTED_PER_CLASS, strict=True):
        assert row["class"] == name
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((precision, recall, f1))
        assert row["support"] == support
    assert m["macro_avg"]["precision"] == pytest.approx((3 / 5 + 2 / 3 + 1) / 3)
    assert m["macro_avg"]["recall"] == pytest.approx(25 / 36)
    assert m["macro_avg"]["f1"] == pytest.approx((2 / 3 + 2 / 3 + 4 / 5) / 3)
    assert m["weighted_avg"]["f1"] == pytest.approx((4 * 2 / 3 + 3 * 2 / 3 + 3 * 4 / 5) / 10)
    p_true = [0.8, 0.7, 0.6, 0.4, 0.8, 0.7, 0.1, 0.8, 0.7, 0.3]
    assert m["log_loss"] == pytest.approx(-sum(math.log(p) for p in p_true) / 10)
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 2, 0], [1, 0, 2]]
    # Class "two": positives score .8 .7 .3, negatives .1 (x6) and .4: 7 + 7 + 6 of 21 pairs ranked right.
    assert m["roc_auc"]["per_class"]["two"] == pytest.approx(20 / 21)
    assert m["accuracy_ci95"] == pytest.approx(wilson_by_hand(7, 10))


def test_roc_auc_is_undefined_for_a_class_absent_from_the_labels() -> None:
    y, proba = Y_TRUE[:7], PROBA[:7]  # no "two"
    m = classification_metrics(y, proba, CLASSES)
    assert m["roc_auc"]["per_class"]["two"] is None and m["roc_auc"]["macro"] is None
    assert m["roc_auc"]["per_class"]["zero"] is not None


def test_wilson_interval_matches_the_formula() -> None:
    lo, hi = wilson_interval(7, 10)
    assert (lo, hi) == pytest.approx(wilson_by_hand(7, 10), rel=1e-9)
    assert (lo, hi) == pytest.approx((0.3968, 0.8922), abs=1e-4)
    assert wilson_interval(9_912, 10_000) == pytest.approx(wilson_by_hand(9_912, 10_000), rel=1e-9)
    assert wilson_interval(0, 20)[0] == pytest.approx(0.0, abs=1e-12)
    assert wilson_interval(20, 20)[1] == pytest.approx(1.0)
    lo99, hi99 = wilson_interval(7, 10, confidence=0.99)
    assert lo99 < lo and hi99 > hi
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_ece_all_confident_at_90_percent_and_80_percent_right() -> None:
    proba = np.tile([0.9, 0.05, 0.05], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(y, proba) == pytest.approx(0.1)


def test_ece_weights_each_bin_by_its_count() -> None:
    # 4 samples at confidence 1.0, all right (gap 0); 6 at 0.6 with 3 right (gap 0.1): ECE = 0.6 * 0.1.
    proba = np.array([[1.0, 0.0, 0.0]] * 4 + [[0.6, 0.3, 0.1]] * 6)
    y = np.array([0] * 4 + [0, 0, 0, 1, 1, 2])
    assert expected_calibration_error(y, proba) == pytest.approx(0.06)
    assert math.isnan(expected_calibration_error(np.empty(0, dtype=int), np.empty((0, 3))))


def test_reliability_bins_edges() -> None:
    # Bins are (i/n, (i+1)/n]: 1.0 falls in the last bin, an edge value in the bin it closes.
    proba = np.array([[1.0, 0.0, 0.0], [0.5, 0.3, 0.2], [0.5, 0.5, 0.0], [0.41, 0.3, 0.29], [0.55, 0.45, 0.0]])
    y = np.array([0, 1, 0, 0, 0])
    bins = reliability_bins(y, proba, n_bins=10)
    assert [b["count"] for b in bins] == [3, 1, 1]
    assert [x for b in bins for x in (b["lower"], b["upper"])] == pytest.approx([0.4, 0.5, 0.5, 0.6, 0.9, 1.0])
    assert bins[0]["confidence"] == pytest.approx((0.5 + 0.5 + 0.41) / 3)
    assert bins[0]["accuracy"] == pytest.approx(2 / 3)  # #1 wrong; #2 a tie, argmax takes class 0: right
    assert (bins[2]["confidence"], bins[2]["accuracy"]) == (1.0, 1.0)
    # With the default 15 bins, a confidence of exactly 1.0 or exactly 2/3 = 10/15 stays in its closing bin.
    default = reliability_bins(np.array([0, 0]), np.array([[1.0, 0.0, 0.0], [2 / 3, 1 / 3, 0.0]]))
    assert [x for b in default for x in (b["lower"], b["upper"])] == pytest.approx([9 / 15, 10 / 15, 14 / 15, 1.0])
    assert sum(b["count"] for b in reliability_bins(Y_TRUE, PROBA)) == len(Y_TRUE)


def test_top_confusions_most_frequent_first() -> None:
    cm = np.array([[5, 3, 0], [1, 6, 4], [2, 0, 7]])
    got = top_confusions(cm, CLASSES)
    assert [(c["true"], c["pred"], c["count"]) for c in got] == [
        ("one", "two", 4), ("zero", "one", 3), ("two", "zero", 2), ("one", "zero", 1)]
    assert got[0]["share_of_class"] == pytest.approx(4 / 11)
    assert [c["count"] for c in top_confusions(cm, CLASSES, k=2)] == [4, 3]
    assert top_confusions(np.diag([5, 6, 7]), CLASSES) == []


# ---------------------------------------------------------------------------------------------------------------
# Temperature scaling


def calibrated_logits(n: int = 3000, n_classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): calibrated at T = 1 by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (n, n_classes))
    logits[np.arange(n), rng.integers(0, n_classes, n)] += 3.0
    cdf = np.cumsum(softmax(logits), axis=1)
    labels = np.minimum((cdf < rng.random((n, 1))).sum(axis=1), n_classes - 1)
    return logits, labels


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    return log_loss(labels, softmax(logits, temperature), labels=list(range(logits.shape[1])))


def test_fit_temperature_undoes_over_confidence() -> None:
    logits, labels = calibrated_logits()
    t, before, after = fit_temperature(3 * logits, labels)
    assert 2.5 < t < 3.5
    assert before == pytest.approx(nll(3 * logits, labels, 1.0))
    assert after == pytest.approx(nll(3 * logits, labels, t))
    assert after < before - 0.1


@pytest.mark.parametrize("case", ["calibrated", "under-confident", "constant", "inverted", "separable"])
def test_fit_temperature_never_raises_nll(case: str) -> None:
    logits, labels = calibrated_logits(n=500, seed=1)
    logits = {"calibrated": logits, "under-confident": logits / 4, "constant": np.zeros_like(logits),
              "inverted": -logits, "separable": 20 * np.eye(10)[labels]}[case]
    t, before, after = fit_temperature(logits, labels)
    assert t > 0 and after <= before
    assert nll(logits, labels, t) <= nll(logits, labels, 1.0) + 1e-12


def test_fit_temperature_falls_back_to_1_when_the_search_goes_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    logits, labels = calibrated_logits(n=500)
    # An optimizer answering log T = 3 (T ~ 20) on calibrated logits: worse than leaving them alone.
    monkeypatch.setattr("scipy.optimize.minimize_scalar", lambda *a, **k: SimpleNamespace(x=3.0))
    t, before, after = fit_temperature(logits, labels)
    assert t == 1.0 and after == before == pytest.approx(nll(logits, labels, 1.0))


def test_fit_temperature_on_nothing() -> None:
    t, before, after = fit_temperature(np.empty((0, 10)), np.empty(0, dtype=np.int64))
    assert t == 1.0 and math.isnan(before) and math.isnan(after)


# ---------------------------------------------------------------------------------------------------------------
# Perturbations (synthetic images: no data needed)


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = np.zeros((12, 28, 28), dtype=np.uint8)
    x[:, 6:22, 9:19] = rng.integers(0, 256, size=(12, 16, 10), dtype=np.uint8)
    return x


def test_perturb_keeps_shape_and_dtype_and_identity_levels_change_nothing(blobs: np.ndarray) -> None:
    assert {p.name for p in PERTURBATIONS} == set(IDENTITY)
    for pert in PERTURBATIONS:
        assert IDENTITY[pert.name] in pert.levels
        for level in pert.levels:
            out = perturb(blobs, pert.name, level, seed=3)
            assert out.shape == blobs.shape and out.dtype == np.uint8, (pert.name, level)
            if level == IDENTITY[pert.name]:
                assert np.array_equal(out, blobs), (pert.name, level)
            else:
                assert not np.array_equal(out, blobs), (pert.name, level)


def test_perturb_effects(blobs: np.ndarray) -> None:
    assert np.array_equal(perturb(blobs, "invert", 1), 255 - blobs)
    ink = blobs.astype(np.int64).sum()
    assert perturb(blobs, "thickness", 1).astype(np.int64).sum() > ink
    assert perturb(blobs, "thickness", -1).astype(np.int64).sum() < ink
    assert np.array_equal(perturb(blobs, "noise", 0.3, seed=5), perturb(blobs, "noise", 0.3, seed=5))
    with pytest.raises(ValueError, match="unknown perturbation 'smudge'"):
        perturb(blobs, "smudge", 1)


def test_robustness_sweep_identity_levels_give_the_clean_accuracy(blobs: np.ndarray) -> None:
    # A "model" that reads the class off the total ink: perturbations move it, identity levels must not.
    def predict(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1).astype(np.int64).sum(axis=1) % 3

    labels = np.array([0, 1, 2] * 4)
    clean = float(np.mean(predict(blobs) == labels))
    sweep = robustness_sweep(predict, blobs, labels, n=None, seed=0)
    assert set(sweep) == set(IDENTITY)
    for name, r in sweep.items():
        assert r["n"] == len(labels) and len(r["levels"]) == len(r["accuracy"]) == len(r["labels"])
        assert r["accuracy"][r["levels"].index(IDENTITY[name])] == clean, name


# ---------------------------------------------------------------------------------------------------------------
# CLI failures that need no data


def test_cli_evaluate_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    assert_one_line_error(runner.invoke(app, ["evaluate", str(tmp_path)]), "not a run directory")


def test_cli_evaluate_bogus_split(tmp_path: Path) -> None:
    assert_one_line_error(runner.invoke(app, ["evaluate", str(tmp_path), "--split", "bogus"]), "--split")


def test_cli_compare_needs_runs() -> None:
    assert_one_line_error(runner.invoke(app, ["compare"]), "Missing argument")


def test_cli_report_on_a_run_not_evaluated(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(dump_config(config_from_recipe("knn")))
    assert_one_line_error(runner.invoke(app, ["report", str(tmp_path)]), "not evaluated yet")


# ---------------------------------------------------------------------------------------------------------------
# Tiny real runs, trained and evaluated once for the module


@pytest.fixture(scope="module")
def runs(mnist_dataset, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A small CNN calibrated and evaluated by the library with a robustness sweep; a k-NN calibrated and
    evaluated through the CLI; a second k-NN seed calibrated, left unevaluated (compare evaluates it). Every
    fit_temperature call is recorded, and the CNN's files are hashed before evaluate."""
    root = tmp_path_factory.mktemp("runs")
    fits: list[tuple[np.ndarray, np.ndarray]] = []
    real_fit = rejection_module.fit_temperature

    def spy(logits: np.ndarray, y_true: np.ndarray) -> tuple[float, float, float]:
        fits.append((np.array(logits), np.array(y_true)))
        return real_fit(logits, y_true)

    with pytest.MonkeyPatch.context() as mp:  # the function-scoped hermetic fixture does not reach here
        mp.setenv("DIGITLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("DIGITLAB_MIRRORS", "http://127.0.0.1:9/")
        mp.setattr(rejection_module, "fit_temperature", spy)

        def train(recipe: str, *overrides: str) -> Path:
            cfg = config_from_recipe(recipe, [*TINY, *overrides])
            return Path(train_run(cfg, out_root=root / recipe, show_progress=False).run_dir)

        cnn = train("fast", *SMALL_FAST)
        knn = train("knn")
        knn_seed1 = train("knn", "seed=1", "data.split_seed=1")
        calibrate_run(cnn)
        knn_calibrate_cli = runner.invoke(app, ["calibrate", str(knn)])
        calibrate_run(knn_seed1)
        cnn_hashes = file_hashes(cnn)
        cnn_eval = evaluate_run(cnn, robustness=True, robustness_samples=ROBUSTNESS_SAMPLES)
        knn_cli = runner.invoke(app, ["evaluate", str(knn)])
    return SimpleNamespace(root=root, cnn=cnn, knn=knn, knn_seed1=knn_seed1, cnn_eval=cnn_eval, knn_cli=knn_cli,
                           knn_calibrate_cli=knn_calibrate_cli, fits=fits, cnn_hashes=cnn_hashes)


def file_hashes(run: Path) -> dict[str, str]:
    """SHA-256 of every file in a run directory, by relative path."""
    return {str(f.relative_to(run)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(run.rglob("*")) if f.is_file()}


@pytest.mark.mnist
def test_evaluate_writes_nothing_outside_eval(runs: SimpleNamespace) -> None:
    after = file_hashes(runs.cnn)
    outside = {k: v for k, v in after.items() if not k.startswith("eval/")}
    assert outside == runs.cnn_hashes  # not one file outside eval/ added, removed or changed
    assert any(k.startswith("eval/") for k in after) and not any(k.startswith("eval/") for k in runs.cnn_hashes)


@pytest.mark.mnist
def test_evaluate_refuses_a_run_never_calibrated(runs: SimpleNamespace, tmp_path: Path) -> None:
    run = Path(shutil.copytree(runs.knn, tmp_path / "uncalibrated", ignore=shutil.ignore_patterns("eval")))
    (run / REJECTION_FILE).unlink()
    assert_one_line_error(runner.invoke(app, ["evaluate", str(run)]), "digitlab calibrate")


@pytest.fixture(scope="module")
def board(runs: SimpleNamespace) -> dict:
    return compare_runs([runs.cnn, runs.knn, runs.knn_seed1], out=runs.root / "compare")


class NoPlots:
    """Stands in for the plots module: every plot_* function draws nothing and returns its path argument."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: args[-1]


def read_eval(run: Path) -> dict:
    return json.loads((run / "eval" / "metrics.json").read_text())


@pytest.mark.mnist
def test_cli_evaluate_prints_accuracy_and_the_folder(runs: SimpleNamespace) -> None:
    result = runs.knn_cli
    assert result.exit_code == 0, result.output
    m = read_eval(runs.knn)
    assert f"test accuracy: {m['accuracy']:.4f}" in result.stdout
    assert f"written: {runs.knn / 'eval'}" in result.stdout


@pytest.mark.mnist
@pytest.mark.parametrize("which", ["cnn", "knn"])
def test_metrics_agree_with_sklearn(runs: SimpleNamespace, mnist_dataset, which: str) -> None:
    run = getattr(runs, which)
    m = read_eval(run)
    predictor = Predictor.from_run(run)
    images, y = mnist_dataset.test_images, mnist_dataset.test_labels.astype(np.int64)
    proba = predictor.predict_proba(images, calibrated=False)
    y_pred = proba.argmax(axis=1)
    assert m["split"] == "test" and m["n"] == len(y) == 10_000
    assert m["accuracy"] == accuracy_score(y, y_pred)
    assert m["errors"] == int((y_pred != y).sum())
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, y_pred))
    assert m["macro_avg"]["f1"] == pytest.approx(f1_score(y, y_pred, average="macro"))
    assert m["log_loss"] == pytest.approx(log_loss(y, proba), rel=1e-6)
    if which == "cnn":  # (k-NN's below: the softmax of its floored log-votes breaks their ties by ~1e-12)
        assert m["roc_auc"]["macro"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"), abs=1e-9)
    assert m["confusion_matrix"] == confusion_matrix(y, y_pred).tolist()
    t = m["calibration"]["temperature"]
    assert m["calibration"]["log_loss_after"] == pytest.approx(log_loss(y, predictor.predict_proba(images)), rel=1e-6)
    assert predictor.rejection is not None and predictor.temperature == t
    if which == "knn":
        # A classical model's ROC comes from its own predict_proba (k-NN votes: many ties between images).
        own = predictor.model.pipeline.predict_proba(images.reshape(len(images), -1))
        assert m["roc_auc"]["macro"] == pytest.approx(roc_auc_score(y, own, multi_class="ovr"), abs=1e-9)
        assert m["accuracy"] == accuracy_score(y, own.argmax(axis=1))


@pytest.mark.mnist
@pytest.mark.parametrize("which", ["cnn", "knn"])
def test_every_listed_figure_is_a_png(runs: SimpleNamespace, which: str) -> None:
    run = getattr(runs, which)
    figures = read_eval(run)["figures"]
    expected = {"confusion_matrix", "roc_curves", "pr_curves", "reliability", "confident_mistakes",
                "common_confusions", "predictions", "learning_curves"} | ({"robustness"} if which == "cnn" else set())
    assert set(figures) == expected
    for name in figures.values():
        assert_png(run / "eval" / name)


@pytest.mark.mnist
@pytest.mark.parametrize("which", ["cnn", "knn"])
def test_the_rejection_file_holds_the_temperature(runs: SimpleNamespace, mnist_dataset, which: str) -> None:
    run = getattr(runs, which)
    m = read_eval(run)
    stored = load_rejection(run / REJECTION_FILE).policy
    assert stored.temperature == m["calibration"]["temperature"] > 0
    assert "validation" in stored.fitted_on and stored.n_val == N_VAL
    assert stored.nll_after <= stored.nll_before
    # a network gets a non-digit detector, its threshold beside the (relaxed) confidence one; a classical
    # model the confidence threshold alone
    rej = m["rejection"]
    assert stored.confidence_threshold == rej["threshold"] and stored.rule == rej["rule"]
    if which == "cnn":
        assert stored.detector_threshold == rej["detector_threshold"] is not None
        # 400 training digits and 400 non-digits, and each again as read back through the preparation
        # (those where the preparation finds nothing are left out)
        assert 700 <= rej["detector"]["n_digits"] <= 800 and 600 <= rej["detector"]["n_nondigits"] <= 800
        assert rej["val_rejected"] <= 0.007 and 0 <= rej["rejected"] <= 1
    else:
        assert stored.detector_threshold is None and rej["detector"] is None
        assert runs.knn_calibrate_cli.exit_code == 0, runs.knn_calibrate_cli.output
        assert "rejection: temperature" in runs.knn_calibrate_cli.stdout
    predictor = Predictor.from_run(run)
    images = mnist_dataset.test_images[:50]
    np.testing.assert_allclose(predictor.predict_proba(images),
                               softmax(predictor.logits(images), stored.temperature), rtol=1e-12)


@pytest.mark.mnist
def test_temperature_is_fitted_on_the_validation_split(runs: SimpleNamespace, mnist_dataset) -> None:
    _, val_idx = split_train_val(mnist_dataset.train_labels, n_val=N_VAL, seed=0)
    assert len(runs.fits) == 3  # the CNN, the k-NN through the CLI, the second k-NN (another split seed)
    for run, (logits, labels) in zip((runs.cnn, runs.knn), runs.fits[:2], strict=True):
        assert np.array_equal(labels, mnist_dataset.train_labels[val_idx])
        expected = Predictor.from_run(run).logits(mnist_dataset.train_images[val_idx])
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.mnist
def test_garbage_in_the_test_split_does_not_move_the_temperature(runs: SimpleNamespace, mnist_dataset,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    run = Path(shutil.copytree(runs.knn, tmp_path / runs.knn.name))
    before = (run / REJECTION_FILE).read_bytes()
    rng = np.random.default_rng(1)
    garbage = dataclasses.replace(mnist_dataset, test_images=rng.integers(0, 256, (300, 28, 28), dtype=np.uint8),
                                  test_labels=rng.integers(0, 10, 300).astype(np.uint8))
    monkeypatch.setattr(evaluate_module, "load_dataset", lambda *a, **k: garbage)
    monkeypatch.setattr(evaluate_module, "plots", NoPlots())  # figures are not the point here, and cost seconds
    m = evaluate_run(run)
    assert m["n"] == 300 and m["accuracy"] < 0.3  # the garbage was measured...
    assert (run / REJECTION_FILE).read_bytes() == before  # ...and chose nothing
    assert m["calibration"]["temperature"] == load_rejection(run / REJECTION_FILE).temperature


@pytest.mark.mnist
def test_robustness_results(runs: SimpleNamespace, mnist_dataset) -> None:
    m = read_eval(runs.cnn)
    assert m == json.loads(json.dumps(runs.cnn_eval))  # what evaluate_run returned is what it wrote
    rob = m["robustness"]
    assert list(rob) == [p.name for p in PERTURBATIONS]
    # The sweep's documented sample: ROBUSTNESS_SAMPLES test images drawn with the run's seed.
    rng = np.random.default_rng(m["seed"])
    keep = np.sort(rng.choice(len(mnist_dataset.test_labels), size=ROBUSTNESS_SAMPLES, replace=False))
    pred = Predictor.from_run(runs.cnn).classify(mnist_dataset.test_images[keep])
    clean = float(np.mean(pred == mnist_dataset.test_labels[keep]))
    for pert in PERTURBATIONS:
        r = rob[pert.name]
        assert r["levels"] == [float(v) for v in pert.levels] and r["n"] == ROBUSTNESS_SAMPLES
        assert len(r["accuracy"]) == len(r["levels"]) and all(0.0 <= a <= 1.0 for a in r["accuracy"])
        assert r["accuracy"][r["levels"].index(IDENTITY[pert.name])] == clean, pert.name
    assert rob["invert"]["accuracy"][1] < clean


@pytest.mark.mnist
def test_compare_groups_seeds_and_ranks(runs: SimpleNamespace, board: dict) -> None:
    out = runs.root / "compare"
    assert (runs.knn_seed1 / "eval" / "metrics.json").is_file(), "compare evaluates a run not evaluated yet"
    assert json.loads((out / "leaderboard.json").read_text()) == json.loads(json.dumps(board))
    rows = {r["name"]: r for r in board["rows"]}
    assert set(rows) == {"fast", "knn"}
    knn_accs = [read_eval(runs.knn)["accuracy"], read_eval(runs.knn_seed1)["accuracy"]]
    knn = rows["knn"]
    assert knn["n_runs"] == 2 and knn["seeds"] == [0, 1]
    assert knn["accuracy"] == pytest.approx(statistics.mean(knn_accs))
    assert knn["accuracy_std"] == pytest.approx(statistics.stdev(knn_accs))
    assert rows["fast"]["n_runs"] == 1 and rows["fast"]["accuracy_std"] is None
    accs = [r["accuracy"] for r in board["rows"]]
    assert accs == sorted(accs, reverse=True) and [r["rank"] for r in board["rows"]] == [1, 2]

    recs = {r["criterion"]: r for r in board["recommendations"]}
    assert set(recs) == CRITERIA
    assert recs["most accurate"]["name"] == board["rows"][0]["name"]
    assert recs["smallest"]["name"] == min(board["rows"], key=lambda r: r["size_bytes"])["name"]
    assert recs["best calibrated"]["name"] == min(board["rows"], key=lambda r: r["ece"])["name"]
    assert all(rec["text"] for rec in recs.values())

    assert set(board["figures"]) == {"accuracy_vs_time", "accuracy_vs_size", "f1_heatmap"}
    for name in board["figures"].values():
        assert_png(out / name)
    md = (out / "leaderboard.md").read_text().splitlines()
    assert md[0].startswith("| # | recipe | model | test accuracy |") and md[1] == "|" + "---|" * 10
    table = [line for line in md if line.startswith("| ") and line[2].isdigit()]
    assert [line.split(" | ")[1] for line in table] == [r["name"] for r in board["rows"]]
    assert "(2 seeds)" in "".join(table)


def check_html(html: str, section_ids: tuple[str, ...], n_figures: int) -> None:
    for sid in section_ids:
        assert f'<h2 id="{sid}">' in html, sid
    srcs = re.findall(r'<img[^>]*\bsrc="([^"]*)"', html)
    assert len(srcs) == n_figures
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_SIGNATURE
    assert "http://" not in html and "https://" not in html


def check_markdown(md_path: Path, figures: dict[str, str]) -> None:
    md = md_path.read_text()
    assert "## Findings" in md and "data:image" not in md
    for name in figures.values():  # figures sit next to the report: referenced by bare relative name
        assert f"]({name})" in md and (md_path.parent / name).is_file()


@pytest.mark.mnist
@pytest.mark.parametrize("which", ["cnn", "knn"])
def test_report_for_a_run(runs: SimpleNamespace, which: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no runs/data-mnist explore output is picked up from the working directory
    run = getattr(runs, which)
    m = read_eval(run)
    html_path, md_path = write_report(run)
    assert html_path == run / "eval" / "report.html" and md_path == run / "eval" / "report.md"
    html = html_path.read_text()
    swept = ("robustness",) if which == "cnn" else ()
    check_html(html, RUN_SECTIONS + swept, n_figures=len(m["figures"]))
    assert ('id="robustness"' in html) == bool(swept)
    check_markdown(md_path, m["figures"])
    assert f"{100 * m['accuracy']:.2f}%" in html
    if which == "knn":  # one fit, validation accuracy only: no train/validation gap can be claimed
        assert "Training: one fit, validation accuracy" in html and "(gap " not in html
    else:
        assert "over-fitting (gap " in html


@pytest.mark.mnist
def test_report_for_a_compare_folder(runs: SimpleNamespace, board: dict) -> None:
    out = runs.root / "compare"
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    html_path, md_path = out / "report.html", out / "report.md"
    assert f"report: {html_path}" in result.stdout
    html = html_path.read_text()
    check_html(html, ("findings", "leaderboard", "figures"), n_figures=len(board["figures"]))
    for rec in board["recommendations"]:
        assert rec["name"] in html
    check_markdown(md_path, board["figures"])
    assert "| # | recipe |" in md_path.read_text()


# ---------------------------------------------------------------------------------------------------------------
# Review findings: the SVM's decision function, corrupt files, duplicate runs, missing classes


@pytest.mark.mnist
def test_svm_roc_ranks_by_the_decision_function(mnist_dataset, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(evaluate_module, "plots", NoPlots())
    cfg = config_from_recipe("svm", TINY)
    run = Path(train_run(cfg, out_root=tmp_path, show_progress=False).run_dir)
    calibrate_run(run)
    m = evaluate_run(run)
    predictor = Predictor.from_run(run)
    decision = predictor.model.pipeline.decision_function(mnist_dataset.test_images.reshape(10000, -1))
    onehot = np.eye(10)[mnist_dataset.test_labels]
    assert m["roc_auc"]["macro"] == pytest.approx(roc_auc_score(onehot, decision, average="macro"), abs=1e-12)
    assert m["roc_auc"]["per_class"]["3"] == pytest.approx(roc_auc_score(onehot[:, 3], decision[:, 3]), abs=1e-12)
    assert m["inference"]["device"] == "cpu"


@pytest.mark.mnist
def test_corrupt_files_are_one_line_errors(runs: SimpleNamespace, tmp_path: Path) -> None:
    run = Path(shutil.copytree(runs.cnn, tmp_path / "run"))
    (run / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n')
    assert_one_line_error(runner.invoke(app, ["evaluate", str(run)]), "metrics.jsonl")
    shutil.copy(runs.cnn / "metrics.jsonl", run / "metrics.jsonl")
    (run / "model.safetensors").write_bytes(b"\x00" * 64)
    assert_one_line_error(runner.invoke(app, ["evaluate", str(run)]), "model.safetensors")
    (run / "model.json").write_text("{")
    assert_one_line_error(runner.invoke(app, ["evaluate", str(run)]), "model.json")
    (run / "eval" / "metrics.json").write_text('{"accuracy": 0.5}')
    assert_one_line_error(runner.invoke(app, ["compare", str(run), "--out", str(tmp_path / "c")]), "metrics.json")


@pytest.mark.mnist
def test_compare_counts_a_run_once_and_refuses_a_repeated_seed(runs: SimpleNamespace, board: dict,
                                                             tmp_path: Path) -> None:
    again = compare_runs([runs.knn, runs.knn, runs.cnn], out=tmp_path / "once")
    assert {r["name"]: r["n_runs"] for r in again["rows"]} == {"fast": 1, "knn": 1}
    copy = Path(shutil.copytree(runs.knn, tmp_path / "copy"))
    assert_one_line_error(runner.invoke(app, ["compare", str(runs.knn), str(copy), "--out", str(tmp_path / "c")]),
                          "same seed")


def test_classical_scores_keep_class_columns_when_training_lacked_a_class() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (60, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 4] * 15)  # class 3 never seen
    for name in ("knn", "svm"):
        model = create_model(name, n_classes=5).fit(images, labels)
        scores = model.predict_scores(images[:7])
        assert scores.shape == (7, 5)
        assert np.all(scores[:, 3] < scores.max(axis=1))
        assert set(scores.argmax(axis=1)) <= {0, 1, 2, 4}


def test_cuda_asked_for_without_cuda_is_a_config_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="no CUDA"):
        resolve_device("cuda")


def test_runs_evaluated_before_an_option_existed_still_group_with_newer_ones() -> None:
    from digitlab.core.config import RunConfig
    from digitlab.evaluation.compare import _group_key

    new = {"recipe": "default", "dataset": "mnist", "config": RunConfig(recipe="default").model_dump(mode="json")}
    old_cfg = RunConfig(recipe="default", seed=1).model_dump(mode="json")
    del old_cfg["augment"]["stroke"]  # written by a digitlab without that option
    old = {**new, "config": old_cfg}
    assert _group_key(new) == _group_key(old)
    other = {**new, "config": RunConfig(recipe="default", augment={"stroke": 0.3}).model_dump(mode="json")}
    assert _group_key(new) != _group_key(other)
