"""Train / validation / test splits: validation is carved from train, stratified and seeded.

Usage::

    train_idx, val_idx = split_train_val(ds.train_labels, n_val=5000, seed=0)

The test split is never touched here: model selection, early stopping and tuning see
validation only.
"""

import numpy as np

from digitlab.data.errors import DataError

DEFAULT_N_VAL = 5000


def split_train_val(
    labels: np.ndarray, *, n_val: int = DEFAULT_N_VAL, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified, seeded train/validation split of the training set.

    Args:
        labels: the training labels.
        n_val: validation size (0 gives an empty validation split).
        seed: the same seed always gives the same split.

    Returns:
        ``(train_idx, val_idx)``, each sorted, disjoint, covering ``range(len(labels))``.

    Raises:
        DataError: ``n_val`` is negative or leaves fewer than one training example per class.
    """
    n = len(labels)
    if n_val == 0:
        return np.arange(n), np.empty(0, dtype=np.int64)
    if not 0 < n_val < n:
        raise DataError(f"validation size {n_val} must be between 0 and {n - 1} (the training set has {n})")
    from sklearn.model_selection import train_test_split  # slow to import (docs/decisions.md#deferred-imports)

    try:
        train_idx, val_idx = train_test_split(
            np.arange(n), test_size=n_val, stratify=labels, random_state=seed
        )
    except ValueError as e:  # e.g. a class with a single example cannot be stratified
        raise DataError(f"cannot carve a stratified validation split of {n_val}: {e}") from None
    return np.sort(train_idx), np.sort(val_idx)


def run_split(labels: np.ndarray, *, n_val: int, seed: int, train_subset: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation indices a run uses: ``split_train_val``, then the first ``train_subset``
    training indices. The one place the trainer and the rejection fitting (which must see the same
    digits) take them from."""
    train_idx, val_idx = split_train_val(labels, n_val=n_val, seed=seed)
    return (train_idx if train_subset is None else train_idx[:train_subset]), val_idx
