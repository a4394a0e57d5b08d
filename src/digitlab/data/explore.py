"""Exploration figures and the numbers behind them: what to look at before training.

Usage::

    summary = explore_dataset(load_dataset("mnist"), out_dir)   # PNGs + summary.json in out_dir

Figures: a sample grid (a row per class), the class distribution (train vs test), the mean image
of each class, the pixel intensity histogram, per-class ink statistics (ink area, stroke
thickness, bounding box) and a 2-D PCA scatter of a sample. Every statistic is computed on whole
arrays at once, without a float copy of the training set. Empty splits and single-class datasets
give (emptier) figures, not errors.

Figures are drawn on explicit Agg canvases, never through pyplot: importing or calling this module
leaves the caller's matplotlib backend and open figures alone. matplotlib and scikit-learn are
imported when the figures are drawn, not when the module is imported.
"""

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from digitlab.core.fileio import atomic_path, atomic_write_text
from digitlab.data.check import class_counts, flatten_images
from digitlab.data.errors import FileAccessError, os_reason
from digitlab.data.loading import Dataset

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# A pixel counts as ink at half intensity or more (MNIST strokes are anti-aliased at the edges).
INK_THRESHOLD = 128
N_SAMPLES_PER_CLASS = 12
N_PCA_SAMPLES = 3000
DPI = 110


def ink_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image ink area, stroke thickness and bounding box, all vectorised.

    Args:
        images: ``(N, H, W)`` uint8.

    Returns:
        ``area`` (ink pixels), ``thickness`` (2 * area / perimeter, in px: the width of a long
        stroke), ``bbox_height`` and ``bbox_width`` (px, 0 for an empty image); each ``(N,)``.
    """
    ink = images >= INK_THRESHOLD  # (N, H, W) bool
    area = ink.sum(axis=(1, 2))
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    # Perimeter: ink/background edges between 4-neighbours, the frame counting as background.
    perimeter = (padded[:, 1:, :] != padded[:, :-1, :]).sum(axis=(1, 2)) + (
        padded[:, :, 1:] != padded[:, :, :-1]
    ).sum(axis=(1, 2))
    thickness = np.divide(2 * area, perimeter, out=np.zeros(len(area)), where=perimeter > 0)

    def extent(any_ink: np.ndarray) -> np.ndarray:  # (N, L) bool -> (N,) length of the ink span
        first = any_ink.argmax(axis=1)
        last = any_ink.shape[1] - 1 - any_ink[:, ::-1].argmax(axis=1)
        return np.where(any_ink.any(axis=1), last - first + 1, 0)

    return {
        "area": area,
        "thickness": thickness,
        "bbox_height": extent(ink.any(axis=2)),
        "bbox_width": extent(ink.any(axis=1)),
    }


def class_mean_images(images: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean image of each class, ``(n_classes, H, W)`` float64 (zeros for an absent class).

    Summed class by class in uint64 straight from the uint8 images: the only copy is one class's
    uint8 rows at a time, not a float32 copy of the whole set (188 MB for MNIST's training split).
    """
    flat = flatten_images(images)
    sums = np.zeros((n_classes, flat.shape[1]), dtype=np.float64)
    counts = np.zeros(n_classes, dtype=np.int64)
    for c in range(n_classes):
        rows = flat[labels == c]
        sums[c] = rows.sum(axis=0, dtype=np.uint64)
        counts[c] = len(rows)
    return (sums / np.maximum(counts, 1)[:, None]).reshape(n_classes, *images.shape[1:])


@contextlib.contextmanager
def _writing_into(out: Path) -> Iterator[None]:
    """Turn a failed write in ``out`` (read-only, disk full) into a one-line DataError."""
    try:
        yield
    except OSError as e:
        raise FileAccessError(f"{out}: cannot write: {os_reason(e)}") from None


def _make_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileAccessError(f"{out}: not a folder (a file of that name exists)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileAccessError(f"{out}: cannot create the folder: {os_reason(e)}") from None


def _new_figure(figsize: tuple[float, float]) -> "Figure":
    """A figure with its own Agg canvas: files only, without pyplot's global backend and figure list."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: "Figure", path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight")


def _plot_samples(ds: Dataset, rng: np.random.Generator, path: Path) -> None:
    k, n = ds.spec.n_classes, N_SAMPLES_PER_CLASS
    # squeeze=False: axes stays (k, n) even for a single class.
    fig = _new_figure((n * 0.75 + 1.2, k * 0.75 + 0.6))
    axes = fig.subplots(k, n, squeeze=False)
    for c in range(k):
        idx = np.flatnonzero(ds.train_labels == c)
        pick = rng.choice(idx, size=min(n, idx.size), replace=False) if idx.size else []
        for j in range(n):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(pick):
                ax.imshow(ds.train_images[pick[j]], cmap="gray", vmin=0, vmax=255)
        axes[c, 0].set_ylabel(ds.spec.class_names[c], rotation=0, ha="right", va="center", fontsize=10)
    fig.subplots_adjust(wspace=0.05, hspace=0.05, top=0.95)
    fig.suptitle(f"{ds.spec.name}: random training images, one row per class", fontsize=12, y=0.985)
    _save(fig, path)


def _plot_distribution(ds: Dataset, counts: dict[str, np.ndarray], path: Path) -> None:
    k = ds.spec.n_classes
    x = np.arange(k)
    fig = _new_figure((9, 4.5))
    ax = fig.subplots()
    for offset, split, color in ((-0.2, "train", "tab:blue"), (0.2, "test", "tab:orange")):
        pct = 100 * counts[split] / max(counts[split].sum(), 1)
        bars = ax.bar(x + offset, pct, width=0.4, color=color,
                      label=f"{split} (n={int(counts[split].sum()):,})")
        ax.bar_label(bars, labels=[f"{c:,}" for c in counts[split]], fontsize=7, rotation=90, padding=2)
    ax.axhline(100 / k, color="gray", linestyle="--", linewidth=1, label="uniform")
    ax.set_xticks(x, ds.spec.class_names, rotation=30 if max(map(len, ds.spec.class_names)) > 3 else 0)
    ax.set_xlabel("class")
    ax.set_ylabel("share of split (%)  [bar labels: image count]")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.15)
    ax.set_title(f"{ds.spec.name}: class distribution, train vs test")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def _plot_means(ds: Dataset, means: np.ndarray, path: Path) -> None:
    k = ds.spec.n_classes
    cols = min(5, k)
    rows = -(-k // cols)
    fig = _new_figure((cols * 1.8 + 1.0, rows * 2.0))
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for c, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if c < k:
            image = ax.imshow(means[c], cmap="magma", vmin=0, vmax=255)
            ax.set_title(ds.spec.class_names[c], fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.8, label="mean pixel value")
    fig.suptitle(f"{ds.spec.name}: mean training image per class", fontsize=11)
    _save(fig, path)


def _plot_histogram(ds: Dataset, hists: dict[str, np.ndarray], path: Path) -> None:
    fig = _new_figure((9, 4.5))
    ax = fig.subplots()
    # Train as a filled area, test as a line on top: the two nearly coincide on MNIST.
    for split, color in (("train", "tab:blue"), ("test", "tab:orange")):
        share = 100 * hists[split] / max(hists[split].sum(), 1)
        if split == "train":
            ax.fill_between(np.arange(256), share, step="mid", color=color, alpha=0.35, label=split)
        else:
            ax.step(np.arange(256), share, where="mid", color=color, linewidth=1, label=split)
    if any(h.any() for h in hists.values()):  # a log axis needs some positive value
        ax.set_yscale("log")
    ax.set_xlim(-2, 257)
    ax.set_xlabel("pixel value (0 = background, 255 = full ink)")
    ax.set_ylabel("share of pixels (%, log scale)")
    zero = {s: 100 * hists[s][0] / max(hists[s].sum(), 1) for s in hists}
    ax.set_title(f"{ds.spec.name}: pixel intensity histogram ({zero['train']:.1f}% of train pixels are 0)")
    ax.legend()
    ax.grid(True, which="major", alpha=0.3)
    _save(fig, path)


def _plot_ink(ds: Dataset, stats: dict[str, np.ndarray], path: Path) -> None:
    panels = [
        ("area", f"ink area (pixels >= {INK_THRESHOLD})"),
        ("thickness", "stroke thickness (px)"),
        ("bbox_height", "bounding box height (px)"),
        ("bbox_width", "bounding box width (px)"),
    ]
    k = ds.spec.n_classes
    fig = _new_figure((12, 7.5))
    axes = fig.subplots(2, 2)
    for ax, (key, label) in zip(axes.ravel(), panels, strict=True):
        data = [stats[key][ds.train_labels == c] for c in range(k)]
        ax.boxplot(data, showfliers=False, medianprops={"color": "tab:red"})
        ax.set_xticks(range(1, k + 1), ds.spec.class_names,
                      rotation=30 if max(map(len, ds.spec.class_names)) > 3 else 0)
        ax.set_xlabel("class")
        ax.set_ylabel(label)
        ax.set_title(label, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"{ds.spec.name}: per-class ink statistics, training split "
                 "(box: quartiles, whiskers: 1.5 IQR, red: median)", fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def _plot_pca(ds: Dataset, coords: np.ndarray, labels: np.ndarray, evr: np.ndarray, path: Path) -> None:
    from matplotlib import colormaps

    fig = _new_figure((8, 7))
    ax = fig.subplots()
    cmap = colormaps["tab10"]
    for c in range(ds.spec.n_classes):
        m = labels == c
        ax.scatter(coords[m, 0], coords[m, 1], s=5, alpha=0.6, color=cmap(c % 10),
                   label=ds.spec.class_names[c], rasterized=True)
    ax.set_xlabel(f"PC 1 ({100 * evr[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * evr[1]:.1f}% of variance)")
    ax.set_title(f"{ds.spec.name}: PCA of {len(labels):,} random training images")
    if len(labels):
        ax.legend(markerscale=4, fontsize=8, title="class", loc="best", framealpha=0.8)
    _save(fig, path)


def _describe(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"mean": 0.0, "std": 0.0, "median": 0.0, "p5": 0.0, "p95": 0.0}
    p5, med, p95 = np.percentile(values, [5, 50, 95])
    return {"mean": round(float(values.mean()), 3), "std": round(float(values.std()), 3),
            "median": round(float(med), 3), "p5": round(float(p5), 3), "p95": round(float(p95), 3)}


def explore_dataset(ds: Dataset, out_dir: str | Path, *, seed: int = 0) -> dict[str, Any]:
    """Write the exploration figures and ``summary.json`` into ``out_dir``.

    Args:
        ds: a loaded dataset.
        out_dir: created if missing; files in it are replaced atomically.
        seed: picks the sample images and the PCA sample.

    Returns:
        The summary (also written as ``summary.json``), including the figure paths.

    Raises:
        FileAccessError: ``out_dir`` is a file, or cannot be created or written.
    """
    out = Path(out_dir)
    _make_out_dir(out)
    rng = np.random.default_rng(seed)
    k = ds.spec.n_classes
    names = ds.spec.class_names

    counts = {s: class_counts(getattr(ds, f"{s}_labels"), k) for s in ("train", "test")}
    hists = {s: np.bincount(getattr(ds, f"{s}_images").reshape(-1), minlength=256) for s in ("train", "test")}
    means = class_mean_images(ds.train_images, ds.train_labels, k)
    ink = ink_statistics(ds.train_images)

    n_pca = min(N_PCA_SAMPLES, len(ds.train_images))
    pick = rng.choice(len(ds.train_images), size=n_pca, replace=False)
    if n_pca >= 2:  # two components need two images
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed)
        coords = pca.fit_transform(flatten_images(ds.train_images[pick]).astype(np.float32) / 255)
        evr = pca.explained_variance_ratio_
    else:
        coords, evr = np.zeros((n_pca, 2)), np.zeros(2)

    figures = {
        "samples": "samples.png",
        "class_distribution": "class_distribution.png",
        "mean_images": "mean_images.png",
        "pixel_histogram": "pixel_histogram.png",
        "ink_statistics": "ink_statistics.png",
        "pca": "pca.png",
    }
    with _writing_into(out):
        _plot_samples(ds, rng, out / figures["samples"])
        _plot_distribution(ds, counts, out / figures["class_distribution"])
        _plot_means(ds, means, out / figures["mean_images"])
        _plot_histogram(ds, hists, out / figures["pixel_histogram"])
        _plot_ink(ds, ink, out / figures["ink_statistics"])
        _plot_pca(ds, coords, ds.train_labels[pick], evr, out / figures["pca"])

    def pixel_summary(split: str) -> dict[str, float]:
        h = hists[split].astype(np.float64)
        v = np.arange(256, dtype=np.float64)
        n = max(h.sum(), 1)
        mean = (h * v).sum() / n
        var = max((h * v * v).sum() / n - mean**2, 0.0)  # rounding can dip below zero
        return {"mean": round(float(mean), 3), "std": round(float(np.sqrt(var)), 3),
                "fraction_zero": round(float(h[0] / n), 4),
                "fraction_ink": round(float(h[INK_THRESHOLD:].sum() / n), 4)}

    summary: dict[str, Any] = {
        "dataset": ds.spec.name,
        "description": ds.spec.description,
        "image_shape": list(ds.train_images.shape[1:]),
        "class_names": list(names),
        "n_images": {s: int(counts[s].sum()) for s in counts},
        "class_counts": {s: dict(zip(names, counts[s].tolist(), strict=True)) for s in counts},
        "class_percent": {
            s: dict(zip(names, np.round(100 * counts[s] / max(counts[s].sum(), 1), 2).tolist(), strict=True))
            for s in counts
        },
        "pixels": {s: pixel_summary(s) for s in hists},
        "ink_threshold": INK_THRESHOLD,
        "ink_per_class": {
            names[c]: {key: _describe(val[ds.train_labels == c]) for key, val in ink.items()} for c in range(k)
        },
        "ink_all": {key: _describe(val) for key, val in ink.items()},
        "pca": {"n_samples": n_pca, "explained_variance_ratio": [round(float(r), 4) for r in evr]},
        "seed": seed,
        "figures": {key: str(out / name) for key, name in figures.items()},
    }
    with _writing_into(out):
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
