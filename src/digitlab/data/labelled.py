"""A user's own labelled digits, prepared to the model's input: held out, mixed into training, kept in the run.

Usage::

    digits = split_user_digits(images, labels, spec, val_fraction=0.2, seed=0)   # stratified hold-out
    save_user_digits(run.file(USER_DIGITS_FILE), digits)                         # atomically, in the run
    digits = load_user_digits(run.file(USER_DIGITS_FILE))                        # resume, calibrate
    train_images, train_labels = mix_user_digits(mnist_images, mnist_labels, digits, user_share=0.25)

The images arrive already prepared (``digitlab.inference.labelled`` reads the folder with
``prepare_image``); this module only splits, stores and mixes arrays, so training and the rejection
fitting read the same digits from the run directory without touching the user's folder again.
"""

import os
from dataclasses import dataclass

import numpy as np

from digitlab.core.fileio import atomic_path
from digitlab.data.errors import DataError
from digitlab.data.preprocess import PreprocessSpec

USER_DIGITS_FILE = "user_digits.safetensors"  # in a fine-tuned run directory
_META_SPEC = "digitlab.preprocess"
MIN_VAL_PER_CLASS = 2  # a class with fewer held-out digits than this is not worth a validation split


@dataclass(frozen=True)
class UserDigits:
    """A user's prepared digits, (N, H, W) uint8 in the model's convention, split into training and validation."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    spec: PreprocessSpec  # the spec they were prepared for (the init run's)


def split_user_digits(images: np.ndarray, labels: np.ndarray, spec: PreprocessSpec, *, val_fraction: float,
                      seed: int) -> UserDigits:
    """Hold out a stratified, seeded share of each class for validation, when every class has enough digits
    for ``val_fraction`` of it to give ``MIN_VAL_PER_CLASS``; otherwise all of them train.

    Raises:
        DataError: images and labels of different lengths.
    """
    if len(images) != len(labels):
        raise DataError(f"{len(images)} user images but {len(labels)} labels")
    counts = np.bincount(labels, minlength=10)
    present = counts[counts > 0]
    n_val = round(val_fraction * len(labels))
    if val_fraction <= 0 or len(present) == 0 or present.min() * val_fraction < MIN_VAL_PER_CLASS:
        empty = images[:0]
        return UserDigits(images, labels, empty, labels[:0], spec)
    from sklearn.model_selection import train_test_split  # slow to import (docs/decisions.md#deferred-imports)

    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=n_val, stratify=labels,
                                          random_state=seed)
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    return UserDigits(images[train_idx], labels[train_idx], images[val_idx], labels[val_idx], spec)


def user_repeats(n_base: int, n_user: int, user_share: float) -> int:
    """How many copies of the user's training digits make them about ``user_share`` of the training set
    (at least one)."""
    if n_user == 0:
        return 0
    return max(1, round(user_share * n_base / ((1 - user_share) * n_user)))


def mix_user_digits(images: np.ndarray, labels: np.ndarray, digits: UserDigits, *,
                    user_share: float) -> tuple[np.ndarray, np.ndarray]:
    """The base training digits followed by the user's, repeated to about ``user_share`` of the result (the
    batch loader shuffles them together, so every batch holds about that share)."""
    r = user_repeats(len(labels), len(digits.train_labels), user_share)
    return (np.concatenate([images, np.tile(digits.train_images, (r, 1, 1))]),
            np.concatenate([labels, np.tile(digits.train_labels, r)]).astype(labels.dtype))


def save_user_digits(path: str | os.PathLike[str], digits: UserDigits) -> None:
    """Write the digits and their spec as one safetensors file, atomically."""
    from safetensors.numpy import save_file

    tensors = {"train_images": digits.train_images, "train_labels": digits.train_labels.astype(np.int64),
               "val_images": digits.val_images, "val_labels": digits.val_labels.astype(np.int64)}
    with atomic_path(path, overwrite=True) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
                  metadata={_META_SPEC: digits.spec.to_json()})


def load_user_digits(path: str | os.PathLike[str]) -> UserDigits:
    """Read what ``save_user_digits`` wrote.

    Raises:
        DataError: a missing or unreadable file; one line.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in ("train_images", "train_labels", "val_images", "val_labels")}
    except (OSError, SafetensorError, KeyError) as e:
        raise DataError(f"{path}: cannot read the run's user digits: {str(e).splitlines()[0] if str(e) else e!r}") \
            from None
    if _META_SPEC not in meta:
        raise DataError(f"{path}: no preprocessing spec in its metadata")
    spec = PreprocessSpec.from_json(meta[_META_SPEC], source=str(path))
    return UserDigits(arrays["train_images"], arrays["train_labels"], arrays["val_images"], arrays["val_labels"],
                      spec)
