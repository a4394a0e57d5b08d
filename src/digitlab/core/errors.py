"""The root of digitlab's expected failures.

Usage: ``raise SomeError("file.idx: what went wrong")`` with a subclass of ``DigitlabError``.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class DigitlabError(Exception):
    """An expected failure (bad input, missing data, bad option).

    The CLI prints its message as one line on stderr and exits with code 2, without a traceback,
    so the message must name what was wrong and, where it helps, what to do.
    """

    exit_code = 2


def describe_validation_error(e: "ValidationError") -> str:
    """A pydantic ``ValidationError`` as one line: ``field.path: message; ...``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" if err["loc"] else err["msg"] for err in e.errors()
    )
