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


def train(recipe: str = "default", overrides: Mapping[str, Any] | Sequence[str] | None = None, *,
          out: str | os.PathLike[str] = "runs", seed: int | None = None, calibrate: bool = True,
          show_progress: bool = False, log: Callable[[str], None] | None = None) -> "TrainResult":
    """Train a recipe into a new run directory, then fit its rejection, as ``digitlab train`` does.

    Args:
        recipe: a shipped recipe's name (``digitlab train --list-recipes``) or a YAML file.
        overrides: config keys over the recipe, as ``{"train.epochs": 3}`` or ``["train.epochs=3"]``.
        out: the parent folder of the new run directory.
        seed: the run's seed (the same seed gives the same metrics on CPU).
        calibrate: also fit the temperature, thresholds and non-digit detector
            (``digitlab.inference.rejection.calibrate_run``) on the training and validation data.
        show_progress: progress bars on stderr.
        log: receives one line per epoch and per calibration step.

    Returns:
        The ``TrainResult``: ``run_dir``, best validation accuracy, test accuracy, timings.

    Raises:
        DigitlabError: a bad recipe or key, missing data, an unusable run directory (one line each).

    Example::

        result = train("fast", {"train.epochs": 1, "data.train_subset": 2000}, out="/tmp/runs", seed=0)
        print(result.run_dir, result.test_acc)
    """
    from digitlab.training import config_from_recipe, train_run
    from digitlab.training.distributed import is_main_process

    sets = _override_strings(overrides) + ([f"seed={seed}"] if seed is not None else [])
    result = train_run(config_from_recipe(recipe, sets), out_root=out, show_progress=show_progress, log=log)
    if calibrate and is_main_process():  # under torchrun, rank 0 alone writes the run
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
