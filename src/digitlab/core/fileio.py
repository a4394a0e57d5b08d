"""Atomic file writes: a reader never sees a half-written file, a crash never loses the old one.

Usage::

    with atomic_path(out / "figure.png") as tmp:
        fig.savefig(tmp)          # written to a temp file beside the target, renamed on success

When the final name is known only after writing (e.g. ``.gz`` or not, decided by content), use
``temp_path`` and rename the file yourself.
"""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def temp_path(folder: str | os.PathLike[str], name: str, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a new, empty, uniquely named hidden file in ``folder``; remove it on exit if still there.

    The caller renames it into place (``os.replace``) once it is complete; a unique name means two
    processes writing the same target never touch each other's temp file.

    Raises:
        OSError: the folder does not exist or cannot be written.
    """
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=suffix)
    try:  # mkstemp makes the file private (0600); give it the mode an ordinary open() would
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` if the block succeeds.

    The temp file keeps the target's suffix (matplotlib and others pick the format from it).
    On any exception the temp file is removed and the target is left untouched.

    Raises:
        OSError: the target's folder cannot be created or written.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with temp_path(target.parent, target.name, suffix=f".tmp{target.suffix}") as tmp:
        yield tmp
        os.replace(tmp, target)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
