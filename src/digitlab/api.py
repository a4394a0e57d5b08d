"""The Python API's three steps over a run directory: train, calibrate, evaluate.

Usage::

    from digitlab import Predictor, evaluate, train
    result = train("fast", {"train.epochs": 1})          # a new run under runs/, its rejection fitted
    metrics = evaluate(result.run_dir)                   # RUN/eval/metrics.json, figures
    label = Predictor.from_path(result.run_dir).predict_image("digit.png").label

Each function does what the ``digitlab`` command of the same name does, without printing: this
module composes the library (``training``, ``inference``, ``evaluation``) the way the CLI does, so a
script and the command line give the same run. Everything heavy is imported inside the functions.
"""

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from digitlab.core.config import RunConfig
    from digitlab.data.labelled import UserDigits
    from digitlab.data.string_batches import UserStrings
    from digitlab.inference.rejection import Rejection
    from digitlab.training.trainer import TrainResult


def _override_strings(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """``key=value`` strings as ``--set`` takes them; a mapping's values are written as JSON, which
    the config reads back as YAML (a list stays a list, None stays null)."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(value, default=str)}" for key, value in overrides.items()]
    return [str(expr) for expr in overrides]


def prepare_finetune(init: str | os.PathLike[str], images: str | os.PathLike[str], overrides: Sequence[str] = (),
                     log: Callable[[str], None] | None = None) -> tuple["RunConfig", "UserDigits"]:
    """The config of a run fine-tuned from ``init`` and the user's digits from ``images``, prepared with the init
    run's spec and split into training and held-out validation digits (what ``train(init=..., images=...)`` and
    ``digitlab train --init RUN --images DIR`` train on).

    Raises:
        FinetuneError: ``init`` is not a finished torch run. LabelledFolderError: a bad labelled folder.
        ConfigError: a bad override.
    """
    from digitlab.data.labelled import split_user_digits
    from digitlab.inference.labelled import read_labelled_folder
    from digitlab.training.finetune import finetune_config, init_spec

    spec = init_spec(init, strings=False)
    folder = read_labelled_folder(images, spec)
    cfg = finetune_config(init, images=images, n_images=folder.counts(), n_not_found=len(folder.not_found),
                          overrides=list(overrides))
    assert cfg.finetune is not None
    digits = split_user_digits(folder.images, folder.labels, spec, val_fraction=cfg.finetune.val_fraction,
                               seed=cfg.seed)
    if log:
        skipped = f"; {len(folder.not_found)} image(s) with no digit found left out (e.g. {folder.not_found[0]})" \
            if folder.not_found else ""
        log(f"user digits: {len(digits.train_labels)} to train on, {len(digits.val_labels)} held out for "
            f"validation{skipped}")
    return cfg, digits


def prepare_finetune_strings(init: str | os.PathLike[str], strings: str | os.PathLike[str],
                             overrides: Sequence[str] = (), log: Callable[[str], None] | None = None
                             ) -> tuple["RunConfig", "UserStrings"]:
    """The config of a string model fine-tuned from ``init`` and the user's labelled strings from ``strings``
    (images and a ``labels.tsv``), each line prepared as the reader prepares it, split into training and held-out
    validation strings (what ``train(init=..., strings=...)`` and ``digitlab train --init RUN --strings DIR``
    train on).

    Raises:
        FinetuneError: ``init`` is not a finished string-model run. LabelledStringsError: a bad folder or
            labels.tsv. ConfigError: a bad override.
    """
    import numpy as np
    import torch

    from digitlab.data.string_batches import UserStrings, make_string_set
    from digitlab.inference.labelled_strings import (
        MIN_STRINGS,
        LabelledStrings,
        LabelledStringsError,
        read_labelled_strings,
        split_strings,
    )
    from digitlab.inference.lines import prepare_line
    from digitlab.models.ctc import text_to_targets
    from digitlab.training.finetune import finetune_config, init_spec

    spec = init_spec(init, strings=True)
    folder = read_labelled_strings(strings)
    cfg = finetune_config(init, strings=strings, n_strings=len(folder), overrides=list(overrides))
    assert cfg.finetune is not None
    lines = [prepare_line(gray, height=cfg.strings.height) for gray in folder.grays]
    found = [i for i, line in enumerate(lines) if line.found]
    not_found = [folder.files[i] for i, line in enumerate(lines) if not line.found]
    if len(found) < MIN_STRINGS:
        raise LabelledStringsError(f"{strings}: ink found in {len(found)} of {len(folder)} images; fine-tuning "
                                   f"needs at least {MIN_STRINGS}")
    # Stored as 8-bit in the run (user_strings.safetensors): trained at that precision from the start, so a
    # resumed run sees exactly the same lines.
    folder = LabelledStrings(folder.path, [folder.files[i] for i in found], [folder.texts[i] for i in found],
                             [np.round(lines[i].image * 255) / 255 for i in found])  # grays: the prepared lines
    cfg = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(
        update={"n_strings": len(folder), "n_not_found": len(not_found)})})
    train_part, val_part = split_strings(folder, cfg.finetune.val_fraction, cfg.seed)

    def prepared(part: Any) -> Any:
        lines = [np.asarray(line, np.float32) for line in part.grays]
        targets, lengths = text_to_targets(part.texts)
        if not lines:  # no held-out strings: an empty set of the right shape
            return make_string_set(torch.zeros(0, 1, cfg.strings.height, 4), targets, lengths,
                                   torch.zeros(0, dtype=torch.int64))
        return make_string_set(lines, targets, lengths)

    user = UserStrings(prepared(train_part), prepared(val_part), spec)
    if log:
        skipped = f"; {len(not_found)} image(s) with no ink found left out (e.g. {not_found[0]})" if not_found else ""
        log(f"user strings: {len(user.train)} to train on, {len(user.val)} held out for validation{skipped}")
    return cfg, user


def train(recipe: str = "default", overrides: Mapping[str, Any] | Sequence[str] | None = None, *,
          out: str | os.PathLike[str] = "runs", seed: int | None = None, calibrate: bool = True,
          show_progress: bool = False, log: Callable[[str], None] | None = None,
          init: str | os.PathLike[str] | None = None, images: str | os.PathLike[str] | None = None,
          strings: str | os.PathLike[str] | None = None) -> "TrainResult":
    """Train a recipe into a new run directory, then fit its rejection, as ``digitlab train`` does.

    With ``init`` and ``images``, fine-tune the trained run ``init`` on the labelled folder ``images``
    (sub-folders ``0``-``9``, image files inside), mixed with MNIST training digits, into a new run whose
    config records its parent (``finetune:``); the architecture, preprocessing and recipe come from
    ``init`` (``recipe`` is not used), with fine-tuning defaults (docs/decisions.md#fine-tuning) that
    ``overrides`` can change. With ``init`` a string model's run (``--recipe strings``) and ``strings`` a folder
    of images and a ``labels.tsv`` (file, TAB, the string), fine-tune it on the user's strings mixed with
    synthetic ones (docs/decisions.md#string-fine-tuning). A string model fits its reading policy
    (``reading.json``) while training, so ``calibrate`` does not apply to it.

    Args:
        recipe: a shipped recipe's name (``digitlab train --list-recipes``) or a YAML file.
        overrides: config keys over the recipe, as ``{"train.epochs": 3}`` or ``["train.epochs=3"]``.
        out: the parent folder of the new run directory.
        seed: the run's seed (the same seed gives the same metrics on CPU).
        calibrate: also fit the temperature, thresholds and non-digit detector
            (``digitlab.inference.rejection.calibrate_run``) on the training and validation data (digit models).
        show_progress: progress bars on stderr.
        log: receives one line per epoch and per calibration step.
        init: a finished torch run to fine-tune (with ``images`` or ``strings``).
        images: the user's labelled folder of digits (with a digit model's ``init``).
        strings: the user's labelled folder of strings (with a string model's ``init``).

    Returns:
        The ``TrainResult``: ``run_dir``, best validation accuracy, test accuracy, timings.

    Raises:
        DigitlabError: a bad recipe or key, missing data, an unusable run directory, a bad ``init`` run or
            labelled folder (one line each).

    Example::

        result = train("fast", {"train.epochs": 1, "data.train_subset": 2000}, out="/tmp/runs", seed=0)
        print(result.run_dir, result.test_acc)
        adapted = train(init=result.run_dir, images="my_digits/", overrides={"train.epochs": 2}, out="/tmp/runs")
        print(Predictor.from_path(adapted.run_dir).predict_image("my_digits/7/a.png").label)
    """
    from digitlab.training import config_from_recipe, train_run
    from digitlab.training.distributed import is_main_process
    from digitlab.training.finetune import FinetuneError

    sets = _override_strings(overrides) + ([f"seed={seed}"] if seed is not None else [])
    if (init is None) != (images is None and strings is None) or (images is not None and strings is not None):
        raise FinetuneError("fine-tuning needs init (a trained run) and one labelled folder: images (digits) or "
                            "strings (a string model's)")
    if init is not None and strings is not None:
        cfg, user = prepare_finetune_strings(init, strings, sets, log=log)
        result = train_run(cfg, out_root=out, show_progress=show_progress, log=log, user_strings=user)
    elif init is not None and images is not None:
        cfg, digits = prepare_finetune(init, images, sets, log=log)
        result = train_run(cfg, out_root=out, show_progress=show_progress, log=log, user_digits=digits)
    else:
        cfg = config_from_recipe(recipe, sets)
        result = train_run(cfg, out_root=out, show_progress=show_progress, log=log)
    from digitlab.models.registry import get_entry

    # under torchrun, rank 0 alone writes the run; a string model's reading policy was fitted while training
    if calibrate and is_main_process() and get_entry(cfg.model.name).kind != "sequence":
        from digitlab.inference.rejection import calibrate_run

        calibrate_run(result.run_dir, device=str(result.device), show_progress=show_progress, log=log)
    return result


def calibrate(run: str | os.PathLike[str], **kwargs: Any) -> "Rejection":
    """Fit a run's rejection and write it into the run, as ``digitlab calibrate`` does.

    The temperature, the confidence threshold and (for networks) the non-digit detector are fitted on
    the run's own training and validation digits; the test split is never read.

    Args:
        run: a run directory written by ``train``.
        **kwargs: passed to ``digitlab.inference.rejection.calibrate_run``: ``device``, ``data_dir``,
            ``show_progress``, ``log``.

    Returns:
        The fitted rejection (``.policy`` holds the temperature and thresholds).

    Raises:
        DigitlabError: an unusable run, missing data (one line each).

    Example::

        policy = calibrate("runs/20261121-101500-cnn-fast").policy
        print(policy.temperature, policy.rule)
    """
    from digitlab.inference.rejection import calibrate_run

    return calibrate_run(run, **kwargs)


def evaluate(run: str | os.PathLike[str], **kwargs: Any) -> dict[str, Any]:
    """Measure a run on its test split and write ``RUN/eval/``, as ``digitlab evaluate`` does.

    Args:
        run: a run directory written by ``train``.
        **kwargs: passed to ``digitlab.evaluation.evaluate.evaluate_run``: ``dataset``, ``split``,
            ``robustness``, ``robustness_samples``, ``data_dir``, ``device``, ``log``.

    Returns:
        The metrics, as written to ``RUN/eval/metrics.json``.

    Raises:
        DigitlabError: an unusable run, missing data (one line each).

    Example::

        metrics = evaluate("runs/20261121-101500-cnn-fast", robustness=True)
        print(metrics["accuracy"])
    """
    from digitlab.evaluation.evaluate import evaluate_run

    return evaluate_run(run, **kwargs)
