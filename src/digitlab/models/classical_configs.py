"""The classical baselines' typed configs and registry entries, without importing scikit-learn.

Usage: ``create_model("svm", C=5.0)`` (the registry imports this module; building a model imports
``digitlab.models.classical``, where the scikit-learn pipelines live).

scikit-learn takes a second or more to import; keeping it out of the registry keeps it out of
``Predictor.from_path`` on a torch run, ``list_models()`` and ``digitlab --help``.
"""

from typing import TYPE_CHECKING, Literal

from digitlab.models.registry import ModelConfig, register_model

if TYPE_CHECKING:
    from digitlab.models.classical import ClassicalModel


class ClassicalConfig(ModelConfig):
    features: Literal["pixels", "pca", "hog"] = "pixels"
    pca_components: int = 50
    standardize: bool = False


class SVMConfig(ClassicalConfig):
    features: Literal["pixels", "pca", "hog"] = "pca"
    C: float = 10.0
    kernel: Literal["rbf", "linear", "poly"] = "rbf"
    gamma: float | Literal["scale", "auto"] = "scale"


class KNNConfig(ClassicalConfig):
    n_neighbors: int = 3
    weights: Literal["uniform", "distance"] = "uniform"


class RandomForestConfig(ClassicalConfig):
    n_estimators: int = 100
    max_depth: int | None = None
    n_jobs: int = -1
    random_state: int = 0


class LogisticConfig(ClassicalConfig):
    standardize: bool = True
    C: float = 1.0
    max_iter: int = 200


@register_model("svm", SVMConfig, kind="classical")
def build_svm(cfg: SVMConfig) -> "ClassicalModel":
    """Support vector machine (RBF kernel by default, on 50 PCA components)."""
    from digitlab.models import classical

    return classical.build_svm(cfg)


@register_model("knn", KNNConfig, kind="classical")
def build_knn(cfg: KNNConfig) -> "ClassicalModel":
    """k-nearest neighbours on pixels."""
    from digitlab.models import classical

    return classical.build_knn(cfg)


@register_model("random-forest", RandomForestConfig, kind="classical")
def build_random_forest(cfg: RandomForestConfig) -> "ClassicalModel":
    """Random forest on pixels."""
    from digitlab.models import classical

    return classical.build_random_forest(cfg)


@register_model("logistic", LogisticConfig, kind="classical")
def build_logistic(cfg: LogisticConfig) -> "ClassicalModel":
    """Multinomial logistic regression on standardised pixels."""
    from digitlab.models import classical

    return classical.build_logistic(cfg)
