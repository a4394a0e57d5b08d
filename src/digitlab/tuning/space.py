"""Search spaces: YAML files mapping recipe keys to distributions.

Usage::

    space = load_space("seed-grid")                  # shipped name, or a path to a YAML file
    overrides = space.suggest(trial)                 # ["model.args.dense.0=64", "optim.lr=0.001", ...]
    grid = space.grid()                              # for optuna.samplers.GridSampler

A space file::

    description: "..."
    recipe: cnn-32-64                                # the recipe it was made for (the default)
    params:
      optim.lr: {type: log-float, low: 0.0001, high: 0.01}
      model.args.dense.0: {type: categorical, choices: [32, 64, 128]}
      model.args.blocks.0.filters: {type: int, low: 16, high: 64, step: 16}
      train.label_smoothing: {type: float, low: 0.0, high: 0.2}

Keys are the ``--set`` keys of ``digitlab train`` (a number after a list picks an element).
"""

import importlib.resources
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import optuna
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from digitlab.core.errors import DigitlabError, describe_validation_error


class TuningError(DigitlabError):
    """A bad search space, study or tuning option."""


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IntDist(_Dist):
    type: Literal["int"]
    low: int
    high: int
    step: int = 1
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> "IntDist":
        if self.low > self.high:
            raise ValueError(f"low {self.low} > high {self.high}")
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def values(self) -> list[Any]:
        return list(range(self.low, self.high + 1, self.step))


class FloatDist(_Dist):
    type: Literal["float", "log-float"]
    low: float
    high: float
    step: float | None = None

    @model_validator(mode="after")
    def _check(self) -> "FloatDist":
        if self.low > self.high:
            raise ValueError(f"low {self.low} > high {self.high}")
        if self.type == "log-float" and self.low <= 0:
            raise ValueError("a log-float needs low > 0")
        if self.type == "log-float" and self.step is not None:
            raise ValueError("a log-float takes no step")
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.type == "log-float")

    def values(self) -> list[Any]:
        if self.step is None:
            raise TuningError("a grid needs discrete values: give this float a step, or make it categorical")
        n = round((self.high - self.low) / self.step)
        return [self.low + i * self.step for i in range(n + 1)]


class CategoricalDist(_Dist):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, self.choices)

    def values(self) -> list[Any]:
        return list(self.choices)


Distribution = Annotated[IntDist | FloatDist | CategoricalDist, Field(discriminator="type")]


class SearchSpace(BaseModel):
    """Recipe keys and the distribution each is drawn from."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    description: str = ""
    recipe: str | None = None
    params: dict[str, Distribution] = Field(min_length=1)

    def suggest(self, trial: optuna.Trial) -> list[str]:
        """Draw every parameter for ``trial``; return them as ``key=value`` overrides."""
        return [override(key, dist.suggest(trial, key)) for key, dist in self.params.items()]

    def grid(self) -> dict[str, list[Any]]:
        """Every parameter's values, for a grid search."""
        try:
            return {key: dist.values() for key, dist in self.params.items()}
        except TuningError as e:
            raise TuningError(f"space {self.name}: {e}") from None

    def grid_size(self) -> int:
        n = 1
        for values in self.grid().values():
            n *= len(values)
        return n


def override(key: str, value: Any) -> str:
    """``key=value`` as ``--set`` reads it (the value in YAML: ``null``, ``0.001``, ``[32, 64]``)."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def list_spaces() -> list[tuple[str, str]]:
    """The shipped spaces: (name, description)."""
    folder = importlib.resources.files("digitlab.tuning") / "spaces"
    out = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
            out.append((entry.name.removesuffix(".yaml"), str(data.get("description", ""))))
    return out


def load_space(name_or_path: str | os.PathLike[str]) -> SearchSpace:
    """A shipped space by name, or a YAML file.

    Raises:
        TuningError: unknown name, unreadable file, or an invalid space (one line naming the problem).
    """
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.exists():
        name = path.stem
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as e:
            raise TuningError(f"search space {path}: {e.strerror or e}") from None
    else:
        name = text
        shipped = dict(list_spaces())
        if name not in shipped:
            raise TuningError(f"unknown search space {name!r}; shipped: {', '.join(shipped)} (or give a YAML file)")
        raw = (importlib.resources.files("digitlab.tuning") / "spaces" / f"{name}.yaml").read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise TuningError(f"search space {name}: bad YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise TuningError(f"search space {name}: expected a mapping with params")
    try:
        return SearchSpace.model_validate({"name": name, **data})
    except ValidationError as e:
        raise TuningError(" ".join(f"search space {name}: {describe_validation_error(e)}".split())) from None
