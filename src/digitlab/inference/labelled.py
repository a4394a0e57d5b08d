"""A labelled folder of a user's digits (sub-folders ``0`` to ``9``, image files inside), prepared the one way.

Usage::

    folder = read_labelled_folder("my_digits/", spec)     # every image through prepare_image, once
    folder.images, folder.labels                           # (N, 28, 28) uint8 in the spec's polarity, (N,)
    folder.not_found                                       # files where no digit was found (left out)

The folder is checked before any image is read, so a wrong folder fails at once with one line
(``LabelledFolderError``): it does not exist, has no digit sub-folders, has a sub-folder whose name is
not a single digit, an empty class, or files that are not images. Images where no digit is found are
counted and left out, never trained on as blank inputs.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digitlab.core.errors import DigitlabError
from digitlab.data.preprocess import PreprocessSpec
from digitlab.inference.batch import IMAGE_SUFFIXES
from digitlab.inference.prepare import ImageError, prepare_image

MIN_IMAGES = 20  # fewer usable digits than this cannot adapt a model (docs/decisions.md#fine-tuning)
CLASSES = tuple(str(d) for d in range(10))


class LabelledFolderError(DigitlabError):
    """A labelled folder that cannot be used: missing, badly laid out, empty classes, non-image files."""


@dataclass(frozen=True)
class LabelledFolder:
    """A labelled folder's prepared digits."""

    path: Path
    images: np.ndarray  # (N, H, W) uint8, the spec's polarity
    labels: np.ndarray  # (N,) int64
    not_found: list[Path] = field(default_factory=list)  # images where no digit was found (left out)

    def counts(self) -> dict[str, int]:
        """Digits used per class, ``{"0": 31, ...}``."""
        n = np.bincount(self.labels, minlength=len(CLASSES))
        return {c: int(n[i]) for i, c in enumerate(CLASSES)}


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


def list_labelled_files(folder: str | os.PathLike[str]) -> list[tuple[Path, int]]:
    """The image files of a labelled folder and their labels, sorted, after checking its layout.

    Raises:
        LabelledFolderError: the folder is missing or not a folder; it has no ``0``-``9`` sub-folders; a
            sub-folder's name is not a single digit; a class sub-folder holds no image; a file is not an image
            (by its suffix; the first one is named, with how many there are).
    """
    root = Path(folder)
    if not root.exists():
        raise LabelledFolderError(f"{root}: no such folder (expected sub-folders 0-9 holding each digit's images)")
    if not root.is_dir():
        raise LabelledFolderError(f"{root}: not a folder (expected sub-folders 0-9 holding each digit's images)")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p))
    bad = [p.name for p in subdirs if p.name not in CLASSES]
    if bad:
        raise LabelledFolderError(f"{root}: sub-folder {bad[0]!r} is not a single digit 0-9 (each sub-folder is "
                                  f"named by the digit its images show)")
    if not subdirs:
        raise LabelledFolderError(f"{root}: no sub-folders 0-9 (put each digit's images in a sub-folder named by "
                                  f"the digit)")
    missing = [c for c in CLASSES if c not in {p.name for p in subdirs}]
    if missing:
        raise LabelledFolderError(f"{root}: no sub-folder for class {', '.join(missing)} (every digit 0-9 needs "
                                  f"examples)")
    files: list[tuple[Path, int]] = []
    strays: list[Path] = []
    for sub in subdirs:
        entries = sorted(p for p in sub.rglob("*") if p.is_file() and not _is_hidden(p))
        images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        strays += [p for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not images and not strays:
            raise LabelledFolderError(f"{sub}: empty class folder (every digit 0-9 needs example images)")
        files += [(p, int(sub.name)) for p in images]
    if strays:
        more = f" and {len(strays) - 1} other non-image file(s)" if len(strays) > 1 else ""
        raise LabelledFolderError(f"{strays[0]}: not an image file{more} (accepted: "
                                  f"{', '.join(IMAGE_SUFFIXES)}); move them out of {root}")
    return files


def read_labelled_folder(folder: str | os.PathLike[str], spec: PreprocessSpec | None = None, *,
                         min_images: int = MIN_IMAGES) -> LabelledFolder:
    """Check a labelled folder, then prepare each of its images with ``prepare_image`` for ``spec``.

    Args:
        folder: sub-folders ``0``-``9``, each holding images of that digit (any format ``prepare_image`` reads).
        spec: the model's preprocessing spec (MNIST's when None).
        min_images: the fewest usable digits accepted.

    Raises:
        LabelledFolderError: a bad layout (see ``list_labelled_files``), an unreadable image (named), a class
            where no image holds a digit, or fewer than ``min_images`` usable digits.
    """
    root = Path(folder)
    files = list_labelled_files(root)
    images, labels, not_found = [], [], []
    for path, label in files:
        try:
            prepared = prepare_image(path, spec)
        except ImageError as e:
            message = str(e)  # a file that cannot be read is named by ImageError already
            raise LabelledFolderError(message if str(path) in message else f"{path}: {message}") from None
        if prepared.found:
            images.append(prepared.image)
            labels.append(label)
        else:
            not_found.append(path)
    side = spec.input_size if spec is not None else (28, 28)
    stack = np.stack(images) if images else np.zeros((0, *side), np.uint8)
    result = LabelledFolder(root, stack, np.asarray(labels, dtype=np.int64), not_found)
    empty = [c for c, n in result.counts().items() if n == 0]
    where = f" ({len(not_found)} image(s) with no digit found, e.g. {not_found[0]})" if not_found else ""
    if empty:
        raise LabelledFolderError(f"{root}: no usable digit for class {', '.join(empty)}{where}")
    if len(labels) < min_images:
        raise LabelledFolderError(f"{root}: {len(labels)} usable digit(s); fine-tuning needs at least {min_images}"
                                  f"{where}")
    return result
