"""The one model registry: ``create_model(name, **cfg)`` and ``list_models()``.

Usage::

    model = create_model("cnn", blocks=[{"filters": 32}, {"filters": 64}])
    list_models("r*")            # ['random-forest', 'resnet', 'rnn']

Each entry has a typed config (pydantic, unknown keys rejected) and a kind: ``torch`` models
are ``nn.Module``s taking ``(B, 1, H, W)`` normalised inputs and returning ``(B, n_classes)``
logits; ``sequence`` models are ``nn.Module``s reading lines ``(B, 1, H, W)`` of any width and
returning ``(B, T, n_classes)`` CTC log-probabilities (``models/ctc.py``); ``classical`` models
follow the scikit-learn estimator contract.
"""

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from digitlab.core.config import config_keys
from digitlab.core.errors import DigitlabError, describe_validation_error

ModelKind = Literal["torch", "sequence", "classical"]

# Sane maxima, checked before anything is allocated (a typo such as dense=[100000000] is one line, not
# gigabytes): a layer's width, an input side, and the whole network's trainable parameters.
MAX_WIDTH = 65_536
MAX_SIDE = 1024
MAX_PARAMETERS = 50_000_000

Size = Annotated[int, Field(ge=1, le=MAX_WIDTH)]  # a layer's width: units, filters, channels
Side = Annotated[int, Field(ge=1, le=MAX_SIDE)]
Dropout = Annotated[float, Field(ge=0, lt=1)]


class ModelError(DigitlabError):
    """An unknown model name or a bad model config."""


class ModelConfig(BaseModel):
    """Base of every model's config: unknown keys are errors, so a typo fails fast."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    input_size: tuple[Side, Side] = (28, 28)
    n_classes: int = Field(10, ge=1, le=MAX_WIDTH)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: ModelKind
    config_cls: type[ModelConfig]
    build: Callable[[Any], Any]
    summary: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, config_cls: type[ModelConfig], *, kind: ModelKind = "torch") -> Callable:
    """Decorator registering ``build(config) -> model`` under ``name``; a duplicate name raises."""

    def decorator(build: Callable[[Any], Any]) -> Callable[[Any], Any]:
        if name in _REGISTRY:
            raise ModelError(f"model {name!r} is already registered")
        summary = (build.__doc__ or "").strip().splitlines()[0] if build.__doc__ else ""
        _REGISTRY[name] = ModelEntry(name, kind, config_cls, build, summary)
        return build

    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names, sorted, optionally filtered by a shell-style ``pattern``."""
    _ensure_loaded()
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``.

    Raises:
        ModelError: unknown name (the message lists the known ones).
    """
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}: choose one of {', '.join(sorted(_REGISTRY))}") from None


def make_config(name: str, **cfg: Any) -> ModelConfig:
    """Validate ``cfg`` against ``name``'s config class.

    Raises:
        ModelError: unknown model, unknown key or bad value, in one line.
    """
    entry = get_entry(name)
    try:
        return entry.config_cls(**cfg)
    except ValidationError as e:
        known = [k.key for k in config_keys(entry.config_cls)]
        raise ModelError(f"model {name!r}: bad config: {describe_validation_error(e, known)}") from None


def create_model(name: str, **cfg: Any) -> Any:
    """Build model ``name`` from keyword config (defaults fill the rest), once its size is known to fit
    ``MAX_PARAMETERS`` (``check_size``).

    Raises:
        ModelError: unknown model, unknown config key or bad value, or a network over the parameter budget.
    """
    config = make_config(name, **cfg)
    check_size(name, config)
    return get_entry(name).build(config)


def meta_parameters(name: str, config: ModelConfig) -> int:
    """Trainable parameters of torch or sequence model ``name`` built from ``config``, counted on PyTorch's meta
    device (shapes only: nothing is allocated, whatever the size); 0 for a classical model."""
    entry = get_entry(name)
    if entry.kind == "classical":
        return 0
    import torch  # the registry itself loads without torch

    with torch.device("meta"):
        return count_parameters(entry.build(config))


def check_size(name: str, config: ModelConfig, budget: int | None = None) -> int:
    """The parameter count of ``name`` built from ``config`` (``meta_parameters``), if within ``budget``
    (default ``MAX_PARAMETERS``).

    Raises:
        ModelError: over the budget, in one line naming the model and both numbers.
    """
    budget = MAX_PARAMETERS if budget is None else budget
    n = meta_parameters(name, config)
    if n > budget:
        raise ModelError(f"model {name!r}: {n:,} parameters is over the {budget:,}-parameter budget "
                         "(smaller layers, or fewer of them)")
    return n


def count_parameters(model: Any) -> int:
    """Trainable parameters of a torch model; for a classical model, its stored coefficients."""
    if hasattr(model, "parameters"):
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    return int(getattr(model, "n_parameters_", 0))


def _ensure_loaded() -> None:
    # The families register themselves on import; importing here keeps one way in.
    # classical_configs, not classical: the registry does not import scikit-learn.
    from digitlab.models import classical_configs, cnn, crnn, mlp, resnet, rnn  # noqa: F401
