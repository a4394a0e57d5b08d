"""Evaluation figures: confusion matrices, ROC/PR curves, learning curves, calibration, error galleries.

Usage::

    plot_confusion_matrix(confusion_matrix(y_true, y_pred), class_names, run / "eval" / "confusion.png")

Every function draws one PNG and returns its path. Figures are built with the object API
(``matplotlib.figure.Figure``, no pyplot state, nothing ever shown) and written atomically: a
reader never sees half a PNG, and a failed write leaves the old file in place. The numbers behind
the curves come from scikit-learn; this module only draws them. Images are ``(N, H, W)`` uint8,
white ink on black as in MNIST; ``proba`` is ``(N, C)`` float with rows summing to 1.
"""

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogFormatter, MaxNLocator, PercentFormatter
from matplotlib.transforms import Bbox
from sklearn.calibration import calibration_curve
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from digitlab.core.fileio import atomic_path

DPI = 110
ANNOTATION_FONTSIZE = 8  # the smallest text in any figure: legible at 100% zoom
MAX_GRID_COLUMNS = 8
# The zoomed corners of the ROC and PR panels: MNIST curves are indistinguishable at full scale.
ROC_ZOOM_FPR = (0.0, 0.05)
ROC_ZOOM_TPR = (0.9, 1.0)
PR_ZOOM = (0.9, 1.0)
MIN_F1_SCALE_SPAN = 0.01  # identical F1s still get a colour range, and one without offset notation
MIN_ACCURACY_PAD = 0.5  # percentage points around the points of an accuracy plot
MAX_LEVEL_TICKS = 8  # robustness panels with at most this many levels get a tick at each
ROBUSTNESS_RAW = "raw 28x28 tensor, no real-image preparation"
ROBUSTNESS_PREPARED = "through the real-image preparation (as digitlab predict)"
ARROW = "\u2192"  # →
TIMES = "\u00d7"  # ×

PathLike = str | os.PathLike[str]

__all__ = [
    "plot_accuracy_vs",
    "plot_common_confusions",
    "plot_confident_mistakes",
    "plot_confusion_matrix",
    "plot_f1_heatmap",
    "plot_learning_curves",
    "plot_pr_curves",
    "plot_prediction_grid",
    "plot_reliability",
    "plot_robustness",
]


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _new_figure(width: float, height: float) -> Figure:
    # Constrained layout keeps titles, tick labels and colour bars from overlapping.
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # a renderer for text measurements, without touching pyplot
    return fig


def _save(fig: Figure, path: PathLike) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically and return the path."""
    path = Path(path)
    # format="png": the temp name ends in the target's suffix, which need not be ".png".
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    return path


def _class_colors(n_classes: int) -> list[tuple[float, float, float, float]]:
    """Distinct colours: tab10 up to 10 classes, tab20 up to 20, then a sampled colormap."""
    if n_classes <= 10:
        return [colormaps["tab10"](i) for i in range(n_classes)]
    if n_classes <= 20:
        return [colormaps["tab20"](i) for i in range(n_classes)]
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, n_classes)]


def _line_style(index: int) -> str:
    # After ten classes the colours start to look alike: vary the dash pattern as well.
    return ("-", "--", "-.", ":")[(index // 10) % 4]


def _text_color(rgba: Sequence[float]) -> str:
    """White on dark cells, black on light ones (perceived luminance of the cell colour)."""
    r, g, b = rgba[:3]
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"


def _hide_frame(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _check_labels_proba(y_true: np.ndarray, proba: np.ndarray, class_names: Sequence[Any]) -> None:
    if proba.ndim != 2 or y_true.ndim != 1 or len(y_true) != len(proba):
        raise ValueError(f"y_true must be (N,) and proba (N, C); got {y_true.shape} and {proba.shape}")
    if proba.shape[1] != len(class_names):
        raise ValueError(f"proba has {proba.shape[1]} columns but there are {len(class_names)} class names")


def _check_images(images: np.ndarray, n: int) -> None:
    if images.ndim != 3 or len(images) != n:
        raise ValueError(f"images must be (N, H, W) with N = {n}; got {images.shape}")


def _grid_shape(n: int, max_columns: int = MAX_GRID_COLUMNS) -> tuple[int, int]:
    cols = max(1, min(max_columns, n))
    return -(-n // cols), cols


def _draw_digit(ax: Axes, image: np.ndarray) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    _hide_frame(ax)


def _message_figure(title: str, message: str, path: PathLike) -> Path:
    """A figure that says in words why there is nothing to draw (no mistakes, no errors)."""
    fig = _new_figure(6.0, 2.2)
    ax = fig.add_subplot()
    _hide_frame(ax)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=16, color="tab:green", weight="bold",
            transform=ax.transAxes)
    ax.set_title(title, fontsize=12)
    return _save(fig, path)


def _annotated_heatmap(ax: Axes, values: np.ndarray, texts: list[list[str]], *, cmap: str, norm: Normalize,
                       fontsize: float, bold: np.ndarray | None = None) -> Any:
    """``imshow`` of ``values`` with ``texts`` written in every cell, the colour picked per cell."""
    image = ax.imshow(values, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    colors = image.cmap(image.norm(np.ma.masked_invalid(values)))
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not texts[i][j]:
                continue
            color = _text_color(colors[i, j]) if np.isfinite(values[i, j]) else "black"
            weight = "bold" if bold is not None and bold[i, j] else "normal"
            ax.text(j, i, texts[i][j], ha="center", va="center", color=color, fontsize=fontsize, weight=weight)
    return image


# ---------------------------------------------------------------------------------------------
# 1. Confusion matrix


def plot_confusion_matrix(cm: np.ndarray, class_names: list[str], path: PathLike) -> Path:
    """Two panels side by side: raw counts, and each row as a percentage of its true class (recall).

    The count colours are on a log scale so that a handful of errors stands out next to a
    diagonal of thousands; empty cells are left blank.

    Args:
        cm: ``(C, C)`` int counts, rows = true class, columns = predicted class
            (``sklearn.metrics.confusion_matrix``).
        class_names: ``C`` names, in label order.
        path: the PNG to write.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: ``cm`` is not square or does not match ``class_names``.
    """
    cm = np.asarray(cm)
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"cm must be ({k}, {k}) for {k} class names; got {cm.shape}")
    row_totals = cm.sum(axis=1, keepdims=True)
    # (C, C) percent of each true class; an absent class gives a row of NaN (drawn blank).
    recall_pct = np.divide(100.0 * cm, row_totals, out=np.full(cm.shape, np.nan), where=row_totals > 0)

    fontsize = ANNOTATION_FONTSIZE if k > 10 else 9
    cell = 0.62 if k <= 10 else 0.5  # inches per cell: room for "1,135" at 9 pt
    side = 1.6 + cell * k
    fig = _new_figure(2 * side + 1.8, side + 0.6)
    ax_counts, ax_pct = fig.subplots(1, 2)

    count_values = np.where(cm > 0, cm, np.nan).astype(float)
    count_max = max(int(cm.max()) if cm.size else 1, 2)
    count_texts = [[f"{v:,}" if v else "" for v in row] for row in cm.tolist()]
    img = _annotated_heatmap(ax_counts, count_values, count_texts, cmap="Blues", fontsize=fontsize,
                             norm=LogNorm(vmin=1, vmax=count_max))
    fig.colorbar(img, ax=ax_counts, shrink=0.85, label="count (log colour scale)")

    pct_texts = [["" if not np.isfinite(v) or (v == 0 and i != j) else f"{v:.1f}" for j, v in enumerate(row)]
                 for i, row in enumerate(recall_pct.tolist())]
    img = _annotated_heatmap(ax_pct, recall_pct, pct_texts, cmap="Blues", fontsize=fontsize,
                             norm=Normalize(vmin=0, vmax=100))
    fig.colorbar(img, ax=ax_pct, shrink=0.85, label="% of the true class", format=PercentFormatter(decimals=0))

    total = int(cm.sum())
    accuracy = 100.0 * np.trace(cm) / total if total else float("nan")
    rotate = 45 if max(map(len, class_names), default=0) > 3 else 0
    for ax, title in ((ax_counts, "counts"), (ax_pct, "row-normalized: recall per true class (%)")):
        ax.set_xticks(range(k), class_names, rotation=rotate, ha="right" if rotate else "center",
                      rotation_mode="anchor")
        ax.set_yticks(range(k), class_names)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(title, fontsize=11)
    fig.suptitle(f"Confusion matrix: {total:,} samples, accuracy {accuracy:.2f}% (empty cells: 0)", fontsize=12)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# 2-3. ROC and precision-recall curves


def _one_vs_rest(y_true: np.ndarray, proba: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Binary targets and scores for class ``c``; None when the class has no positive or no negative."""
    target = y_true == c
    if target.all() or not target.any():
        return None
    return target.astype(np.int64), proba[:, c]


def _curve_figure(title: str) -> tuple[Figure, Axes, Axes]:
    fig = _new_figure(13.0, 6.0)
    ax_full, ax_zoom = fig.subplots(1, 2)
    fig.suptitle(title, fontsize=12)
    return fig, ax_full, ax_zoom


def _mark_zoom(ax: Axes, x: tuple[float, float], y: tuple[float, float], *, corner: str) -> None:
    """Outline the zoomed region; its caption goes below it, towards the middle of the axes."""
    ax.add_patch(Rectangle((x[0], y[0]), x[1] - x[0], y[1] - y[0], fill=False, edgecolor="0.35",
                           linestyle="--", linewidth=1, zorder=5))
    left = corner == "left"
    ax.annotate("zoomed at right", xy=(x[1] if left else x[0], y[0]), xytext=(4 if left else -4, -4),
                textcoords="offset points", ha="left" if left else "right", va="top",
                fontsize=ANNOTATION_FONTSIZE, color="0.35")


def plot_roc_curves(y_true: np.ndarray, proba: np.ndarray, class_names: list[str], path: PathLike) -> Path:
    """One-vs-rest ROC curve of every class, AUC in the legend, plus a zoom on the top-left corner.

    Args:
        y_true: ``(N,)`` int labels.
        proba: ``(N, C)`` predicted probabilities.
        class_names: ``C`` names, in label order.
        path: the PNG to write.

    Returns:
        ``path`` as a ``Path``. A class absent from ``y_true`` (no ROC curve) is listed as such
        in the legend.

    Raises:
        ValueError: the shapes of ``y_true``, ``proba`` and ``class_names`` disagree.
    """
    y_true, proba = np.asarray(y_true), np.asarray(proba)
    _check_labels_proba(y_true, proba, class_names)
    fig, ax_full, ax_zoom = _curve_figure("One-vs-rest ROC curve per class")
    aucs = []
    for c, (name, color) in enumerate(zip(class_names, _class_colors(len(class_names)), strict=True)):
        binary = _one_vs_rest(y_true, proba, c)
        if binary is None:
            ax_full.plot([], [], color=color, label=f"{name} (no ROC: one-sided labels)")
            continue
        fpr, tpr, _ = roc_curve(*binary)
        value = auc(fpr, tpr)
        aucs.append(value)
        for ax in (ax_full, ax_zoom):
            ax.plot(fpr, tpr, color=color, linestyle=_line_style(c), linewidth=1.4,
                    label=f"{name} (AUC {value:.4f})" if ax is ax_full else None)
    ax_full.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="chance")
    _mark_zoom(ax_full, ROC_ZOOM_FPR, ROC_ZOOM_TPR, corner="left")

    ax_full.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax_full.set_title("full range" + (f" (mean AUC {np.mean(aucs):.4f})" if aucs else ""), fontsize=11)
    ax_zoom.set(xlim=ROC_ZOOM_FPR, ylim=ROC_ZOOM_TPR)
    ax_zoom.set_title(f"zoom: FPR {ROC_ZOOM_FPR[0]:g}-{ROC_ZOOM_FPR[1]:g}, "
                      f"TPR {ROC_ZOOM_TPR[0]:g}-{ROC_ZOOM_TPR[1]:g}", fontsize=11)
    for ax in (ax_full, ax_zoom):
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.grid(True, alpha=0.3)
    # ROC curves of a good model hug the top-left corner: the bottom right is free for the legend.
    ax_full.legend(loc="lower right", fontsize=ANNOTATION_FONTSIZE, title="class", title_fontsize=9,
                   ncols=2 if len(class_names) > 12 else 1, framealpha=0.9)
    return _save(fig, path)


def plot_pr_curves(y_true: np.ndarray, proba: np.ndarray, class_names: list[str], path: PathLike) -> Path:
    """Precision-recall curve of every class (one vs rest), average precision in the legend, plus a zoom.

    Args:
        y_true: ``(N,)`` int labels.
        proba: ``(N, C)`` predicted probabilities.
        class_names: ``C`` names, in label order.
        path: the PNG to write.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: the shapes of ``y_true``, ``proba`` and ``class_names`` disagree.
    """
    y_true, proba = np.asarray(y_true), np.asarray(proba)
    _check_labels_proba(y_true, proba, class_names)
    fig, ax_full, ax_zoom = _curve_figure("Precision-recall curve per class (one vs rest)")
    aps = []
    for c, (name, color) in enumerate(zip(class_names, _class_colors(len(class_names)), strict=True)):
        binary = _one_vs_rest(y_true, proba, c)
        if binary is None:
            ax_full.plot([], [], color=color, label=f"{name} (no curve: one-sided labels)")
            continue
        precision, recall, _ = precision_recall_curve(*binary)
        ap = average_precision_score(*binary)
        aps.append(ap)
        for ax in (ax_full, ax_zoom):
            # Steps, as sklearn's PrecisionRecallDisplay draws them: AP is the area under these steps.
            ax.plot(recall, precision, drawstyle="steps-post", color=color, linestyle=_line_style(c),
                    linewidth=1.4, label=f"{name} (AP {ap:.4f})" if ax is ax_full else None)
    _mark_zoom(ax_full, PR_ZOOM, PR_ZOOM, corner="right")

    ax_full.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax_full.set_title("full range" + (f" (mean AP {np.mean(aps):.4f})" if aps else ""), fontsize=11)
    ax_zoom.set(xlim=PR_ZOOM, ylim=PR_ZOOM)
    ax_zoom.set_title(f"zoom: recall and precision {PR_ZOOM[0]:g}-{PR_ZOOM[1]:g}", fontsize=11)
    for ax in (ax_full, ax_zoom):
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.grid(True, alpha=0.3)
    # Good PR curves hug the top-right corner: the bottom left is free for the legend.
    ax_full.legend(loc="lower left", fontsize=ANNOTATION_FONTSIZE, title="class", title_fontsize=9,
                   ncols=2 if len(class_names) > 12 else 1, framealpha=0.9)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# 4. Learning curves


class _PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers (0.03, not 3e-02); LogFormatter picks which minor ticks get one."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of the rows that have a finite ``key``."""
    pairs = [(float(r["epoch"]), float(r[key])) for r in rows
             if r.get(key) is not None and math.isfinite(float(r[key]))]
    if not pairs:
        return np.empty(0), np.empty(0)
    epochs, values = zip(*pairs, strict=True)
    return np.array(epochs), np.array(values)


def plot_learning_curves(rows: list[dict], path: PathLike) -> Path:
    """Loss and accuracy per epoch, train vs validation, with the best validation epoch marked.

    Args:
        rows: the lines of ``metrics.jsonl``: ``epoch`` and any of ``train_loss``, ``train_acc``,
            ``val_loss``, ``val_acc`` (accuracies as fractions); other keys are ignored, a
            missing or NaN value is skipped (a classical model logs only ``val_acc``).
        path: the PNG to write.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: ``rows`` is empty or a row has no ``epoch``.
    """
    if not rows:
        raise ValueError("no metrics rows to plot")
    if any("epoch" not in r for r in rows):
        raise ValueError("every metrics row needs an 'epoch'")
    rows = sorted(rows, key=lambda r: r["epoch"])
    n_epochs = len(rows)
    marker = "o" if n_epochs <= 40 else None  # markers keep a 1-epoch run visible; 100 dots are noise
    fig = _new_figure(12.5, 4.8)
    ax_loss, ax_acc = fig.subplots(1, 2)

    # The trainer keeps the weights of the first epoch with the highest validation accuracy.
    val_epochs, val_acc = _series(rows, "val_acc")
    best = int(np.argmax(val_acc)) if val_acc.size else None

    for ax, metric, name, scale, unit in ((ax_loss, "loss", "loss", 1.0, ""),
                                          (ax_acc, "acc", "accuracy", 100.0, " (%)")):
        drawn = False
        # The trainer logs the training figures as running means over each epoch, as the model learns
        # (on augmented images when the recipe augments): not a second pass over the training split.
        for split, label, color in (("train", "train (mean over the epoch)", "tab:blue"),
                                    ("val", "validation", "tab:orange")):
            epochs, values = _series(rows, f"{split}_{metric}")
            if values.size:
                drawn = True
                ax.plot(epochs, scale * values, color=color, marker=marker, markersize=4, label=label)
        if best is not None and drawn:
            ax.axvline(val_epochs[best], color="tab:green", linestyle="--", linewidth=1,
                       label=f"best validation epoch ({val_epochs[best]:g})")
        if metric == "acc" and best is not None:
            ax.plot(val_epochs[best], 100 * val_acc[best], marker="*", markersize=14, color="tab:green",
                    linestyle="none", label=f"best val acc {100 * val_acc[best]:.2f}%")
        if metric == "loss":
            losses = np.concatenate([_series(rows, k)[1] for k in ("train_loss", "val_loss")])
            # Losses fall by orders of magnitude: a log axis keeps the late epochs readable.
            if losses.size and losses.min() > 0 and losses.max() / losses.min() > 10:
                ax.set_yscale("log")
                # Plain numbers (0.03, not 3x10^-2) on the major and the labelled minor ticks.
                ax.yaxis.set_major_formatter(_PlainLogFormatter())
                ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
                ax.tick_params(axis="y", which="minor", labelsize=ANNOTATION_FONTSIZE)
                unit = " (log scale)"
        if metric == "acc" and drawn:
            low, high = ax.get_ylim()
            ax.set_ylim(low, min(high, 100.5))  # a single point must not stretch the axis past 100%
        if not drawn:
            ax.text(0.5, 0.5, f"no {name} logged", ha="center", va="center", transform=ax.transAxes, fontsize=11,
                    color="0.4")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name + unit)
        ax.set_title(name, fontsize=11)
        if len({r["epoch"] for r in rows}) == 1:  # one epoch: one tick, not 0.945 ... 1.050
            ax.set_xlim(rows[0]["epoch"] - 1, rows[0]["epoch"] + 1)
            ax.set_xticks([rows[0]["epoch"]])
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=ANNOTATION_FONTSIZE + 1, loc="best", framealpha=0.9)
    fig.suptitle(f"Learning curves ({n_epochs} epoch{'s' if n_epochs != 1 else ''})", fontsize=12)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# 5. Reliability diagram


def _reliability(y_true: np.ndarray, proba: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per non-empty confidence bin: (accuracy, mean confidence), and the count of every bin."""
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(np.int64)
    # sklearn drops the empty bins for us; the counts use the same bin edges and side rule.
    accuracy, mean_conf = calibration_curve(correct, confidence, n_bins=n_bins, strategy="uniform", pos_label=1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=n_bins)
    return accuracy, mean_conf, counts


def plot_reliability(
    y_true: np.ndarray,
    proba_before: np.ndarray,
    proba_after: np.ndarray,
    path: PathLike,
    *,
    n_bins: int = 15,
    ece_before: float,
    ece_after: float,
    temperature: float,
) -> Path:
    """Reliability diagram of the top-class confidence, before and after temperature scaling.

    Above: accuracy against mean confidence in each of ``n_bins`` equal-width bins (empty bins
    skipped), with the diagonal of perfect calibration. Below: samples per bin (log scale).

    Args:
        y_true: ``(N,)`` int labels.
        proba_before: ``(N, C)`` probabilities before scaling.
        proba_after: ``(N, C)`` probabilities after scaling.
        path: the PNG to write.
        n_bins: equal-width confidence bins over [0, 1].
        ece_before: expected calibration error before scaling, as a fraction (shown in percent).
        ece_after: the same after scaling.
        temperature: the fitted temperature.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: the shapes disagree, or ``n_bins`` < 1.
    """
    y_true = np.asarray(y_true)
    proba_before, proba_after = np.asarray(proba_before), np.asarray(proba_after)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if proba_before.shape != proba_after.shape:
        raise ValueError(f"proba_before {proba_before.shape} and proba_after {proba_after.shape} differ in shape")
    _check_labels_proba(y_true, proba_before, range(proba_before.shape[1]))

    fig = _new_figure(7.5, 8.0)
    ax_rel, ax_count = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.2])
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    width = 1.0 / n_bins
    # Confidence as a fraction on x, accuracy in percent on y: the diagonal is y = 100 x.
    ax_rel.plot([0, 1], [0, 100], color="0.5", linestyle=":", linewidth=1.2, label="perfect calibration")
    series = (
        ("raw (as trained)", proba_before, ece_before, "tab:red", "o", -0.2),
        (f"temperature-scaled (T = {temperature:.3f})", proba_after, ece_after, "tab:blue", "s", 0.2),
    )
    for label, proba, ece, color, marker, shift in series:
        accuracy, mean_conf, counts = _reliability(y_true, proba, n_bins)
        ax_rel.plot(mean_conf, 100 * accuracy, color=color, marker=marker, markersize=5, linewidth=1.4,
                    label=f"{label}: ECE {100 * ece:.2f}%")
        nonzero = counts > 0
        ax_count.bar(centers[nonzero] + shift * width, counts[nonzero], width=0.4 * width, color=color,
                     alpha=0.8, label=label)
    ax_rel.set(xlim=(0, 1), ylim=(0, 101))
    ax_rel.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax_rel.set_ylabel("accuracy in bin")
    ax_rel.set_title(f"{n_bins} equal-width bins of the top-class confidence; empty bins skipped", fontsize=10)
    ax_rel.grid(True, alpha=0.3)
    # A model is usually over- or under-confident near 1: the upper left stays free for the legend.
    ax_rel.legend(loc="upper left", fontsize=9, framealpha=0.9)
    if ax_count.patches:
        ax_count.set_yscale("log")
    ax_count.set_xlabel("confidence (max predicted probability)")
    ax_count.set_ylabel("samples\n(log scale)")
    ax_count.grid(True, axis="y", alpha=0.3)
    ax_count.legend(loc="upper left", fontsize=ANNOTATION_FONTSIZE, framealpha=0.9)
    fig.suptitle(f"Reliability: raw vs temperature-scaled confidence (T = {temperature:.3f}), {len(y_true):,} "
                 "samples", fontsize=12)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# 6-8. Galleries of images


def _format_p(p: float) -> str:
    """``0.98``; four decimals from 0.99 up, where two would round most mistakes to a flat 1.00."""
    if p < 0.99:
        return f"{p:.2f}"
    return f"{p:.4f}" if p < 0.99995 else ">0.9999"


def _p_label(p: float) -> str:
    text = _format_p(p)
    return f"p{text}" if text.startswith(">") else f"p={text}"


def _pair_title(true_name: str, pred_name: str, p: float) -> str:
    if len(true_name) + len(pred_name) > 10:  # long names (Fashion-MNIST) get a line each
        return f"true {true_name}\n{ARROW} pred {pred_name}\n{_p_label(p)}"
    return f"true {true_name} {ARROW} pred {pred_name}\n{_p_label(p)}"


def plot_confident_mistakes(
    images: np.ndarray,
    y_true: np.ndarray,
    proba: np.ndarray,
    class_names: list[str],
    path: PathLike,
    *,
    n: int = 24,
) -> Path:
    """The ``n`` wrong predictions made with the highest probability, most confident first.

    Args:
        images: ``(N, H, W)`` uint8, white ink on black.
        y_true: ``(N,)`` int labels.
        proba: ``(N, C)`` predicted probabilities; the prediction is the argmax.
        class_names: ``C`` names, in label order.
        path: the PNG to write; says "no mistakes" when every prediction is right.
        n: how many mistakes to show at most.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: the shapes disagree.
    """
    images, y_true, proba = np.asarray(images), np.asarray(y_true), np.asarray(proba)
    _check_labels_proba(y_true, proba, class_names)
    _check_images(images, len(y_true))
    y_pred = proba.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    title = "Most confident mistakes"
    if wrong.size == 0 or n < 1:
        return _message_figure(title, f"no mistakes: all {len(y_true):,} predictions are correct", path)
    p_pred = proba[wrong, y_pred[wrong]]
    order = wrong[np.argsort(-p_pred, kind="stable")][:n]
    long_names = max(map(len, class_names)) > 4
    rows, cols = _grid_shape(len(order))
    cell_w, cell_h = (1.75, 2.3) if long_names else (1.5, 1.95)
    fig = _new_figure(cols * cell_w, rows * cell_h + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        _hide_frame(ax)
    for ax, i in zip(axes, order, strict=False):
        _draw_digit(ax, images[i])
        ax.set_title(_pair_title(class_names[y_true[i]], class_names[y_pred[i]], proba[i, y_pred[i]]),
                     fontsize=9, color="tab:red")
    fig.suptitle(f"{title}: {len(order)} of {wrong.size:,} errors in {len(y_true):,} samples, "
                 "highest predicted probability first", fontsize=11)
    return _save(fig, path)


def plot_common_confusions(
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: list[str],
    path: PathLike,
    *,
    per_class: int = 4,
) -> Path:
    """One row per true class: its most common wrong prediction, how often, and examples of it.

    Args:
        images: ``(N, H, W)`` uint8, white ink on black.
        y_true: ``(N,)`` int labels.
        y_pred: ``(N,)`` int predictions.
        class_names: ``C`` names, in label order.
        path: the PNG to write.
        per_class: example images per row at most.

    Returns:
        ``path`` as a ``Path``. A class without errors shows "no errors".

    Raises:
        ValueError: the shapes disagree.
    """
    images, y_true, y_pred = np.asarray(images), np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must both be (N,); got {y_true.shape} and {y_pred.shape}")
    _check_images(images, len(y_true))
    k = len(class_names)
    per_class = max(per_class, 1)
    label_width = 2.6 if max(map(len, class_names)) > 4 else 1.9
    cell = 0.95
    fig = _new_figure(label_width + per_class * cell, k * cell + 0.6)
    grid = fig.add_gridspec(k, per_class + 1, width_ratios=[label_width / cell] + [1] * per_class)
    n_errors_total = int((y_true != y_pred).sum())
    for c, name in enumerate(class_names):
        is_c = y_true == c
        errors = is_c & (y_pred != c)
        label_ax = fig.add_subplot(grid[c, 0])
        _hide_frame(label_ax)
        n_errors = int(errors.sum())
        if n_errors == 0:
            headline, color = f"{name}: no errors", "tab:green"
            examples = np.empty(0, dtype=np.int64)
        else:
            counts = np.bincount(y_pred[errors], minlength=k)
            other = int(counts.argmax())  # ties: the lowest label
            headline, color = f"{name} {ARROW} {class_names[other]} ({counts[other]}{TIMES})", "black"
            examples = np.flatnonzero(errors & (y_pred == other))[:per_class]
        label_ax.text(0.98, 0.62, headline, ha="right", va="center", fontsize=11, weight="bold", color=color,
                      transform=label_ax.transAxes)
        label_ax.text(0.98, 0.22, f"{n_errors} of {int(is_c.sum()):,} wrong", ha="right", va="center",
                      fontsize=ANNOTATION_FONTSIZE + 1, color="0.35", transform=label_ax.transAxes)
        for j in range(per_class):
            ax = fig.add_subplot(grid[c, j + 1])
            if j < len(examples):
                _draw_digit(ax, images[examples[j]])
            else:
                _hide_frame(ax)
    fig.suptitle(f"Most common confusion per true class ({n_errors_total:,} errors in {len(y_true):,} samples)",
                 fontsize=11)
    return _save(fig, path)


def plot_prediction_grid(
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray,
    class_names: list[str],
    path: PathLike,
    *,
    n: int = 36,
    seed: int = 0,
) -> Path:
    """``n`` random samples with their prediction, its probability and the true label; wrong ones in red.

    Args:
        images: ``(N, H, W)`` uint8, white ink on black.
        y_true: ``(N,)`` int labels.
        y_pred: ``(N,)`` int predictions.
        proba: ``(N, C)`` predicted probabilities.
        class_names: ``C`` names, in label order.
        path: the PNG to write.
        n: how many samples (fewer when there are fewer).
        seed: seeds the ``numpy`` Generator that picks the samples.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: the shapes disagree, or there are no samples.
    """
    images, y_true, y_pred, proba = (np.asarray(a) for a in (images, y_true, y_pred, proba))
    _check_labels_proba(y_true, proba, class_names)
    _check_images(images, len(y_true))
    if y_pred.shape != y_true.shape:
        raise ValueError(f"y_pred must be {y_true.shape}; got {y_pred.shape}")
    if len(y_true) == 0 or n < 1:
        raise ValueError("no samples to show")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(y_true), size=min(n, len(y_true)), replace=False))
    rows, cols = _grid_shape(len(pick), max_columns=max(6, math.ceil(math.sqrt(len(pick)))))
    long_names = max(map(len, class_names)) > 4
    # Long names (Fashion-MNIST) put the probability on a line of its own, and widen the cells to
    # the longest "pred <name>" (~0.085 in a character at 9 pt bold).
    cell_w = max(1.3, 0.085 * (5 + max(map(len, class_names))) + 0.2) if long_names else 1.3
    fig = _new_figure(cols * cell_w, rows * (2.0 if long_names else 1.75) + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        _hide_frame(ax)
    n_wrong = 0
    for ax, i in zip(axes, pick, strict=False):
        ok = y_pred[i] == y_true[i]
        n_wrong += not ok
        _draw_digit(ax, images[i])
        pred, p, true = class_names[y_pred[i]], proba[i, y_pred[i]], class_names[y_true[i]]
        if long_names:
            title = f"pred {pred}\n{_p_label(p)}\ntrue {true}"
        else:
            title = f"pred {pred} ({_format_p(p)})\ntrue {true}"
        ax.set_title(title, fontsize=9, color="black" if ok else "tab:red", weight="normal" if ok else "bold")
    fig.suptitle(f"{len(pick)} random samples (seed {seed}): {n_wrong} wrong, in red", fontsize=11)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# 9-11. Robustness and model comparison


def plot_robustness(results: dict[str, dict], path: PathLike) -> Path:
    """Accuracy against perturbation strength, one small panel per perturbation, shared y range.

    Each panel draws the raw curve (the perturbed 28x28 tensors fed as they are) and, where the sweep
    measured it, the prepared one (the same images through the real-image preparation first).

    Args:
        results: perturbation name (``"rotation"``, ``"noise"``, ...) to
            ``{"levels": [...], "accuracy": [...] (fractions), "unit": str}``, optionally with
            ``"accuracy_prepared": [...]`` (``robustness_sweep``'s output).
        path: the PNG to write.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: ``results`` is empty, or levels and accuracies differ in length.
    """
    if not results:
        raise ValueError("no robustness results to plot")
    for name, r in results.items():
        for key in ("accuracy", "accuracy_prepared"):
            if key in r and len(r["levels"]) != len(r[key]):
                raise ValueError(f"{name}: {len(r['levels'])} levels but {len(r[key])} values of {key}")
    any_prepared = any("accuracy_prepared" in r for r in results.values())
    all_acc = np.concatenate([100 * np.asarray(r[k], dtype=float) for r in results.values()
                              for k in ("accuracy", "accuracy_prepared") if k in r])
    low = 0.0 if not all_acc.size else max(0.0, 5 * math.floor((np.nanmin(all_acc) - 2) / 5))
    rows, cols = _grid_shape(len(results), max_columns=4)
    fig = _new_figure(cols * 3.3, rows * 2.9 + 0.8)
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
    for ax, (name, r) in zip(axes.ravel(), results.items(), strict=False):
        levels = np.asarray(r["levels"], dtype=float)
        acc = 100 * np.asarray(r["accuracy"], dtype=float)
        ax.plot(levels, acc, marker="o", markersize=4, color="tab:blue", linewidth=1.5, label=ROBUSTNESS_RAW)
        # The worst accuracy goes in the title: a label by the point would run into the frame.
        lows = []
        if np.isfinite(acc).any():
            lows.append(f"min {np.nanmin(acc):.1f}%" + (" raw" if any_prepared else ""))
        if "accuracy_prepared" in r:
            prep = 100 * np.asarray(r["accuracy_prepared"], dtype=float)
            ax.plot(levels, prep, marker="s", markersize=4, color="tab:orange", linewidth=1.5, linestyle="--",
                    label=ROBUSTNESS_PREPARED)
            if np.isfinite(prep).any():
                lows.append(f"{np.nanmin(prep):.1f}% prepared")
        ax.set_title(name + (f"\n({', '.join(lows)})" if lows else ""), fontsize=10)
        # The unit names the axis ("side of a black square (pixels)"): it is the whole label.
        ax.set_xlabel(r.get("unit") or "level", fontsize=9)
        ax.set_ylim(low, 102)
        # Ticks on round percentages, so that no label has to round (97.5 shown as "98%").
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))
        ax.yaxis.set_major_formatter(PercentFormatter(decimals=None))
        if np.unique(levels).size <= MAX_LEVEL_TICKS:  # a tick per level: "0, 1" for invert, not 0.0 ... 1.0
            ax.set_xticks(np.unique(levels))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.grid(True, alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    for ax in axes.ravel()[len(results):]:
        ax.set_visible(False)
    n = next((r["n"] for r in results.values() if r.get("n")), None)
    images = f" of {n:,} images" if n else ""
    if any_prepared:
        both = next(ax for ax, r in zip(axes.ravel(), results.values(), strict=False) if "accuracy_prepared" in r)
        fig.legend(*both.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=9, frameon=False)
        fig.suptitle(f"Robustness: accuracy{images} at each perturbation level, on raw 28x28 tensors and (where "
                     "drawn) through the real-image preparation", fontsize=12)
    else:
        fig.suptitle(f"Robustness on raw 28x28 tensors (no real-image preparation): accuracy{images} at each "
                     "perturbation level", fontsize=12)
    return _save(fig, path)


def _place_labels(fig: Figure, ax: Axes, xs: np.ndarray, ys: np.ndarray, names: Sequence[str]) -> None:
    """Label every point, trying a few offsets and keeping the first that overlaps nothing placed yet."""
    fig.draw_without_rendering()  # final axes positions, so that display coordinates hold
    renderer = fig.canvas.get_renderer()
    offsets = [(6, 6, "left", "bottom"), (6, -6, "left", "top"), (-6, 6, "right", "bottom"),
               (-6, -6, "right", "top"), (0, 9, "center", "bottom"), (0, -9, "center", "top"),
               (10, 0, "left", "center"), (-10, 0, "right", "center")]
    points = ax.transData.transform(np.column_stack([xs, ys]))
    frame = ax.get_window_extent(renderer)
    placed: list[Bbox] = []

    def try_place(i: int) -> Bbox | None:
        for extra in (0, 14, 28):  # push further out (with a leader line) when every near spot is taken
            for dx, dy, ha, va in offsets:
                shift = (dx + np.sign(dx) * extra, dy + np.sign(dy) * extra)
                text = ax.annotate(names[i], (xs[i], ys[i]), xytext=shift, textcoords="offset points", ha=ha,
                                   va=va, fontsize=9,
                                   arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6} if extra else None)
                box = text.get_window_extent(renderer).expanded(1.05, 1.1)
                hits_point = any(box.contains(px, py) for j, (px, py) in enumerate(points) if j != i)
                inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
                if inside and not hits_point and not any(box.overlaps(other) for other in placed):
                    return box
                text.remove()
        return None

    for i in np.argsort(xs, kind="stable"):
        box = try_place(i)
        if box is None:  # crowded: the default spot, overlapping, rather than no name at all
            text = ax.annotate(names[i], (xs[i], ys[i]), xytext=(6, 6), textcoords="offset points", fontsize=9)
            box = text.get_window_extent(renderer)
        placed.append(box)


def plot_accuracy_vs(rows: list[dict], x: str, path: PathLike, *, xlabel: str, log_x: bool = True) -> Path:
    """Accuracy of several models against a cost (training time, size), each point named.

    The dashed line joins the Pareto front: the models that no other model beats on both
    accuracy and cost (lower ``x`` counts as better).

    Args:
        rows: one dict per model: ``name``, ``accuracy`` (fraction), optional ``accuracy_std``
            (fraction, drawn as an error bar) and the key ``x``.
        x: the key of the horizontal value, e.g. ``"train_seconds"`` or ``"size_bytes"``.
        path: the PNG to write.
        xlabel: the horizontal axis label, with its unit.
        log_x: log scale on x (ignored when a value is not positive).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: ``rows`` is empty or a row lacks ``name``, ``accuracy`` or ``x``.
    """
    if not rows:
        raise ValueError("no models to plot")
    for r in rows:
        missing = [key for key in ("name", "accuracy", x) if key not in r]
        if missing:
            raise ValueError(f"model row {r.get('name', r)!r} lacks {', '.join(missing)}")
    names = [str(r["name"]) for r in rows]
    xs = np.array([float(r[x]) for r in rows])
    ys = np.array([100 * float(r["accuracy"]) for r in rows])
    std = np.array([100 * float(r["accuracy_std"]) if r.get("accuracy_std") is not None else np.nan for r in rows])

    fig = _new_figure(9.0, 6.0)
    ax = fig.add_subplot()
    has_std = np.isfinite(std)
    if has_std.any():
        ax.errorbar(xs[has_std], ys[has_std], yerr=std[has_std], fmt="o", color="tab:blue", ecolor="tab:blue",
                    elinewidth=1.2, capsize=4, markersize=7, label="mean ± std over seeds")
    if (~has_std).any():
        ax.plot(xs[~has_std], ys[~has_std], "o", color="tab:orange", markersize=7, label="single run")
    # Pareto front: walk by increasing cost, keep each model more accurate than all cheaper ones.
    order = np.lexsort((-ys, xs))
    front = [order[0]]
    for i in order[1:]:
        if ys[i] > ys[front[-1]]:
            front.append(i)
    if len(front) > 1:
        ax.plot(xs[front], ys[front], linestyle="--", color="0.55", linewidth=1, zorder=0,
                label="Pareto front (cheaper and more accurate)")
    if log_x and (xs > 0).all():
        ax.set_xscale("log")
    # Room around the points so the names fit inside the axes.
    lo_y = np.nanmin(ys - np.nan_to_num(std)) if ys.size else 0
    hi_y = np.nanmax(ys + np.nan_to_num(std)) if ys.size else 100
    pad = max(0.15 * (hi_y - lo_y), MIN_ACCURACY_PAD)
    ax.set_ylim(lo_y - pad, hi_y + pad)
    if ax.get_xscale() == "log":
        ax.set_xlim(xs.min() / 2.0, xs.max() * 2.0)
    else:
        span = max(np.ptp(xs), abs(xs.max()) * 0.1, 1e-9)
        ax.set_xlim(xs.min() - 0.15 * span, xs.max() + 0.15 * span)
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=None))  # as many decimals as the tick spacing needs
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Accuracy vs {xlabel} ({len(rows)} model{'s' if len(rows) != 1 else ''})", fontsize=12)
    ax.grid(True, which="major", alpha=0.3)
    # Below the axes: inside, it could cover a point or a name wherever it went.
    fig.legend(loc="outside lower center", ncols=3, fontsize=9, frameon=False)
    _place_labels(fig, ax, xs, ys, names)
    return _save(fig, path)


def plot_f1_heatmap(names: list[str], class_names: list[str], f1: np.ndarray, path: PathLike) -> Path:
    """Per-class F1 of several models, annotated, on a colour scale fitted to the values shown.

    Args:
        names: ``M`` model names (rows).
        class_names: ``C`` class names (columns).
        f1: ``(M, C)`` F1 scores in [0, 1] (``sklearn.metrics.f1_score(..., average=None)``).
        path: the PNG to write.

    Returns:
        ``path`` as a ``Path``. The best model per class is in bold; each row label carries the
        model's macro F1 (the mean of its row).

    Raises:
        ValueError: ``f1`` is not ``(len(names), len(class_names))``.
    """
    f1 = np.asarray(f1, dtype=float)
    m, k = len(names), len(class_names)
    if f1.shape != (m, k):
        raise ValueError(f"f1 must be ({m}, {k}) for {m} models and {k} classes; got {f1.shape}")
    finite = f1[np.isfinite(f1)]
    # MNIST F1s sit between 0.95 and 1: a 0-1 scale would paint every cell the same colour.
    hi = float(finite.max()) if finite.size else 1.0
    lo = min(float(finite.min()) if finite.size else 0.0, hi - MIN_F1_SCALE_SPAN)
    margin = 0.05 * (hi - lo)
    norm = Normalize(vmin=max(0.0, lo - margin), vmax=min(1.0, hi + margin))
    texts = [[f"{v:.3f}" if np.isfinite(v) else "n/a" for v in row] for row in f1.tolist()]
    col_best = np.zeros_like(f1, dtype=bool)
    if m > 1:
        filled = np.where(np.isfinite(f1), f1, -np.inf)
        col_best = filled == filled.max(axis=0, keepdims=True)
    row_labels = [f"{name}\n(macro {np.nanmean(row):.3f})" if np.isfinite(row).any() else name
                  for name, row in zip(names, f1, strict=True)]

    fig = _new_figure(2.6 + 0.72 * k, 1.5 + 0.62 * m)
    ax = fig.add_subplot()
    image = _annotated_heatmap(ax, f1, texts, cmap="viridis", norm=norm, fontsize=9, bold=col_best)
    fig.colorbar(image, ax=ax, label="F1 (colours span the values shown, not 0-1)", shrink=0.9, pad=0.02,
                 format="%.3f")
    rotate = 45 if max(map(len, class_names), default=0) > 3 else 0
    ax.set_xticks(range(k), class_names, rotation=rotate, ha="right" if rotate else "center", rotation_mode="anchor")
    ax.set_yticks(range(m), row_labels, fontsize=9)
    ax.set_xlabel("class")
    ax.set_ylabel("model")
    bold_note = "; bold: best model per class" if m > 1 else ""
    ax.set_title(f"F1 per class and model{bold_note}", fontsize=11)
    return _save(fig, path)
