"""Atomic file writes: a reader never sees a half-written file, a crash never loses the old one.

Usage::

    with atomic_path(out / "figure.png") as tmp:
        fig.savefig(tmp)          # written to a temp file beside the target, renamed on success

``atomic_path(target, overwrite=False)`` never replaces a file, even one that appeared while writing.
When the final name is known only after writing (e.g. ``.gz`` or not, decided by content), use
``temp_path`` and rename the file yourself.
"""

import contextlib
import csv
import errno
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


def _publish_new(tmp: Path, target: Path) -> None:
    """Give ``tmp`` the name ``target`` only if no file has it: a hard link fails rather than replace."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: check, then rename (a narrow race)
        if target.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
        os.replace(tmp, target)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` if the block succeeds.

    The temp file keeps the target's suffix (matplotlib and others pick the format from it).
    On any exception the temp file is removed and the target is left untouched.

    Raises:
        FileExistsError: ``overwrite`` is False and ``target`` exists when the block ends.
        OSError: the target's folder cannot be created or written.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with temp_path(target.parent, target.name, suffix=f".tmp{target.suffix}") as tmp:
        yield tmp
        if overwrite:
            os.replace(tmp, target)
        else:
            _publish_new(tmp, target)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv_rows(target: str | os.PathLike[str], fields: tuple[str, ...] | list[str],
                   rows: list[dict[str, object]]) -> Path:
    """Write ``rows`` (missing fields left empty) as a CSV with a header, atomically."""
    target = Path(target)
    with atomic_path(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    return target
