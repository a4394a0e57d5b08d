"""``digitlab evaluate``: metrics, calibration, figures (and robustness) of one run, in ``RUN/eval/``.

Usage::

    summary = evaluate_run("runs/20261121-101500-cnn-default", robustness=True)
    summary["accuracy"], summary["figures"]["confusion_matrix"]

The temperature is fitted on the run's validation split (the same stratified, seeded split that
training carved) and stored in the run (``calibration.json``); the test split is read only to be
measured, after everything is fixed. For a network, a non-digit detector is fitted next (the
run's training digits against the library's synthetic non-digits, ``inference.detector``) and
stored as ``detector.safetensors``; the rejection rule, ``confidence < t OR nondigit_score > t_det``,
takes both thresholds from validation digits.
"""

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from digitlab.core.config import ConfigError, RunConfig, read_run_config
from digitlab.core.errors import DigitlabError
from digitlab.core.rundir import RunDir, RunDirError
from digitlab.data.loading import Dataset, load_dataset
from digitlab.data.nondigits import cached_nondigits
from digitlab.data.splits import split_train_val
from digitlab.evaluation import plots
from digitlab.evaluation.metrics import (
    ECE_BINS,
    classification_metrics,
    fit_temperature,
    reliability_bins,
    top_confusions,
)
from digitlab.evaluation.robustness import robustness_sweep
from digitlab.inference.detector import (
    DETECTOR_FILE,
    NonDigitDetector,
    fit_detector,
    rejection_thresholds,
    save_detector,
)
from digitlab.inference.predictor import Calibration, Predictor, write_calibration

EVAL_DIR = "eval"
METRICS_FILE = "metrics.json"
THROUGHPUT_BATCH = 1000
REJECT_VAL_RATE = 0.007  # the threshold rejects 0.7% of validation digits: 0.72-0.90% of test digits (3 seeds)
# With the detector: the confidence threshold alone rejects 0.3% of validation digits, the detector the
# rest of REJECT_VAL_RATE (benchmarks/explore_ood.py: 0.3% and 0% for confidence alone did alike; 0.7%
# left the detector no room, 80% of non-digits rejected instead of 91%).
RELAXED_SOFTMAX_RATE = 0.003
DETECTOR_NONDIGITS = 8000  # synthetic non-digits the detector learns from (at most as many as training digits)
NONDIGITS_SEED = 0  # one cached bank for every run (digitlab.data.nondigits)
DIGIT_CLASSES = [str(d) for d in range(10)]
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


def _timed_scores(predictor: Predictor, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Scores of every image, and the inference rate in images/s: the best of three timed passes over
    up to 5,000 images (1,000 for the slower classical models) after a warm-up batch, so that a
    moment of contention on a shared machine does not become the figure."""
    scores = predictor.scores(images, batch_size=THROUGHPUT_BATCH)
    sample = images[: 1000 if predictor.kind == "classical" else 5000]
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        predictor.scores(sample, batch_size=THROUGHPUT_BATCH)
        best = min(best, time.perf_counter() - start)
    return scores, len(sample) / max(best, 1e-9)


def evaluate_run(path: str | os.PathLike[str], *, dataset: str | None = None, split: Literal["test", "val"] = "test",
                 robustness: bool = False, robustness_samples: int | None = 2000, data_dir: str | None = None,
                 device: str = "auto", log: Any = None) -> dict[str, Any]:
    """Evaluate a trained run; writes ``RUN/eval/metrics.json`` and the figures, returns the metrics.

    Args:
        dataset: evaluate on another dataset of the same format (default: the one it was trained on).
        split: ``test`` (default) or ``val``.
        robustness: also sweep perturbations (rotation, shift, scale, noise, blur, thickness,
            occlusion, inversion) over ``robustness_samples`` test images.
        log: a callable taking one progress line (the CLI passes a stderr printer), or None.

    Raises:
        EvaluationError, PredictorError, DataError: one line each.
    """
    say = log or (lambda _msg: None)
    run = RunDir.open(path)
    cfg = run_config(run)
    rows = read_metrics_rows(run)  # every input is checked before the long work starts
    predictor = Predictor.from_run(run.path, device=device)
    trained_on = predictor.info.get("dataset") or cfg.data.dataset
    name = dataset or trained_on
    # another dataset is not looked for in the folder the training data came from
    ds: Dataset = load_dataset(name, data_dir or (cfg.data.data_dir if name == trained_on else None))
    if ds.spec.n_classes != predictor.n_classes:
        raise EvaluationError(f"dataset {name} has {ds.spec.n_classes} classes; the model predicts "
                              f"{predictor.n_classes}")
    class_names = list(ds.spec.class_names)

    # 1. the temperature, fitted on validation only
    train_idx, val_idx = split_train_val(ds.train_labels, n_val=cfg.data.n_val, seed=cfg.data.split_seed)
    val_images, val_labels = ds.train_images[val_idx], ds.train_labels[val_idx].astype(np.int64)
    if len(val_labels):
        say(f"validation: {len(val_idx):,} images, fitting the temperature")
        val_scores = predictor.scores(val_images)
        temperature, nll_before, nll_after = fit_temperature(predictor.to_logits(val_scores), val_labels)
    elif split == "val":
        raise EvaluationError(f"{run.path}: trained with data.n_val=0, so there is no validation split to measure")
    else:
        say("no validation split (data.n_val=0): no temperature scaling")
        temperature, nll_before, nll_after = 1.0, math.nan, math.nan

    # 1b. the non-digit detector (networks), stored with the calibration: fitted on this data only
    stores_calibration = bool(len(val_labels)) and name == trained_on
    detector = detector_info = None
    val_nondigit = nondigit = None
    # (the synthetic non-digits are letters, scribbles and blobs: a detector for digit datasets only)
    if stores_calibration and predictor.has_features and class_names == DIGIT_CLASSES:
        if cfg.data.train_subset is not None:  # the digits training used, as the trainer takes them
            train_idx = train_idx[: cfg.data.train_subset]
        detector, detector_info = _fit_detector(predictor, ds.train_images[train_idx], temperature, cfg.seed, say)
        predictor.detector = detector
        _, val_nondigit = predictor.scores_and_nondigit(val_images)

    # 2. the measured split
    if split == "test":
        images, labels = ds.test_images, ds.test_labels.astype(np.int64)
        scores, rate = _timed_scores(predictor, images)
        if detector is not None:
            _, nondigit = predictor.scores_and_nondigit(images)
    else:
        images, labels, scores = val_images, val_labels, val_scores
        nondigit = val_nondigit
        _, rate = _timed_scores(predictor, images)
    say(f"{split}: {len(labels):,} images, {rate:,.0f} images/s")
    proba = predictor.proba_from_scores(scores)
    proba_cal = predictor.proba_from_scores(scores, temperature)
    # ROC and PR rank by the model's own scores: the SVM's decision function, others' probabilities
    ranking = scores if predictor.kind == "classical" else proba
    m = classification_metrics(labels, proba, class_names, ranking_scores=ranking)
    cal = classification_metrics(labels, proba_cal, class_names)
    cm = np.asarray(m["confusion_matrix"])
    results = _read_results(run)
    out: dict[str, Any] = {
        "run": str(run.path),
        "recipe": cfg.recipe,
        "model": predictor.name,
        "kind": predictor.kind,
        "n_params": predictor.info.get("n_params"),
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
            "temperature": temperature,
            "fitted_on": ("none (no validation split)" if not len(val_labels) else
                          "val" if split == "test" else "val (the measured split itself)"),
            "val_nll_before": nll_before,
            "val_nll_after": nll_after,
            "reliability_before": reliability_bins(labels, proba),
            "reliability_after": reliability_bins(labels, proba_cal),
        },
        "rejection": _rejection(predictor.proba_from_scores(val_scores, temperature) if len(val_labels) else None,
                                proba_cal, labels, val_nondigit=val_nondigit, nondigit=nondigit,
                                detector=detector_info),
        "top_confusions": top_confusions(cm, class_names),
        "inference": {"images_per_s": rate, "device": str(predictor.device), "batch_size": THROUGHPUT_BATCH},
    }

    # 3. figures
    eval_dir = run.path / EVAL_DIR
    eval_dir.mkdir(exist_ok=True)
    say("figures")
    y_pred = proba.argmax(axis=1)
    figures = {
        "confusion_matrix": plots.plot_confusion_matrix(cm, class_names, eval_dir / "confusion_matrix.png"),
        "roc_curves": plots.plot_roc_curves(labels, ranking, class_names, eval_dir / "roc_curves.png"),
        "pr_curves": plots.plot_pr_curves(labels, ranking, class_names, eval_dir / "pr_curves.png"),
        "reliability": plots.plot_reliability(labels, proba, proba_cal, eval_dir / "reliability.png",
                                              ece_before=m["ece"], ece_after=cal["ece"], temperature=temperature),
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
        say(f"robustness sweep on {min(robustness_samples or len(labels), len(labels)):,} images")
        sweep = robustness_sweep(predictor.classify, images, labels, n=robustness_samples, seed=cfg.seed)
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
    # The temperature belongs to the model and the data it was trained on: stored (for the
    # Predictor) only when fitted on that data's validation split, and last, once all else is written
    # (the detector just before: calibration.json names its threshold).
    if stores_calibration:
        rej = out["rejection"]
        if detector is not None:
            save_detector(detector, run.path / DETECTOR_FILE)
        else:
            (run.path / DETECTOR_FILE).unlink(missing_ok=True)  # an earlier one would not match this calibration
        write_calibration(run.path, Calibration(temperature=temperature, fitted_on="val", n=len(val_labels),
                                                nll_before=nll_before, nll_after=nll_after,
                                                threshold=rej["threshold"], threshold_rule=rej["rule"],
                                                detector_threshold=rej.get("detector_threshold"),
                                                threshold_without_detector=(rej["softmax_only"]["threshold"]
                                                                            if detector is not None else None)))
    return out


def _fit_detector(predictor: Predictor, digits: np.ndarray, temperature: float, seed: int,
                  say: Any) -> tuple[NonDigitDetector, dict[str, Any]]:
    """The non-digit detector of a network: its training digits (0) against synthetic non-digits (1)."""
    start = time.perf_counter()
    n_neg = min(DETECTOR_NONDIGITS, len(digits))
    say(f"non-digit detector: features of {len(digits):,} training digits and {n_neg:,} synthetic non-digits")
    nondigits = cached_nondigits(n_neg, seed=NONDIGITS_SEED)
    z_pos, f_pos = predictor.features(digits)
    z_neg, f_neg = predictor.features(nondigits)
    detector = fit_detector((torch.from_numpy(f_pos), torch.from_numpy(z_pos)),
                            (torch.from_numpy(f_neg), torch.from_numpy(z_neg)), temperature=temperature, seed=seed)
    detector.to(predictor.device)
    seconds = time.perf_counter() - start
    say(f"non-digit detector: fitted on {f_pos.shape[1]:,} features + confidence + energy ({seconds:.1f} s)")
    return detector, {"file": DETECTOR_FILE, "n_digits": len(digits), "n_nondigits": n_neg,
                      "n_features": int(f_pos.shape[1]), "hidden": detector.hidden.out_features, "seed": seed,
                      "seconds": seconds}


def _rejection(val_proba: np.ndarray | None, proba: np.ndarray, labels: np.ndarray, *,
               val_nondigit: np.ndarray | None = None, nondigit: np.ndarray | None = None,
               detector: dict[str, Any] | None = None) -> dict[str, Any]:
    """The rejection rule chosen on validation, and the coverage / error trade-off on the measured split.

    Without a detector, the threshold is the calibrated confidence below which ``REJECT_VAL_RATE`` of
    validation digits fall: it rejects about that share of real digits (and the doubtful ones first),
    and any input the model is less sure of, digit or not. With one (``val_nondigit``, ``nondigit``:
    its scores), the confidence threshold rejects ``RELAXED_SOFTMAX_RATE`` of validation digits and the
    detector's threshold the rest of ``REJECT_VAL_RATE``; ``softmax_only`` keeps the single threshold's
    figures beside it. ``val_rejected`` and ``rejected``: the share of validation digits and of the
    measured split that the rule rejects.
    """
    conf = proba.max(axis=1)
    wrong = proba.argmax(axis=1) != labels
    curve = []
    for t in REJECT_CURVE:
        kept = conf >= t
        curve.append({"threshold": t, "coverage": float(kept.mean()),
                      "error_kept": float(wrong[kept].mean()) if kept.any() else 0.0,
                      "errors_rejected": int((wrong & ~kept).sum())})
    out: dict[str, Any] = {"curve": curve, "threshold": None, "rule": None}
    if val_proba is None or not len(val_proba):
        return out
    val_conf = val_proba.max(axis=1)

    def measured(kept: np.ndarray) -> dict[str, Any]:
        return {"coverage": float(kept.mean()), "rejected": float(1.0 - kept.mean()),
                "error_kept": float(wrong[kept].mean()) if kept.any() else 0.0,
                "errors_rejected": int((wrong & ~kept).sum())}

    t = float(np.quantile(val_conf, REJECT_VAL_RATE))
    alone = {"threshold": t, "rule": f"rejects {REJECT_VAL_RATE:.1%} of validation digits",
             "val_rejected": float((val_conf < t).mean()), **measured(conf >= t)}
    if val_nondigit is None or nondigit is None:
        out.update(alone, error_all=float(wrong.mean()), errors=int(wrong.sum()))
        return out
    t_soft, t_det = rejection_thresholds(val_conf, val_nondigit, rate=REJECT_VAL_RATE,
                                         softmax_rate=RELAXED_SOFTMAX_RATE)
    kept = (conf >= t_soft) & (nondigit <= t_det)
    out.update(threshold=t_soft, detector_threshold=t_det,
               rule=f"rejects {REJECT_VAL_RATE:.1%} of validation digits: calibrated confidence below {t_soft:.4f} "
                    f"({RELAXED_SOFTMAX_RATE:.1%} alone) or non-digit score above {t_det:.4f} (the detector)",
               val_rejected=float(((val_conf < t_soft) | (val_nondigit > t_det)).mean()), **measured(kept),
               detector_rejected=float((nondigit > t_det).mean()), error_all=float(wrong.mean()),
               errors=int(wrong.sum()), softmax_only=alone, detector=detector)
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
