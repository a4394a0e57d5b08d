"""Evaluate a model on a labelled folder of real images, through the same preparation as ``predict``.

Usage::

    m = evaluate_images("runs/default", "my-digits/")   # my-digits/0/*.png ... my-digits/9/*.jpg
    m["accuracy"], m["no_digit_found"], m["coverage"]    # -> runs/default/eval/images-my-digits/

Sub-folders named by the class names (``0`` to ``9`` for MNIST) hold the images of that class. Each
image is prepared (``prepare_image``) and classified in batches; an image where no digit is found
counts as an error. Written: ``metrics.json`` (accuracy with its Wilson interval, the per-class
report, the confusion matrix, how many were rejected and the accuracy on the rest),
``predictions.csv`` and ``confusion_matrix.png``.
"""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix

from digitlab.core.rundir import RunDir
from digitlab.evaluation import plots
from digitlab.evaluation.evaluate import EvaluationError, require_rejection
from digitlab.evaluation.metrics import wilson_interval
from digitlab.inference import Predictor
from digitlab.inference.batch import IMAGE_SUFFIXES, FileFailure, predict_files, write_csv

IMAGES_PREFIX = "images-"


def labelled_images(folder: Path, class_names: list[str]) -> tuple[list[Path], np.ndarray]:
    """Files under ``folder/<class name>/`` and their class indices.

    Raises:
        EvaluationError: not a folder, or no sub-folder named by a class holds an image.
    """
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: not a folder (want sub-folders {class_names[0]} to {class_names[-1]})")
    files, labels = [], []
    for k, name in enumerate(class_names):
        sub = folder / name
        if sub.is_dir():
            found = sorted(f for f in sub.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            files += found
            labels += [k] * len(found)
    if not files:
        raise EvaluationError(f"{folder}: no images in sub-folders named {', '.join(class_names)}")
    return files, np.asarray(labels, dtype=np.int64)


def evaluate_images(path: str | os.PathLike[str], folder: str | os.PathLike[str], *, device: str = "auto",
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Metrics of the run's model on a labelled folder of real images (see the module doc)."""
    say = log or (lambda _msg: None)
    run = RunDir.open(path)
    predictor = Predictor.from_run(run.path, device=device)
    require_rejection(predictor, run.path)
    src = Path(folder)
    files, y = labelled_images(src, predictor.class_names)
    say(f"{src}: {len(files):,} images in {len(set(y.tolist()))} classes")
    results = list(predict_files(predictor, files))
    unreadable = [r for r in results if isinstance(r, FileFailure)]
    pred = np.array([-1 if isinstance(r, FileFailure) or r.label is None else predictor.class_names.index(r.label)
                     for r in results])
    rejected = np.array([isinstance(r, FileFailure) or r.rejected for r in results])
    found = pred >= 0
    correct = pred == y
    n, k = len(y), int(correct.sum())
    names = predictor.class_names
    labels = list(range(len(names)))
    kept = ~rejected
    out: dict[str, Any] = {
        "run": str(run.path),
        "folder": str(src),
        "n": n,
        "accuracy": k / n,
        "errors": n - k,
        "accuracy_ci95": list(wilson_interval(k, n)),
        "no_digit_found": int((~found).sum()) - len(unreadable),
        "unreadable": [{"source": r.source, "error": r.error} for r in unreadable],
        "threshold": predictor.threshold,
        "coverage": float(kept.mean()),
        "accuracy_kept": float(correct[kept].mean()) if kept.any() else None,
        "report": classification_report(y[found], pred[found], labels=labels, target_names=names, output_dict=True,
                                        zero_division=0) if found.any() else {},
        "confusion_matrix": confusion_matrix(y[found], pred[found], labels=labels).tolist() if found.any() else [],
    }
    dest = run.path / "eval" / f"{IMAGES_PREFIX}{src.resolve().name}"
    dest.mkdir(parents=True, exist_ok=True)
    write_csv(dest / "predictions.csv", results)
    if found.any():
        plots.plot_confusion_matrix(np.asarray(out["confusion_matrix"]), names, dest / "confusion_matrix.png")
    RunDir(dest).write_json("metrics.json", out)
    out["dir"] = str(dest)
    return out
