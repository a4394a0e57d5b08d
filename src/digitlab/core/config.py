"""Typed run configuration: defaults < recipe YAML < ``--set key=value``; YAML round-trip.

Usage::

    cfg = resolve_config(load_yaml("recipe.yaml"), ["train.epochs=3", "model.args.dropout=0.2"])
    text = dump_config(cfg); assert RunConfig.model_validate(yaml.safe_load(text)) == cfg
    for k in config_keys(): print(k.key, k.type, k.default)     # what --set takes

Architecture (``model``) is kept apart from training parameters, so ``model.json`` alone can
rebuild the network. Unknown keys are errors everywhere (``extra="forbid"``).
"""

import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import to_jsonable_python

from digitlab.core.errors import DigitlabError, describe_validation_error


class ConfigError(DigitlabError):
    """A bad config key or value, a bad ``--set`` expression, or an unreadable YAML file."""


class _Strict(BaseModel):
    # allow_inf_nan=False: every float in a config is finite (``optim.lr=.nan`` is refused here, not
    # found as a NaN loss an epoch later)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelSection(_Strict):
    name: str = "cnn"
    args: dict[str, Any] = Field(default_factory=dict)


class DataSection(_Strict):
    dataset: str = "mnist"
    data_dir: str | None = None
    n_val: int = Field(5000, ge=0)
    split_seed: int = 0
    train_subset: int | None = Field(None, ge=1, description="use only the first N training images (quick runs)")
    synthetic_styles: int = Field(0, ge=0, le=1_000_000, description="synthetic digits in writing styles MNIST "
                                  "lacks (continental 1, crossed 7, open 4: data.styles) added to the training set")


class OptimSection(_Strict):
    name: Literal["sgd", "adam", "adamw", "adadelta"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.0, ge=0)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)


class ScheduleSection(_Strict):
    name: Literal["none", "onecycle", "cosine", "step"] = "none"
    warmup_epochs: float = Field(0.0, ge=0)
    step_size: int = Field(1, ge=1)
    gamma: float = Field(0.7, gt=0)
    pct_start: float = Field(0.25, gt=0, lt=1)
    final_lr_ratio: float = Field(0.0, ge=0)


class AugmentSection(_Strict):
    rotation: float = Field(0.0, ge=0, description="degrees, +-")
    translate: float = Field(0.0, ge=0, description="fraction of the side, +-")
    scale: tuple[float, float] = (1.0, 1.0)
    shear: float = Field(0.0, ge=0, description="degrees, +-")
    elastic_alpha: float = Field(0.0, ge=0, description="0 turns elastic distortion off")
    elastic_sigma: float = Field(4.0, gt=0)
    contrast: float = Field(0.0, ge=0, description="+- fraction")
    noise_std: float = Field(0.0, ge=0, description="in [0, 1] pixel units")
    erasing: float = Field(0.0, ge=0, le=1, description="probability")
    stroke: float = Field(0.0, ge=0, le=1, description="probability of a random stroke-width change (thinner or "
                          "thicker)")
    p: float = Field(1.0, ge=0, le=1, description="probability of the geometric transform per image")

    @property
    def enabled(self) -> bool:
        return any((self.rotation, self.translate, self.scale != (1.0, 1.0), self.shear, self.elastic_alpha,
                    self.contrast, self.noise_std, self.erasing, self.stroke))


class TrainSection(_Strict):
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)
    ema_decay: float | None = Field(None, ge=0, lt=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: str = "auto"
    threads: int | None = Field(None, ge=1)
    channels_last: bool = False
    outlier_exposure: float = Field(0.0, ge=0, description="weight of the uniform-target loss on synthetic non-digits "
                                    "(0: off)")
    outlier_fraction: float = Field(0.125, ge=0, description="non-digits added to each batch, as a share of the batch "
                                    "size")
    outlier_bank: int = Field(8000, ge=1, description="how many distinct non-digits are drawn (cached)")
    sync_batchnorm: bool = Field(False, description="data-parallel runs on CUDA: batch-norm statistics over all "
                                 "ranks' shares")
    dist_timeout: float = Field(300.0, gt=0, description="seconds a rank waits for the others before the job fails")


class StringsSection(_Strict):
    """Synthetic digit strings for a string model (kind ``sequence``: ``crnn``); digit classifiers ignore it."""

    per_epoch: int = Field(24000, ge=1, description="fresh synthetic strings per epoch (from the training digits)")
    val: int = Field(2000, ge=1, description="validation strings (from the validation digits; fixed)")
    test: int = Field(2000, ge=0, description="test strings (from the test digits), measured once at the end")
    height: int = Field(32, ge=8, le=256, description="line height in pixels (the model's input height)")
    max_chars: int = Field(12, ge=1, le=64, description="longest string, separators included")


class FinetuneSection(_Strict):
    """Where a fine-tuned run (``digitlab train --init RUN --images DIR``) came from, and how the user's digits
    were mixed in (docs/decisions.md#fine-tuning)."""

    init: str = Field(description="the run whose weights training started from")
    init_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the init run's model.safetensors")
    images: str | None = Field(None, description="the labelled folder of the user's digits (sub-folders 0-9)")
    n_images: dict[str, int] = Field(default_factory=dict, description="user digits used per class (those where a "
                                     "digit was found)")
    strings: str | None = Field(None, description="the labelled folder of the user's strings (images + labels.tsv)")
    n_strings: int = Field(0, ge=0, description="user strings used (training and held out)")
    n_not_found: int = Field(0, ge=0, description="user images where no digit (or no line) was found (left out)")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="share of the user's digits (of each class, when "
                                "every class has enough) or strings held out for validation")
    user_share: float = Field(0.25, gt=0, lt=1, description="share of the training set made of the user's digits "
                              "or strings (repeated to reach it)")

    @model_validator(mode="after")
    def _one_folder(self) -> "FinetuneSection":
        if (self.images is None) == (self.strings is None):
            raise ValueError("a fine-tune is on one labelled folder: images (digits) or strings")
        return self


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
    strings: StringsSection = Field(default_factory=StringsSection)
    finetune: FinetuneSection | None = None  # set by ``train --init RUN --images DIR``


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
        raise ConfigError(f"bad config: {describe_validation_error(e, _known_keys())}") from None


def dump_config(cfg: RunConfig) -> str:
    """The config as YAML (sections in declaration order), readable by ``resolve_config``."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


@dataclass(frozen=True)
class ConfigKey:
    """One key ``--set`` takes: dotted (``N`` stands for a list index), its type and default as YAML spells them."""

    key: str
    type: str
    default: str
    description: str = ""


def _type_label(t: Any) -> str:
    """``int``, ``float | null``, ``sgd|adam``, ``[float, float]``, ``list[int]``, ``mapping``."""
    origin, args = get_origin(t), get_args(t)
    if t is type(None):
        return "null"
    if t is Any:
        return "any"
    if origin is Annotated:  # a constrained type: its base type
        return _type_label(args[0])
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_label(a) for a in args)
    if origin is tuple:
        return f"[{', '.join(_type_label(a) for a in args)}]"
    if origin is list:
        return f"list[{_type_label(args[0]) if args else 'any'}]"
    if origin is dict or t is dict:
        return "mapping"
    if isinstance(t, type) and issubclass(t, BaseModel):
        return "mapping"
    return getattr(t, "__name__", str(t))


def _plain(value: Any) -> Any:
    """Plain YAML types; a section keeps only what differs from its defaults (``{filters: 32}``)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return to_jsonable_python(value)


def _default_label(value: Any) -> str:
    """The value as ``--set`` would take it (YAML flow style): ``0.001``, ``null``, ``[0.9, 0.999]``."""
    if isinstance(value, str):
        return value if value else '""'
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=1 << 16).strip()
    return text.removesuffix("...").strip()


def config_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[ConfigKey]:
    """Every key of ``model`` (a pydantic config) that ``--set`` can take, in declaration order.

    Sections are listed by their keys (``train.epochs``), not as a whole; a list of sections has its
    own key and its elements' keys (``blocks`` and ``blocks.N.filters``).
    """
    keys: list[ConfigKey] = []
    for name, field in model.model_fields.items():
        key, t = prefix + name, field.annotation
        if isinstance(t, type) and issubclass(t, BaseModel):
            keys += config_keys(t, f"{key}.")
            continue
        default = "(required)" if field.is_required() else _default_label(field.get_default(call_default_factory=True))
        keys.append(ConfigKey(key, _type_label(t), default, field.description or ""))
        (item,) = get_args(t) if get_origin(t) is list else (None,)
        if isinstance(item, type) and issubclass(item, BaseModel):
            keys += config_keys(item, f"{key}.N.")
    return keys


def _known_keys() -> list[str]:
    """Every dotted key and section of ``RunConfig``, for suggestions."""
    leaves = [k.key for k in config_keys()]
    sections = {k.rpartition(".")[0] for k in leaves if "." in k}
    return leaves + sorted(sections)
