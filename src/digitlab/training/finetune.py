"""Fine-tuning from a trained run: the new run's config, and the init run's weights and spec.

Usage::

    spec = init_spec("runs/20261121-101500-cnn-default")                   # prepare the user's digits with it
    cfg = finetune_config("runs/...-cnn-default", images="my_digits/", n_images={"0": 30, ...},
                          overrides=["train.epochs=5"])
    train_run(cfg, user_digits=digits)                                      # a new run, weights from the init

The architecture, preprocessing and augmentation come from the init run; the defaults below make it
a short, gentle run (docs/decisions.md#fine-tuning); ``overrides`` (``--set``) still win.
"""

import hashlib
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from digitlab.core.config import ConfigError, RunConfig, read_run_config, resolve_config
from digitlab.core.errors import DigitlabError, first_line
from digitlab.core.rundir import RunDir, RunDirError
from digitlab.data.errors import DataError
from digitlab.data.preprocess import PreprocessSpec
from digitlab.models.registry import ModelError, get_entry

# Fine-tuning defaults (docs/decisions.md#fine-tuning).
FINETUNE_EPOCHS = 3
LR_FACTOR = 0.1  # of the init recipe's (peak) learning rate
MNIST_DIGITS = 10_000  # MNIST training digits mixed with the user's, at most (so it does not forget)
# A string model's fine-tuning (docs/decisions.md#string-fine-tuning): synthetic strings keep it from forgetting.
STRING_EPOCHS = 8
STRING_LR_FACTOR = 0.5
STRINGS_PER_EPOCH = 4096  # strings per epoch, the user's included
STRING_USER_SHARE = 0.75  # of every epoch's strings are the user's (repeated)
STRINGS_VAL = 500  # synthetic validation strings, beside the user's held-out ones


class FinetuneError(DigitlabError):
    """An ``--init`` run that cannot be fine-tuned (missing, not a finished torch run, changed weights)."""


def _open_init(init: str | os.PathLike[str], strings: bool | None = None) -> tuple[RunDir, RunConfig]:
    """The init run and its config; with ``strings`` given, checked to be a string model (True) or a digit
    classifier (False), so a wrong folder kind fails before the folder is read."""
    try:
        run = RunDir.open(init)
        cfg = read_run_config(run.file(RunDir.CONFIG))
        kind = get_entry(cfg.model.name).kind
    except (RunDirError, ConfigError, ModelError) as e:
        raise FinetuneError(f"--init {init}: {e}") from None
    if kind == "classical":
        raise FinetuneError(f"--init {init}: {cfg.model.name} is a classical model; only a network (a torch run) "
                            f"can be fine-tuned")
    if not run.file(RunDir.WEIGHTS).is_file() or not run.file(RunDir.MODEL_JSON).is_file():
        raise FinetuneError(f"--init {init}: no {RunDir.WEIGHTS} and {RunDir.MODEL_JSON}: not a finished torch run "
                            f"(finish it with digitlab train --resume {init})")
    if strings is not None and strings != (kind == "sequence"):
        what = "a string model: fine-tune it on labelled strings (--strings DIR)" if kind == "sequence" else \
            "a digit classifier: fine-tune it on labelled digits (--images DIR)"
        raise FinetuneError(f"--init {init}: {cfg.model.name} is {what}")
    return run, cfg


def init_spec(init: str | os.PathLike[str], *, strings: bool | None = None) -> PreprocessSpec:
    """The preprocessing spec the init run's model was trained with (its ``model.json``).

    Raises:
        FinetuneError: not a finished torch run, or an unreadable ``model.json``.
    """
    import json

    run, _ = _open_init(init, strings)
    try:
        info = json.loads(run.file(RunDir.MODEL_JSON).read_text(encoding="utf-8"))
        return PreprocessSpec.model_validate(info["preprocess"])
    except (OSError, ValueError, KeyError, TypeError, DataError) as e:
        raise FinetuneError(f"--init {init}: unreadable {RunDir.MODEL_JSON}: {first_line(e)}") from None


def weights_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def finetune_config(init: str | os.PathLike[str], *, images: str | os.PathLike[str] | None = None,
                    n_images: dict[str, int] | None = None, n_not_found: int = 0,
                    strings: str | os.PathLike[str] | None = None, n_strings: int = 0,
                    overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The config of a run fine-tuned from ``init``: its config < the fine-tuning defaults < ``overrides``.

    Args:
        init: a finished torch run directory (a digit classifier with ``images``, a string model with ``strings``).
        images: the user's labelled folder of digits (recorded, not read here).
        n_images: user digits used per class.
        n_not_found: user images where no digit was found.
        strings: the user's labelled folder of strings (images and labels.tsv), for a string model.
        n_strings: user strings used.
        overrides: ``key=value`` strings, as ``--set`` takes them (``finetune.user_share=0.5`` included).

    Raises:
        FinetuneError: ``init`` is not a finished torch run. ConfigError: a bad override.
    """
    if (images is None) == (strings is None):
        raise FinetuneError("a fine-tune is on one labelled folder: images (digits) or strings")
    run, base = _open_init(init, strings is not None)
    reads_strings = strings is not None
    folder = strings if strings is not None else images
    assert folder is not None
    data = base.model_dump(mode="json")
    data.pop("finetune", None)  # a fine-tune of a fine-tune records its own parent only
    data["description"] = f"fine-tuned from {run.path} on {folder}"
    data["train"]["epochs"] = FINETUNE_EPOCHS
    data["train"]["early_stopping_patience"] = None
    data["optim"]["lr"] = base.optim.lr * LR_FACTOR
    subset = base.data.train_subset
    data["data"]["train_subset"] = MNIST_DIGITS if subset is None else min(subset, MNIST_DIGITS)
    source = {"init": str(Path(run.path).resolve()), "init_sha256": weights_sha256(run.file(RunDir.WEIGHTS))}
    if reads_strings:  # docs/decisions.md#string-fine-tuning
        data["train"]["epochs"] = STRING_EPOCHS
        data["optim"]["lr"] = base.optim.lr * STRING_LR_FACTOR
        data["strings"]["per_epoch"] = STRINGS_PER_EPOCH
        data["strings"]["val"] = min(base.strings.val, STRINGS_VAL)
        data["finetune"] = {**source, "strings": str(Path(folder).resolve()), "n_strings": n_strings,
                            "user_share": STRING_USER_SHARE}
    else:
        data["finetune"] = {**source, "images": str(Path(folder).resolve()), "n_images": n_images or {},
                            "n_not_found": n_not_found}
    return resolve_config(data, overrides)


def load_init_weights(model: nn.Module, cfg: RunConfig) -> None:
    """Load the init run's weights into ``model``, after checking they are the ones the config recorded.

    Raises:
        FinetuneError: the weights are gone, changed, or do not fit the model.
    """
    assert cfg.finetune is not None
    path = Path(cfg.finetune.init) / RunDir.WEIGHTS
    try:
        digest = weights_sha256(path)
        state = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise FinetuneError(f"{path}: cannot read the init run's weights: {first_line(e)}") from None
    if digest != cfg.finetune.init_sha256:
        raise FinetuneError(f"{path}: changed since the config recorded it (SHA-256 {digest[:12]}..., expected "
                            f"{cfg.finetune.init_sha256[:12]}...)")
    try:
        model.load_state_dict({k: v.to(torch.get_default_dtype()) if v.is_floating_point() else v
                               for k, v in state.items()})
    except RuntimeError as e:
        raise FinetuneError(f"{path}: does not fit a {cfg.model.name} with this config: {first_line(e)}") from None
