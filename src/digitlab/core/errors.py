"""The root of digitlab's expected failures.

Usage: ``raise SomeError("file.idx: what went wrong")`` with a subclass of ``DigitlabError``.
"""


class DigitlabError(Exception):
    """An expected failure (bad input, missing data, bad option).

    The CLI prints its message as one line on stderr and exits with code 2, without a traceback,
    so the message must name what was wrong and, where it helps, what to do.
    """

    exit_code = 2
