"""Integrity checks of a loaded dataset: what ``digitlab data check`` reports.

Usage::

    report = check_dataset(load_dataset("mnist", validate=False))
    report.ok                  # False when any check failed
    report.to_dict()           # the JSON form

Checks: the files' SHA-256 against the spec (when the load recorded them: ``load_dataset(...,
verify=False)``), counts and shapes against the spec, label range, class balance per split, blank
or near-blank images, exact duplicates within each split, exact duplicates between train and
test (leakage), and the pixel value range. Duplicates are found by sorting the raw bytes of
every image (one vectorised ``np.unique`` per split), not by a Python loop. An empty split is
reported, never a crash.
"""

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from digitlab.data.idx import format_shape
from digitlab.data.loading import (
    SPLITS,
    Dataset,
    label_range_errors,
    out_of_range_labels,
    spec_mismatches,
)

Status = Literal["pass", "warn", "fail"]

# An image is near-blank when fewer than this many pixels are at least INK_LEVEL bright.
NEAR_BLANK_MIN_INK_PIXELS = 10
INK_LEVEL = 64
# Class balance warns when the smallest class is under this fraction of the largest.
BALANCE_MIN_RATIO = 0.5
_MAX_LISTED = 10


@dataclass
class CheckResult:
    """One check: its name, verdict, a one-line summary and the numbers behind it."""

    name: str
    status: Status
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckReport:
    """Every check of one dataset."""

    dataset: str
    checks: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def flatten_images(images: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` -> ``(N, H * W)``, also for ``N == 0`` (where ``reshape(0, -1)`` fails)."""
    return images.reshape(len(images), math.prod(images.shape[1:]))


def _row_keys(images: np.ndarray) -> np.ndarray:
    """One opaque fixed-size key per image (its raw bytes), comparable and sortable."""
    flat = np.ascontiguousarray(flatten_images(images))
    return flat.view(np.dtype((np.void, flat.shape[1] * flat.dtype.itemsize))).ravel()


def find_duplicates(images: np.ndarray) -> list[list[int]]:
    """Groups of indices of byte-identical images (groups of two or more), smallest index first."""
    if len(images) == 0:
        return []
    _, inverse, counts = np.unique(_row_keys(images), return_inverse=True, return_counts=True)
    dup_groups = np.flatnonzero(counts > 1)
    if dup_groups.size == 0:
        return []
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return [order[starts[g] : starts[g] + counts[g]].tolist() for g in dup_groups]


def find_leaks(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Indices of test images byte-identical to some training image."""
    if len(train) == 0 or len(test) == 0:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(np.isin(_row_keys(test), _row_keys(train)))


def ink_pixel_counts(images: np.ndarray) -> np.ndarray:
    """Per image, the number of pixels at least ``INK_LEVEL`` bright."""
    return (flatten_images(images) >= INK_LEVEL).sum(axis=1)


def _check_checksums(ds: Dataset) -> CheckResult | None:
    """The files' SHA-256 as read against the spec's; None when the load did not record them."""
    if not ds.sha256:
        return None
    details, bad = {}, []
    for role, fspec in ds.spec.files.items():
        found = ds.files.get(role)
        name = found.path.name if found is not None else fspec.filename
        actual = ds.sha256.get(role)
        details[role] = {"file": str(found.path) if found is not None else fspec.filename,
                         "expected": fspec.sha256, "actual": actual}
        if actual is not None and actual != fspec.sha256.lower():
            bad.append(name)
    if bad:
        return CheckResult("checksums", "fail",
                           f"{', '.join(bad)}: checksum mismatch (see details for both hashes)", details)
    n = sum(a is not None for a in ds.sha256.values())
    return CheckResult("checksums", "pass", f"{n} files match the spec's SHA-256", details)


def _check_shapes(ds: Dataset) -> CheckResult:
    details = {}
    for role, fspec in ds.spec.files.items():
        arr = getattr(ds, role)
        details[role] = {"shape": list(arr.shape), "expected": list(fspec.shape),
                         "dtype": str(arr.dtype), "expected_dtype": fspec.dtype}
    problems = spec_mismatches(ds)
    if problems:
        return CheckResult("counts and shapes", "fail", "; ".join(map(str, problems)), details)
    n = {s: len(getattr(ds, f"{s}_labels")) for s in SPLITS}
    return CheckResult("counts and shapes", "pass",
                       f"train {n['train']}, test {n['test']}, images {format_shape(ds.train_images.shape[1:])}",
                       details)


def _check_labels(ds: Dataset) -> CheckResult:
    k = ds.spec.n_classes
    details = {}
    for split in SPLITS:
        labels = getattr(ds, f"{split}_labels")
        bad = out_of_range_labels(labels, k)
        details[split] = {
            "min": int(labels.min()) if labels.size else None,
            "max": int(labels.max()) if labels.size else None,
            "n_out_of_range": int(bad.size),
            "first_out_of_range": bad[:_MAX_LISTED].tolist(),
        }
    problems = label_range_errors(ds)
    if problems:
        return CheckResult("label range", "fail", "; ".join(map(str, problems)), details)
    return CheckResult("label range", "pass", f"all labels in 0..{k - 1}", details)


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Count of each label value in ``0 .. n_classes - 1`` (out-of-range labels ignored)."""
    ok = labels[(labels >= 0) & (labels < n_classes)]
    return np.bincount(ok.astype(np.int64), minlength=n_classes)


def _check_balance(ds: Dataset) -> CheckResult:
    details, ratios = {}, []
    for split in SPLITS:
        counts = class_counts(getattr(ds, f"{split}_labels"), ds.spec.n_classes)
        total = max(int(counts.sum()), 1)
        # An empty split has no balance to judge (the counts check reports its size).
        ratio = float(counts.min() / counts.max()) if counts.max() else None
        if ratio is not None:
            ratios.append(ratio)
        details[split] = {
            "counts": counts.tolist(),
            "percent": [round(100 * c / total, 2) for c in counts.tolist()],
            "min_max_ratio": round(ratio, 4) if ratio is not None else None,
        }
    if not ratios:
        return CheckResult("class balance", "warn", "no labelled images in any split", details)
    worst = min(ratios)
    status: Status = "pass" if worst >= BALANCE_MIN_RATIO else "warn"
    which = "every split" if len(ratios) == len(SPLITS) else "every non-empty split"
    summary = f"smallest class / largest class >= {worst:.2f} in {which}"
    return CheckResult("class balance", status, summary, details)


def _check_blank(ds: Dataset) -> CheckResult:
    details, total = {}, 0
    for split in SPLITS:
        images = getattr(ds, f"{split}_images")
        ink = ink_pixel_counts(images)
        blank = np.flatnonzero(ink < NEAR_BLANK_MIN_INK_PIXELS)
        total += blank.size
        details[split] = {
            "n_near_blank": int(blank.size),
            "n_all_zero": int((flatten_images(images) == 0).all(axis=1).sum()),
            "indices": blank[:_MAX_LISTED].tolist(),
            "min_ink_pixels": int(ink.min()) if ink.size else None,
        }
    rule = f"fewer than {NEAR_BLANK_MIN_INK_PIXELS} pixels >= {INK_LEVEL}"
    status: Status = "warn" if total else "pass"
    summary = (f"{details['train']['n_near_blank']} train, {details['test']['n_near_blank']} test "
               f"near-blank images ({rule})")
    return CheckResult("blank images", status, summary, details)


def _check_duplicates(ds: Dataset) -> CheckResult:
    details, parts, total = {}, [], 0
    for split in SPLITS:
        groups = find_duplicates(getattr(ds, f"{split}_images"))
        n_extra = sum(len(g) - 1 for g in groups)  # copies beyond the first of each group
        total += n_extra
        details[split] = {"n_groups": len(groups), "n_redundant": n_extra, "groups": groups[:_MAX_LISTED]}
        parts.append(f"{split}: {n_extra} redundant copies in {len(groups)} groups")
    return CheckResult("duplicates within splits", "warn" if total else "pass", "; ".join(parts), details)


def _check_leakage(ds: Dataset) -> CheckResult:
    leaks = find_leaks(ds.train_images, ds.test_images)
    details = {"n_test_in_train": int(leaks.size), "test_indices": leaks[:_MAX_LISTED].tolist()}
    status: Status = "fail" if leaks.size else "pass"
    return CheckResult("train/test leakage", status,
                       f"{leaks.size} test images also appear in train", details)


def _check_pixels(ds: Dataset) -> CheckResult:
    details, problems = {}, []
    for split in SPLITS:
        x = getattr(ds, f"{split}_images")
        lo, hi = (int(x.min()), int(x.max())) if x.size else (None, None)
        details[split] = {"dtype": str(x.dtype), "min": lo, "max": hi,
                          "mean": round(float(x.mean()), 3) if x.size else None}
        if x.dtype != np.uint8:
            problems.append(f"{split}: dtype {x.dtype}, expected uint8")
        elif x.size and lo == hi:
            problems.append(f"{split}: every pixel is {lo}")
    if problems:
        return CheckResult("pixel range", "fail", "; ".join(problems), details)

    def span(split: str) -> str:
        d = details[split]
        return f"{d['min']}..{d['max']}" if d["min"] is not None else "empty"

    return CheckResult("pixel range", "pass", f"train {span('train')}, test {span('test')} (uint8)", details)


def check_dataset(ds: Dataset) -> CheckReport:
    """Run every integrity check on ``ds``.

    Load it with ``validate=False, verify=False`` to see every problem, a checksum mismatch
    included, instead of the loader stopping at the first. The "checksums" check comes first and
    only when ``ds.sha256`` holds the hashes as read.
    """
    checksums = _check_checksums(ds)
    checks = [
        *([checksums] if checksums is not None else []),
        _check_shapes(ds),
        _check_labels(ds),
        _check_balance(ds),
        _check_blank(ds),
        _check_duplicates(ds),
        _check_leakage(ds),
        _check_pixels(ds),
    ]
    return CheckReport(ds.spec.name, checks)
