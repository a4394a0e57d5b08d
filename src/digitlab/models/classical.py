"""Classical baselines as scikit-learn pipelines: svm, knn, random-forest, logistic.

Usage::

    model = create_model("knn", n_neighbors=3)
    model.fit(train_images, train_labels)          # (N, 28, 28) uint8, (N,)
    scores = model.predict_scores(test_images)     # (N, 10): probabilities, or the SVM's decision function
    model.save(path); ClassicalModel.load(path, model.name, model.config)   # skops format, no pickle

Each pipeline scales pixels, optionally extracts PCA or HOG features, then fits the estimator.
Hyperparameters are ``__init__`` kwargs (the typed config); learned state lives in the fitted
pipeline. Files are written with skops; loading refuses any type outside an explicit allowlist,
because loading a pickle-like file is running code.

The configs and registry entries live in ``digitlab.models.classical_configs``, so the registry does
not import scikit-learn; skops is imported only to save or load.
"""

import os
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC

from digitlab.core.fileio import atomic_path
from digitlab.models.classical_configs import (
    ClassicalConfig,
    KNNConfig,
    LogisticConfig,
    RandomForestConfig,
    SVMConfig,
)
from digitlab.models.registry import ModelError

PIXEL_MAX = 255.0


class HOGFeatures(TransformerMixin, BaseEstimator):
    """Histogram of oriented gradients, computed for a whole batch at once (no per-image loop).

    Unsigned orientations in ``n_bins`` bins per ``cell`` x ``cell`` cell, magnitude-weighted and
    L2-normalised per cell. Input: ``(N, H*W)`` floats; output ``(N, cells * n_bins)``.
    """

    def __init__(self, image_shape: tuple[int, int] = (28, 28), cell: int = 7, n_bins: int = 9) -> None:
        self.image_shape = image_shape
        self.cell = cell
        self.n_bins = n_bins

    def fit(self, X: np.ndarray, y: Any = None) -> "HOGFeatures":
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        h, w = self.image_shape
        ch, cw = h // self.cell, w // self.cell
        out = np.empty((len(X), ch * cw * self.n_bins), dtype=np.float32)
        for start in range(0, len(X), 4096):  # chunks bound the (n, H, W, bins) one-hot memory
            img = np.asarray(X[start : start + 4096], dtype=np.float32).reshape(-1, h, w)
            gx = np.zeros_like(img)
            gy = np.zeros_like(img)
            gx[:, :, 1:-1] = img[:, :, 2:] - img[:, :, :-2]
            gy[:, 1:-1, :] = img[:, 2:, :] - img[:, :-2, :]
            mag = np.hypot(gx, gy)
            angle = np.mod(np.arctan2(gy, gx), np.pi)
            bins = np.minimum((angle / np.pi * self.n_bins).astype(np.int64), self.n_bins - 1)
            onehot = np.zeros((*img.shape, self.n_bins), dtype=np.float32)
            np.put_along_axis(onehot, bins[..., None], mag[..., None], axis=-1)
            cells = onehot[:, : ch * self.cell, : cw * self.cell].reshape(
                len(img), ch, self.cell, cw, self.cell, self.n_bins
            ).sum(axis=(2, 4))  # (n, ch, cw, bins)
            cells /= np.linalg.norm(cells, axis=-1, keepdims=True) + 1e-6
            out[start : start + len(img)] = cells.reshape(len(img), -1)
        return out


def _to_unit(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32) / PIXEL_MAX


class ClassicalModel:
    """A fitted-or-not scikit-learn pipeline over raw uint8 images, with skops persistence."""

    # Types a digitlab-written file may contain beyond what skops trusts by default.
    TRUSTED_TYPES = (
        "digitlab.models.classical.HOGFeatures",
        "digitlab.models.classical._to_unit",
        "sklearn.tree._tree.Tree",
    )

    def __init__(self, name: str, config: ClassicalConfig, pipeline: Pipeline) -> None:
        self.name = name
        self.config = config
        self.pipeline = pipeline

    @staticmethod
    def _flat(images: np.ndarray) -> np.ndarray:
        return np.asarray(images).reshape(len(images), -1)

    def fit(self, images: np.ndarray, labels: np.ndarray) -> "ClassicalModel":
        self.pipeline.fit(self._flat(images), np.asarray(labels))
        return self

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.pipeline.predict(self._flat(images))

    def predict_scores(self, images: np.ndarray) -> np.ndarray:
        """Per-class scores ``(N, n_classes)``: probabilities when the estimator has them, else the
        decision function (SVM). Column ``i`` is class ``i`` even when training lacked some class
        (its column is then 0, or below every decision value)."""
        x = self._flat(images)
        if hasattr(self.pipeline, "predict_proba"):
            scores, fill = self.pipeline.predict_proba(x), 0.0
        else:
            scores = self.pipeline.decision_function(x)
            if scores.ndim == 1:  # two classes: one column, positive means classes_[1]
                scores = np.stack([-scores, scores], axis=1)
            fill = float(scores.min()) - 1.0 if scores.size else 0.0
        classes = np.asarray(self.pipeline.classes_)
        if len(classes) == self.config.n_classes and np.array_equal(classes, np.arange(self.config.n_classes)):
            return scores
        out = np.full((len(x), self.config.n_classes), fill, dtype=np.float64)
        out[:, classes.astype(int)] = scores
        return out

    @property
    def n_parameters_(self) -> int:
        """Numbers the fitted model stores to predict (support vectors, samples, tree nodes, weights)."""
        est = self.pipeline[-1]
        if hasattr(est, "support_vectors_"):
            return int(est.support_vectors_.size + est.dual_coef_.size)
        if hasattr(est, "_fit_X"):
            return int(est._fit_X.size)
        if hasattr(est, "estimators_"):
            return int(sum(t.tree_.node_count for t in est.estimators_))
        if hasattr(est, "coef_"):
            return int(est.coef_.size + est.intercept_.size)
        return 0

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted pipeline in skops format, atomically."""
        import skops.io as sio  # slow to import: only saving and loading need it (docs/decisions.md#deferred-imports)

        path = Path(path)
        with atomic_path(path) as tmp:
            sio.dump(self.pipeline, tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], name: str, config: ClassicalConfig) -> "ClassicalModel":
        """Read a pipeline written by ``save``.

        Raises:
            ModelError: the file holds a type outside skops' defaults and digitlab's allowlist
                (it was not written by digitlab, and loading it could run code), or is unreadable.
        """
        import skops.io as sio

        try:
            untrusted = sio.get_untrusted_types(file=path)
        except Exception as e:  # skops raises a variety of errors for non-skops files
            raise ModelError(f"{path}: not a readable skops model file: {e}") from None
        unexpected = sorted(set(untrusted) - set(cls.TRUSTED_TYPES))
        if unexpected:
            raise ModelError(f"{path}: refusing to load types digitlab did not write: {', '.join(unexpected)}")
        pipeline = sio.load(path, trusted=untrusted)
        return cls(name, config, pipeline)


def _pipeline(cfg: ClassicalConfig, estimator: BaseEstimator) -> Pipeline:
    steps: list[tuple[str, Any]] = [("unit", FunctionTransformer(_to_unit))]
    if cfg.features == "hog":
        steps.append(("hog", HOGFeatures(image_shape=cfg.input_size)))
    if cfg.standardize:
        steps.append(("scale", StandardScaler()))
    if cfg.features == "pca":
        steps.append(("pca", PCA(n_components=cfg.pca_components, random_state=0)))
    steps.append(("clf", estimator))
    return Pipeline(steps)


def build_svm(cfg: SVMConfig) -> ClassicalModel:
    """Support vector machine (RBF kernel by default, on 50 PCA components)."""
    return ClassicalModel("svm", cfg, _pipeline(cfg, SVC(C=cfg.C, kernel=cfg.kernel, gamma=cfg.gamma)))


def build_knn(cfg: KNNConfig) -> ClassicalModel:
    """k-nearest neighbours on pixels."""
    est = KNeighborsClassifier(n_neighbors=cfg.n_neighbors, weights=cfg.weights, algorithm="brute", n_jobs=-1)
    return ClassicalModel("knn", cfg, _pipeline(cfg, est))


def build_random_forest(cfg: RandomForestConfig) -> ClassicalModel:
    """Random forest on pixels."""
    est = RandomForestClassifier(n_estimators=cfg.n_estimators, max_depth=cfg.max_depth, n_jobs=cfg.n_jobs,
                                 random_state=cfg.random_state)
    return ClassicalModel("random-forest", cfg, _pipeline(cfg, est))


def build_logistic(cfg: LogisticConfig) -> ClassicalModel:
    """Multinomial logistic regression on standardised pixels."""
    return ClassicalModel("logistic", cfg, _pipeline(cfg, LogisticRegression(C=cfg.C, max_iter=cfg.max_iter)))
