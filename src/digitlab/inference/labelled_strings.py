"""A user's labelled digit strings (images plus a ``labels.tsv``), checked, then read as grayscale.

Usage::

    strings = read_labelled_strings("my_amounts/")          # every line checked before any image is decoded
    strings.files, strings.texts, strings.grays             # names, texts as written, (H, W) float32 in [0, 1]
    train, val = split_strings(strings, 0.2, 0)             # a seeded hold-out

The folder holds image files and ``labels.tsv``, one line per image: the file name (relative to the
folder), a TAB, and the string as written (``2250``, ``12.50``, ``3-7``; the characters of
``digitlab.data.synth_strings.ALPHABET``). The file may start with a UTF-8 BOM, use CRLF line endings,
hold blank lines and ``#`` comment lines, and open with a header line ``file<TAB>text`` (or
``file<TAB>label``); whitespace around a file name or a label is dropped. Files in the folder that
``labels.tsv`` does not list are ignored.

Every line is checked before any image is decoded, so a wrong folder fails at once with one line
(``LabelledStringsError``) naming ``labels.tsv``, the line and the file: a line without exactly one
TAB, an empty file name or label, a label that is not a digit string, a file that is listed but
missing, listed twice or not an image, too few strings; then a file that cannot be decoded.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitlab.core.errors import DigitlabError
from digitlab.data.synth_strings import ALPHABET
from digitlab.inference.batch import IMAGE_SUFFIXES
from digitlab.inference.prepare import ImageError, load_gray

LABELS_FILE = "labels.tsv"
# The floor single digits have (MIN_IMAGES, docs/decisions.md#fine-tuning): fewer strings cannot adapt a
# model and still leave a few held out to validate on.
MIN_STRINGS = 20
HEADER_NAMES = ("text", "label")  # a first line "file<TAB>text" or "file<TAB>label" is a header
_ALPHABET_SET = frozenset(ALPHABET)
_SHOWN = 40  # a line quoted in an error is cut to this many characters


class LabelledStringsError(DigitlabError):
    """A labelled strings folder that cannot be used: missing, no or bad ``labels.tsv``, bad or missing images."""


@dataclass(frozen=True)
class LabelledStrings:
    """A user's labelled strings in the order ``labels.tsv`` lists them."""

    path: Path  # the folder
    files: list[str]  # file names as listed, relative to the folder
    texts: list[str]  # the strings as written ("12.50")
    grays: list[np.ndarray]  # (H, W) float32 in [0, 1], as load_gray gives them; widths differ

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class _Entry:
    line: int  # 1-based line number in labels.tsv
    file: str
    text: str


def _one_line(message: str) -> str:
    return " ".join(message.split("\n"))


def _shown(line: str) -> str:
    return repr(line if len(line) <= _SHOWN else line[:_SHOWN] + "...")


def _read_labels_text(root: Path) -> tuple[Path, str]:
    """The folder's ``labels.tsv`` as text, after checking the folder and the file exist."""
    if not root.exists():
        raise LabelledStringsError(f"{root}: no such folder (expected images and a {LABELS_FILE}: file<TAB>string "
                                   "per line)")
    if not root.is_dir():
        raise LabelledStringsError(f"{root}: not a folder (expected images and a {LABELS_FILE}: file<TAB>string "
                                   "per line)")
    tsv = root / LABELS_FILE
    if not tsv.exists():
        raise LabelledStringsError(f"{root}: no {LABELS_FILE} (one line per image: file name, TAB, the string as "
                                   "written)")
    if not tsv.is_file():
        raise LabelledStringsError(f"{tsv}: not a file (expected one line per image: file name, TAB, string)")
    try:
        data = tsv.read_bytes()
    except OSError as e:
        raise LabelledStringsError(_one_line(f"{tsv}: cannot be read ({e.strerror or e})")) from None
    try:
        return tsv, data.decode("utf-8-sig")  # a BOM, as some editors write, is dropped
    except UnicodeDecodeError as e:
        raise LabelledStringsError(f"{tsv}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def _parse_line(tsv: Path, number: int, line: str) -> _Entry:
    """One data line's file and label, after checking its layout and its label."""
    where = f"{tsv}, line {number}"
    n_tabs = line.count("\t")
    if n_tabs != 1:
        found = f"{n_tabs} TABs"
        if n_tabs == 0:
            found = "spaces but no TAB" if " " in line.strip() else "no TAB"
        raise LabelledStringsError(f"{where}: expected file<TAB>string, found {found} in {_shown(line)}")
    file, text = (part.strip() for part in line.split("\t"))
    if not file:
        raise LabelledStringsError(f"{where}: empty file name (label {text!r})")
    if not text:
        raise LabelledStringsError(f"{where}: empty label for {file}")
    if not set(text) <= _ALPHABET_SET:
        raise LabelledStringsError(f"{where}: label {text!r} for {file} is not a digit string (digits and . , - / "
                                   "only)")
    return _Entry(number, file, text)


def _is_header(line: str) -> bool:
    parts = [p.strip().lower() for p in line.split("\t")]
    return len(parts) == 2 and parts[0] == "file" and parts[1] in HEADER_NAMES


def list_labelled_strings(folder: str | os.PathLike[str], *, min_strings: int = MIN_STRINGS) -> list[tuple[str, str]]:
    """The ``(file, text)`` pairs of a labelled strings folder in ``labels.tsv``'s order, after checking every
    line and that every listed file is there; no image is decoded.

    Args:
        folder: image files and a ``labels.tsv`` (file name relative to the folder, TAB, the string as written).
        min_strings: the fewest strings accepted.

    Returns:
        ``[(file, text), ...]``; files the folder holds but ``labels.tsv`` does not list are left out.

    Raises:
        LabelledStringsError: the folder is missing or not a folder; no ``labels.tsv``, or one that is not UTF-8
            or lists nothing; a line without exactly one TAB, with an empty file name or label, or with a label
            outside ``ALPHABET``; a listed file that is outside the folder, not an image (by its suffix), listed
            twice or missing; fewer than ``min_strings`` strings. The first problem is named, with its line.
    """
    root = Path(folder)
    tsv, content = _read_labels_text(root)
    entries: list[_Entry] = []
    first_seen: dict[str, int] = {}
    seen_data = False
    for number, raw in enumerate(content.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not seen_data:
            seen_data = True
            if _is_header(line):
                continue
        entry = _parse_line(tsv, number, line)
        where = f"{tsv}, line {number}"
        name = Path(entry.file)
        if name.is_absolute() or ".." in name.parts:
            raise LabelledStringsError(f"{where}: {entry.file} is not inside {root} (list files relative to the "
                                       "folder)")
        if name.suffix.lower() not in IMAGE_SUFFIXES:
            raise LabelledStringsError(f"{where}: {entry.file} is not an image file (accepted: "
                                       f"{', '.join(IMAGE_SUFFIXES)})")
        key = os.path.normpath(entry.file)  # "./a.png" and "a.png" are one file
        if key in first_seen:
            raise LabelledStringsError(f"{where}: {entry.file} is listed twice (first on line {first_seen[key]})")
        first_seen[key] = number
        path = root / name
        if not path.exists():
            raise LabelledStringsError(f"{where}: {entry.file} is listed but missing")
        if not path.is_file():
            raise LabelledStringsError(f"{where}: {entry.file} is listed but is not a file")
        entries.append(entry)
    if not entries:
        raise LabelledStringsError(f"{tsv}: no labelled strings (expected one line per image: file name, TAB, the "
                                   "string as written)")
    if len(entries) < min_strings:
        raise LabelledStringsError(f"{tsv}: {len(entries)} labelled string(s); fine-tuning needs at least "
                                   f"{min_strings}")
    return [(e.file, e.text) for e in entries]


def read_labelled_strings(folder: str | os.PathLike[str], *, min_strings: int = MIN_STRINGS) -> LabelledStrings:
    """Check a labelled strings folder (see ``list_labelled_strings``), then read each listed image as grayscale.

    Files in the folder that ``labels.tsv`` does not list are ignored.

    Args:
        folder: image files and a ``labels.tsv`` (file name relative to the folder, TAB, the string as written).
        min_strings: the fewest strings accepted.

    Returns:
        The strings in ``labels.tsv``'s order, each image as ``load_gray`` gives it.

    Raises:
        LabelledStringsError: a bad folder or ``labels.tsv`` (see ``list_labelled_strings``), or a listed image
            that cannot be decoded (named, with its line).
    """
    root = Path(folder)
    pairs = list_labelled_strings(root, min_strings=min_strings)
    grays = []
    for file, _ in pairs:
        path = root / file
        try:
            grays.append(load_gray(path))
        except ImageError as e:
            message = str(e)  # load_gray names the file already
            message = message if str(path) in message else f"{path}: {message}"
            raise LabelledStringsError(_one_line(f"{message} (listed in {root / LABELS_FILE})")) from None
    return LabelledStrings(root, [f for f, _ in pairs], [t for _, t in pairs], grays)


def _subset(strings: LabelledStrings, idx: np.ndarray) -> LabelledStrings:
    return LabelledStrings(strings.path, [strings.files[i] for i in idx], [strings.texts[i] for i in idx],
                           [strings.grays[i] for i in idx])


def split_strings(strings: LabelledStrings, val_fraction: float, seed: int) -> tuple[LabelledStrings,
                                                                                      LabelledStrings]:
    """Hold out a seeded share of the strings for validation; the same seed gives the same split.

    Args:
        strings: what ``read_labelled_strings`` gave.
        val_fraction: the share held out, in [0, 1); rounded to whole strings, at least one left to train on.
        seed: seeds the permutation.

    Returns:
        ``(train, val)``, disjoint, each in ``labels.tsv``'s order; ``val`` is empty when ``val_fraction`` is 0.

    Raises:
        ValueError: ``val_fraction`` outside [0, 1).
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(strings)
    n_val = min(round(val_fraction * n), max(n - 1, 0))
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    return _subset(strings, train_idx), _subset(strings, val_idx)
