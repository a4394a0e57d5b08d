"""Classification metrics and calibration, from labels and scores.

Usage::

    m = classification_metrics(test_labels, scipy.special.softmax(test_logits, axis=1), class_names)
    ece = expected_calibration_error(test_labels, proba)

Everything scikit-learn computes (report, balanced accuracy, top-k, log loss, ROC AUC, confusion
matrix) comes from scikit-learn; SciPy gives the Wilson interval. (The temperature is fitted by
``inference.rejection``, not here: evaluation only measures.) Only the
expected calibration error, which neither has, is computed here.
"""

import math
from typing import Any

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    log_loss,
    roc_auc_score,
    top_k_accuracy_score,
)
from sklearn.preprocessing import label_binarize

ECE_BINS = 15


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (SciPy's ``binomtest``)."""
    if n == 0:
        return (math.nan, math.nan)
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def reliability_bins(y_true: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Equal-width bins of top-class confidence: count, mean confidence and accuracy of each non-empty bin."""
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    # bin i holds confidences in (i/n, (i+1)/n]; a confidence of exactly 0 joins the first bin
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        mask = idx == b
        if mask.any():
            out.append({"lower": b / n_bins, "upper": (b + 1) / n_bins, "count": int(mask.sum()),
                        "confidence": float(conf[mask].mean()), "accuracy": float(correct[mask].mean())})
    return out


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE: the sample-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    n = len(y_true)
    if n == 0:
        return math.nan
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in reliability_bins(
        y_true, proba, n_bins)))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, class_names: list[str], *,
                           ranking_scores: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy (errors, 95% Wilson interval), balanced accuracy, the per-class report, macro and
    weighted averages, top-2 accuracy, log loss, one-vs-rest ROC AUC, ECE and the confusion matrix.

    Args:
        proba: probabilities ``(N, C)``.
        ranking_scores: what ROC AUC ranks by when not the probabilities (an SVM's decision function).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    labels = list(range(len(class_names)))
    y_pred = proba.argmax(axis=1)
    n = len(y_true)
    correct = int((y_pred == y_true).sum())
    report = classification_report(y_true, y_pred, labels=labels, target_names=class_names, output_dict=True,
                                   zero_division=0)
    per_class = [{"class": name, "precision": report[name]["precision"], "recall": report[name]["recall"],
                  "f1": report[name]["f1-score"], "support": int(report[name]["support"])} for name in class_names]

    def avg(key: str) -> dict[str, float]:
        r = report[key]
        return {"precision": r["precision"], "recall": r["recall"], "f1": r["f1-score"]}

    ranking = proba if ranking_scores is None else np.asarray(ranking_scores)
    onehot = label_binarize(y_true, classes=labels)
    if len(labels) == 2:  # label_binarize gives one column for two classes
        onehot = np.hstack([1 - onehot, onehot])
    present = (onehot.sum(axis=0) > 0) & (onehot.sum(axis=0) < n)  # AUC needs positives and negatives
    auc_per_class = {name: (float(roc_auc_score(onehot[:, i], ranking[:, i])) if present[i] else None)
                     for i, name in enumerate(class_names)}
    # one-vs-rest macro AUC: scikit-learn's average over the indicator columns (any scores, not only probabilities)
    macro_auc = float(roc_auc_score(onehot, ranking, average="macro")) if present.all() else None
    return {
        "n": n,
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "errors": n - correct,
        "accuracy_ci95": list(wilson_interval(correct, n)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "top2_accuracy": float(top_k_accuracy_score(y_true, proba, k=2, labels=labels)),
        "log_loss": float(log_loss(y_true, proba, labels=labels)),
        "per_class": per_class,
        "macro_avg": avg("macro avg"),
        "weighted_avg": avg("weighted avg"),
        "roc_auc": {"per_class": auc_per_class, "macro": macro_auc},
        "ece": expected_calibration_error(y_true, proba),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def top_confusions(cm: np.ndarray, class_names: list[str], k: int = 10) -> list[dict[str, Any]]:
    """The k most frequent (true, predicted) error pairs of a confusion matrix, most frequent first."""
    cm = np.asarray(cm)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:k]
    out = []
    for flat in order:
        t, p = divmod(int(flat), cm.shape[1])
        if off[t, p] == 0:
            break
        out.append({"true": class_names[t], "pred": class_names[p], "count": int(off[t, p]),
                    "share_of_class": float(off[t, p] / max(cm[t].sum(), 1))})
    return out
