"""Typed run configuration: defaults < recipe YAML < ``--set key=value``; YAML round-trip.

Usage::

    cfg = resolve_config(load_yaml("recipe.yaml"), ["train.epochs=3", "model.args.dropout=0.2"])
    text = dump_config(cfg); assert RunConfig.model_validate(yaml.safe_load(text)) == cfg

Architecture (``model``) is kept apart from training parameters, so ``model.json`` alone can
rebuild the network. Unknown keys are errors everywhere (``extra="forbid"``).
"""

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from digitlab.core.errors import DigitlabError, describe_validation_error


class ConfigError(DigitlabError):
    """A bad config key or value, a bad ``--set`` expression, or an unreadable YAML file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Strict):
    name: str = "cnn"
    args: dict[str, Any] = Field(default_factory=dict)


class DataSection(_Strict):
    dataset: str = "mnist"
    data_dir: str | None = None
    n_val: int = 5000
    split_seed: int = 0
    train_subset: int | None = Field(None, description="use only the first N training images (quick runs)")


class OptimSection(_Strict):
    name: Literal["sgd", "adam", "adamw", "adadelta"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleSection(_Strict):
    name: Literal["none", "onecycle", "cosine", "step"] = "none"
    warmup_epochs: float = 0.0
    step_size: int = 1
    gamma: float = 0.7
    pct_start: float = 0.25
    final_lr_ratio: float = 0.0


class AugmentSection(_Strict):
    rotation: float = 0.0           # degrees, +-
    translate: float = 0.0          # fraction of the side, +-
    scale: tuple[float, float] = (1.0, 1.0)
    shear: float = 0.0              # degrees, +-
    elastic_alpha: float = 0.0      # 0 turns elastic distortion off
    elastic_sigma: float = 4.0
    contrast: float = 0.0           # +- fraction
    noise_std: float = 0.0          # in [0, 1] pixel units
    erasing: float = 0.0            # probability
    stroke: float = 0.0             # probability of a random stroke-width change (thinner or thicker)
    p: float = 1.0                  # probability of the geometric transform per image

    @property
    def enabled(self) -> bool:
        return any((self.rotation, self.translate, self.scale != (1.0, 1.0), self.shear, self.elastic_alpha,
                    self.contrast, self.noise_std, self.erasing, self.stroke))


class TrainSection(_Strict):
    epochs: int = 5
    batch_size: int = 128
    eval_batch_size: int = 1000
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    ema_decay: float | None = None
    early_stopping_patience: int | None = None
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: str = "auto"
    threads: int | None = None
    channels_last: bool = False
    outlier_exposure: float = 0.0   # weight of the uniform-target loss on synthetic non-digits (0: off)
    outlier_fraction: float = 0.125  # non-digits added to each batch, as a share of the batch size
    outlier_bank: int = 8000        # how many distinct non-digits are drawn (cached)
    sync_batchnorm: bool = False    # data-parallel runs on CUDA: batch-norm statistics over all ranks' shares
    dist_timeout: float = Field(default=300.0, gt=0)  # seconds a rank waits for the others before the job fails


class RunConfig(_Strict):
    """Everything needed to reproduce a run."""

    recipe: str = "custom"
    description: str = ""
    seed: int = 0
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    augment: AugmentSection = Field(default_factory=AugmentSection)
    train: TrainSection = Field(default_factory=TrainSection)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping.

    Raises:
        ConfigError: missing file, bad YAML, or not a mapping.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: bad YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def read_run_config(path: str | Path) -> RunConfig:
    """The resolved config a run directory's ``config.yaml`` holds.

    Raises:
        ConfigError: a missing or unreadable file, or not a digitlab config; one line.
    """
    try:
        return RunConfig.model_validate(load_yaml(path))
    except ValidationError as e:
        raise ConfigError(f"{path}: not a digitlab config: {str(e).splitlines()[0]}") from None


def apply_override(data: dict[str, Any], expr: str) -> None:
    """Apply one ``dotted.key=value`` (value parsed as YAML) to ``data`` in place; a number after a
    list picks an element (``model.args.blocks.0.filters=64``).

    Raises:
        ConfigError: no ``=``, an empty key, or a path through a non-mapping.
    """
    key, sep, raw = expr.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"bad --set {expr!r}: expected key=value, e.g. train.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node: Any = data
    parts = key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):  # a list element by index: model.args.blocks.0.filters=64
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"bad --set {expr!r}: {'.'.join(parts[:i]) or 'the config'} is a list of "
                                  f"{len(node)}; {part!r} is not an index into it")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
                return
            node = node.setdefault(part, {})
        else:
            raise ConfigError(f"bad --set {expr!r}: {where.rpartition('.')[0]} is not a section")


def resolve_config(base: dict[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults < ``base`` (a recipe mapping) < ``overrides`` (``key=value`` strings).

    Raises:
        ConfigError: an unknown key or a bad value, in one line naming the key.
    """
    data: dict[str, Any] = yaml.safe_load(yaml.safe_dump(base or {}))  # deep copy, plain types
    for expr in overrides:
        apply_override(data, expr)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"bad config: {describe_validation_error(e)}") from None


def dump_config(cfg: RunConfig) -> str:
    """The config as YAML (sections in declaration order), readable by ``resolve_config``."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
