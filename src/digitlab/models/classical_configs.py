"""The classical baselines' typed configs and registry entries, without importing scikit-learn.

Usage: ``create_model("svm", C=5.0)`` (the registry imports this module; building a model imports
``digitlab.models.classical``, where the scikit-learn pipelines live).

scikit-learn is slow to import (docs/decisions.md#deferred-imports); keeping it out of the registry keeps it out of
``Predictor.from_path`` on a torch run, ``list_models()`` and ``digitlab --help``.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from digitlab.models.registry import ModelConfig, register_model

if TYPE_CHECKING:
    from digitlab.models.classical import ClassicalModel


class ClassicalConfig(ModelConfig):
    features: Literal["pixels", "pca", "hog"] = "pixels"
    pca_components: int = Field(50, ge=1, le=4096)
    standardize: bool = False


class SVMConfig(ClassicalConfig):
    features: Literal["pixels", "pca", "hog"] = "pca"
    C: float = Field(10.0, gt=0)
    kernel: Literal["rbf", "linear", "poly"] = "rbf"
    gamma: float | Literal["scale", "auto"] = "scale"


class KNNConfig(ClassicalConfig):
    n_neighbors: int = Field(3, ge=1, le=1000)
    weights: Literal["uniform", "distance"] = "uniform"


class RandomForestConfig(ClassicalConfig):
    n_estimators: int = Field(100, ge=1, le=10_000)
    max_depth: int | None = Field(None, ge=1)
    n_jobs: int = -1
    random_state: int = 0


class LogisticConfig(ClassicalConfig):
    standardize: bool = True
    C: float = Field(1.0, gt=0)
    max_iter: int = Field(200, ge=1)


def _lazy_build(builder: str, summary: str) -> Callable[[ClassicalConfig], "ClassicalModel"]:
    """A registry builder that imports scikit-learn (``models.classical``) only when a model is built."""

    def build(cfg: ClassicalConfig) -> "ClassicalModel":
        from digitlab.models import classical

        return getattr(classical, builder)(cfg)

    build.__doc__ = summary
    return build


# name, config, the builder in models.classical, the registry's one-line summary
for _name, _config, _builder, _summary in (
        ("svm", SVMConfig, "build_svm", "Support vector machine (RBF kernel by default, on 50 PCA components)."),
        ("knn", KNNConfig, "build_knn", "k-nearest neighbours on pixels."),
        ("random-forest", RandomForestConfig, "build_random_forest", "Random forest on pixels."),
        ("logistic", LogisticConfig, "build_logistic", "Multinomial logistic regression on standardised pixels.")):
    register_model(_name, _config, kind="classical")(_lazy_build(_builder, _summary))
