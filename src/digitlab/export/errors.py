"""The export layer's expected failure.

Usage: ``raise ExportError(f"{run}: what went wrong and what to do")``.
"""

from digitlab.core.errors import DigitlabError


class ExportError(DigitlabError):
    """A run that cannot be exported (classical model, failed parity check), or a push that failed."""
