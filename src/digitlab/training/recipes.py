"""Named recipes: YAML presets shipped in the package (``training/recipes/*.yaml``).

Usage::

    cfg = config_from_recipe("default", ["train.epochs=3"])    # or a path to a YAML file
    for name, description in list_recipes(): ...
    for k in settable_keys(cfg): ...                          # every --set key, model.args.* included
"""

import os
from importlib import resources
from pathlib import Path

from digitlab.core.config import ConfigError, ConfigKey, RunConfig, config_keys, load_yaml, resolve_config
from digitlab.models.registry import get_entry


def _recipe_dir() -> Path:
    return Path(str(resources.files("digitlab.training") / "recipes"))


def list_recipes() -> list[tuple[str, str]]:
    """``(name, description)`` of every shipped recipe, sorted by name."""
    out = []
    for path in sorted(_recipe_dir().glob("*.yaml")):
        out.append((path.stem, str(load_yaml(path).get("description", ""))))
    return out


def recipe_path(name_or_path: str | os.PathLike[str]) -> Path:
    """The YAML file of a shipped recipe name, or an existing file path.

    Raises:
        ConfigError: neither a shipped recipe nor a file.
    """
    shipped = _recipe_dir() / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    path = Path(name_or_path)
    if path.is_file():
        return path
    names = ", ".join(n for n, _ in list_recipes())
    raise ConfigError(f"unknown recipe {str(name_or_path)!r}: choose one of {names}, or give a YAML file")


def config_from_recipe(name_or_path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults < the recipe < ``overrides``; the recipe's name is recorded in the config."""
    path = recipe_path(name_or_path)
    data = load_yaml(path)
    data.setdefault("recipe", path.stem)
    return resolve_config(data, overrides)


def settable_keys(cfg: RunConfig) -> list[ConfigKey]:
    """Every key ``--set`` takes for ``cfg``: the run config's, with ``model.args`` opened into the keys
    of ``cfg.model.name``'s own config (``model.args.dense``), defaults as the model declares them.

    Raises:
        ModelError: ``cfg.model.name`` is not a registered model.
    """
    model_keys = config_keys(get_entry(cfg.model.name).config_cls, "model.args.")
    return [k for key in config_keys() for k in (model_keys if key.key == "model.args" else [key])]
