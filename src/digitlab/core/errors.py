"""The root of digitlab's expected failures.

Usage: ``raise SomeError("file.idx: what went wrong")`` with a subclass of ``DigitlabError``.
"""

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class DigitlabError(Exception):
    """An expected failure (bad input, missing data, bad option).

    The CLI prints its message as one line on stderr and exits with code 2, without a traceback,
    so the message must name what was wrong and, where it helps, what to do.
    """

    exit_code = 2


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none): what a one-line
    error quotes of a library's multi-line message."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def nearest_key(key: str, known: Iterable[str]) -> str | None:
    """The known dotted key closest to a misspelt ``key`` (difflib), or None when none is close.

    Only keys as deep as ``key`` compete (``trian`` is compared with sections, ``train.epoch`` with
    leaves); a list index in ``key`` matches the ``N`` of a known key and is kept in the answer.
    """
    parts = key.split(".")
    pattern = ".".join("N" if p.isdigit() else p for p in parts)
    same_depth = [k for k in known if k.count(".") == pattern.count(".")]
    hits = difflib.get_close_matches(pattern, same_depth, n=1, cutoff=0.6)
    if not hits:
        return None
    indices = iter(p for p in parts if p.isdigit())
    return ".".join(next(indices, "N") if p == "N" else p for p in hits[0].split("."))


def describe_validation_error(e: "ValidationError", known: Iterable[str] = ()) -> str:
    """A pydantic ``ValidationError`` as one line: ``field.path: message; ...``.

    With ``known`` (the model's dotted keys), an unknown key gets the nearest one suggested:
    ``train.epoch: Extra inputs are not permitted (did you mean train.epochs?)``.
    """
    known = list(known)
    parts = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"])
        line = f"{where}: {err['msg']}" if where else err["msg"]
        if err["type"] == "extra_forbidden" and known and (hint := nearest_key(where, known)):
            line += f" (did you mean {hint}?)"
        parts.append(line)
    return "; ".join(parts)
