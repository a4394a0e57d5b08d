"""``digitlab evaluate``: metrics, calibration, figures (and robustness) of one run, in ``RUN/eval/``.

Usage::

    summary = evaluate_run("runs/20261121-101500-cnn-default", robustness=True)
    summary["accuracy"], summary["figures"]["confusion_matrix"]

Evaluation only measures: it reads the run (its weights and the rejection that ``digitlab train`` or
``digitlab calibrate`` fitted on validation data, ``inference.rejection``) and writes nothing outside
``RUN/eval/``. The test split is read here and nowhere else.
"""

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from digitlab.core.config import ConfigError, RunConfig, read_run_config
from digitlab.core.errors import DigitlabError
from digitlab.core.rundir import RunDir, RunDirError
from digitlab.data.loading import Dataset, load_dataset
from digitlab.data.splits import split_train_val
from digitlab.evaluation import plots
from digitlab.evaluation.metrics import (
    ECE_BINS,
    classification_metrics,
    reliability_bins,
    top_confusions,
)
from digitlab.evaluation.robustness import robustness_sweep
from digitlab.inference.predictor import Predictor
from digitlab.inference.rejection import softmax

EVAL_DIR = "eval"
METRICS_FILE = "metrics.json"
THROUGHPUT_BATCH = 1000
REJECT_CURVE = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)  # confidences of the coverage / error table


class EvaluationError(DigitlabError):
    """A run that cannot be evaluated (missing model, unknown dataset, mismatched classes)."""


def run_config(run: RunDir) -> RunConfig:
    """The resolved config the run was trained with."""
    try:
        return read_run_config(run.file(RunDir.CONFIG))
    except ConfigError as e:
        raise EvaluationError(str(e)) from None


def read_metrics_rows(run: RunDir) -> list[dict[str, Any]]:
    """The run's per-epoch rows ([] when it has none).

    Raises:
        EvaluationError: a metrics.jsonl that is not one JSON object with an epoch per line.
    """
    try:
        rows = run.read_metrics()
    except (OSError, ValueError) as e:
        raise EvaluationError(f"{run.file(RunDir.METRICS)}: unreadable: {e}") from None
    if not all(isinstance(r, dict) and "epoch" in r for r in rows):
        raise EvaluationError(f"{run.file(RunDir.METRICS)}: a line without an epoch number")
    return rows


def _timed_logits(predictor: Predictor, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Logits of every image, and the inference rate in images/s: the best of three timed passes over
    up to 5,000 images (1,000 for the slower classical models) after a warm-up batch, so that a
    moment of contention on a shared machine does not become the figure."""
    logits = predictor.logits(images, batch_size=THROUGHPUT_BATCH)
    sample = images[: 1000 if predictor.kind == "classical" else 5000]
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        predictor.logits(sample, batch_size=THROUGHPUT_BATCH)
        best = min(best, time.perf_counter() - start)
    return logits, len(sample) / max(best, 1e-9)


def require_rejection(predictor: Predictor, run_path: Path) -> Any:
    """The run's fitted rejection policy (what evaluation measures, never fits).

    Raises:
        EvaluationError: the run has none yet.
    """
    if predictor.rejection is None:
        raise EvaluationError(f"{run_path}: no rejection fitted yet; run `digitlab calibrate {run_path}` first "
                              "(digitlab train does it at its end)")
    return predictor.rejection.policy


def evaluate_run(path: str | os.PathLike[str], *, dataset: str | None = None, split: Literal["test", "val"] = "test",
                 robustness: bool = False, robustness_samples: int | None = 2000, data_dir: str | None = None,
                 device: str = "auto", log: Any = None) -> dict[str, Any]:
    """Evaluate a trained, calibrated run; writes ``RUN/eval/metrics.json`` and the figures, returns the metrics.

    Args:
        dataset: evaluate on another dataset of the same format (default: the one it was trained on).
        split: ``test`` (default) or ``val``.
        robustness: also sweep perturbations (rotation, shift, scale, noise, blur, thickness,
            occlusion, inversion) over ``robustness_samples`` test images.
        log: a callable taking one progress line (the CLI passes a stderr printer), or None.

    Raises:
        EvaluationError, PredictorError, DataError: one line each (a run without a rejection file is
        one: `digitlab calibrate RUN` fits it).
    """
    say = log or (lambda _msg: None)
    steps = 4 if robustness else 3
    run = RunDir.open(path)
    cfg = run_config(run)
    rows = read_metrics_rows(run)  # every input is checked before the long work starts
    predictor = Predictor.from_run(run.path, device=device)
    policy = require_rejection(predictor, run.path)
    trained_on = predictor.info.dataset or cfg.data.dataset
    name = dataset or trained_on
    # another dataset is not looked for in the folder the training data came from
    say(f"[1/{steps}] loading {name}")
    ds: Dataset = load_dataset(name, data_dir or (cfg.data.data_dir if name == trained_on else None))
    if ds.spec.n_classes != predictor.n_classes:
        raise EvaluationError(f"dataset {name} has {ds.spec.n_classes} classes; the model predicts "
                              f"{predictor.n_classes}")
    class_names = list(ds.spec.class_names)
    _, val_idx = split_train_val(ds.train_labels, n_val=cfg.data.n_val, seed=cfg.data.split_seed)
    if split == "test":
        images, labels = ds.test_images, ds.test_labels.astype(np.int64)
    elif len(val_idx):
        images, labels = ds.train_images[val_idx], ds.train_labels[val_idx].astype(np.int64)
    else:
        raise EvaluationError(f"{run.path}: trained with data.n_val=0, so there is no validation split to measure")

    say(f"[2/{steps}] {split}: reading {len(labels):,} images")
    logits, rate = _timed_logits(predictor, images)
    preds = predictor.predict(images, batch_size=THROUGHPUT_BATCH)
    say(f"[2/{steps}] {split}: {len(labels):,} images, {rate:,.0f} images/s")
    proba = softmax(logits)
    proba_cal = preds.proba
    # ROC and PR rank by the model's own scores: the SVM's decision function, others' probabilities
    ranking = logits if predictor.kind == "classical" else proba
    m = classification_metrics(labels, proba, class_names, ranking_scores=ranking)
    cal = classification_metrics(labels, proba_cal, class_names)
    cm = np.asarray(m["confusion_matrix"])
    results = _read_results(run)
    out: dict[str, Any] = {
        "run": str(run.path),
        "recipe": cfg.recipe,
        "model": predictor.name,
        "kind": predictor.kind,
        "n_params": predictor.info.n_params,
        "size_bytes": model_size_bytes(run.path),
        "train_seconds": results.get("train_seconds"),
        "seed": cfg.seed,
        "config": cfg.model_dump(mode="json"),
        "dataset": name,
        "split": split,
        "class_names": class_names,
        "dataset_summary": _dataset_summary(ds, len(val_idx), cfg.data.train_subset),
        **m,
        "calibration": {
            "bins": ECE_BINS,
            "ece_before": m["ece"],
            "ece_after": cal["ece"],
            "log_loss_after": cal["log_loss"],
            "temperature": policy.temperature,
            "fitted_on": policy.fitted_on + (" (the measured split itself)" if split == "val" else ""),
            "val_nll_before": policy.nll_before,
            "val_nll_after": policy.nll_after,
            "reliability_before": reliability_bins(labels, proba),
            "reliability_after": reliability_bins(labels, proba_cal),
        },
        "rejection": _rejection(policy, preds, labels),
        "top_confusions": top_confusions(cm, class_names),
        "inference": {"images_per_s": rate, "device": str(predictor.device), "batch_size": THROUGHPUT_BATCH},
    }

    # 3. figures
    eval_dir = run.path / EVAL_DIR
    eval_dir.mkdir(exist_ok=True)
    say(f"[3/{steps}] figures")
    y_pred = proba.argmax(axis=1)
    figures = {
        "confusion_matrix": plots.plot_confusion_matrix(cm, class_names, eval_dir / "confusion_matrix.png"),
        "roc_curves": plots.plot_roc_curves(labels, ranking, class_names, eval_dir / "roc_curves.png"),
        "pr_curves": plots.plot_pr_curves(labels, ranking, class_names, eval_dir / "pr_curves.png"),
        "reliability": plots.plot_reliability(labels, proba, proba_cal, eval_dir / "reliability.png",
                                              ece_before=m["ece"], ece_after=cal["ece"],
                                              temperature=policy.temperature),
        "confident_mistakes": plots.plot_confident_mistakes(images, labels, proba, class_names,
                                                            eval_dir / "confident_mistakes.png"),
        "common_confusions": plots.plot_common_confusions(images, labels, y_pred, class_names,
                                                          eval_dir / "common_confusions.png"),
        "predictions": plots.plot_prediction_grid(images, labels, y_pred, proba, class_names,
                                                  eval_dir / "predictions.png", seed=cfg.seed),
    }
    if rows:
        figures["learning_curves"] = plots.plot_learning_curves(rows, eval_dir / "learning_curves.png")

    # 4. robustness
    if robustness:
        say(f"[4/{steps}] robustness sweep on {min(robustness_samples or len(labels), len(labels)):,} images")
        sweep = robustness_sweep(predictor.classify, images, labels, n=robustness_samples, seed=cfg.seed,
                                 spec=predictor.spec, log=say)
        out["robustness"] = sweep
        figures["robustness"] = plots.plot_robustness(sweep, eval_dir / "robustness.png")
    else:
        previous = _previous(eval_dir)
        if previous.get("robustness") and previous.get("split") == split and previous.get("dataset") == name:
            out["robustness"] = previous["robustness"]  # keep an earlier sweep of the same model and data
            if (eval_dir / "robustness.png").is_file():
                figures["robustness"] = eval_dir / "robustness.png"
    out["figures"] = {k: Path(v).name for k, v in figures.items()}
    out = _finite(out)
    run.write_json(f"{EVAL_DIR}/{METRICS_FILE}", out)
    return out


def _rejection(policy: Any, preds: Any, labels: np.ndarray) -> dict[str, Any]:
    """The fitted rejection rule (``policy``, chosen on validation) as measured on this split, and the
    coverage / error trade-off of plain confidence thresholds beside it."""
    conf = preds.confidence
    wrong = preds.indices != labels
    curve = []
    for t in REJECT_CURVE:
        kept = conf >= t
        curve.append({"threshold": t, "coverage": float(kept.mean()),
                      "error_kept": float(wrong[kept].mean()) if kept.any() else 0.0,
                      "errors_rejected": int((wrong & ~kept).sum())})
    kept = ~preds.rejected
    out: dict[str, Any] = {
        "rule": policy.rule, "threshold": policy.confidence_threshold,
        "detector_threshold": policy.detector_threshold, "val_rejected": policy.val_rejected,
        "coverage": float(kept.mean()), "rejected": float(1.0 - kept.mean()),
        "error_kept": float(wrong[kept].mean()) if kept.any() else 0.0,
        "errors_rejected": int((wrong & ~kept).sum()), "error_all": float(wrong.mean()), "errors": int(wrong.sum()),
        "curve": curve,
        "detector": policy.detector.model_dump() if policy.detector else None,
    }
    if preds.nondigit_score is not None and policy.detector_threshold is not None:
        out["detector_rejected"] = float((preds.nondigit_score > policy.detector_threshold).mean())
    return out


def _read_results(run: RunDir) -> dict[str, Any]:
    """results.json, or {} for a run without one (its training time is then unknown)."""
    try:
        return run.read_json(RunDir.RESULTS) if run.file(RunDir.RESULTS).is_file() else {}
    except RunDirError:
        return {}


def _previous(eval_dir: Path) -> dict[str, Any]:
    """The last evaluation's metrics, or {} (they only lend an earlier robustness sweep)."""
    try:
        return RunDir(eval_dir).read_json(METRICS_FILE)
    except RunDirError:
        return {}


def _dataset_summary(ds: Dataset, n_val: int, train_subset: int | None) -> dict[str, Any]:
    names = list(ds.spec.class_names)
    counts = np.bincount(ds.test_labels, minlength=len(names))
    return {
        "name": ds.spec.name,
        "n_train": min(len(ds.train_labels) - n_val, train_subset or len(ds.train_labels)),  # what training used
        "n_val": n_val,
        "n_test": len(ds.test_labels),
        "test_class_counts": {names[i]: int(c) for i, c in enumerate(counts)},
    }


def model_size_bytes(run_path: str | os.PathLike[str]) -> int | None:
    """Bytes of the saved model (weights or skops file)."""
    for name in (RunDir.WEIGHTS, "model.skops"):
        p = Path(run_path) / name
        if p.is_file():
            return p.stat().st_size
    return None


def _finite(obj: Any) -> Any:
    """JSON has no NaN: undefined values become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def load_eval(run_path: str | os.PathLike[str]) -> dict[str, Any]:
    """A run's ``eval/metrics.json``.

    Raises:
        EvaluationError: the run was not evaluated yet.
    """
    path = Path(run_path) / EVAL_DIR / METRICS_FILE
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        raise EvaluationError(f"{run_path}: no readable {EVAL_DIR}/{METRICS_FILE}; run `digitlab evaluate` "
                              "first") from None
    missing = [k for k in _REQUIRED if not isinstance(m, dict) or k not in m]
    if missing:
        raise EvaluationError(f"{path}: not written by this digitlab (no {', '.join(missing)}); run `digitlab "
                              "evaluate` again")
    return m


_REQUIRED = ("run", "model", "kind", "dataset", "split", "class_names", "accuracy", "errors", "accuracy_ci95",
             "per_class", "macro_avg", "calibration", "inference", "figures")
