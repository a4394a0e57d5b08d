"""Errors of the data layer: every message starts with the file or dataset it is about.

Usage: ``except DataError as e: print(e)`` prints e.g.
``t10k-images-idx3-ubyte.gz: truncated: header says 10000x28x28 = 7840000 bytes, found 7839000``.
"""

from digitlab.core.errors import DigitlabError


class DataError(DigitlabError):
    """Base class for problems with a dataset or one of its files."""


class IdxFormatError(DataError):
    """A file is not a well-formed IDX file."""


class BadMagicError(IdxFormatError):
    """The first two bytes of the magic number are not zero."""


class UnknownDtypeError(IdxFormatError):
    """The magic number names a dtype code the IDX format does not define."""


class BadDimensionsError(IdxFormatError):
    """The dimension count is zero, or the header ends before the dimensions do."""


class TruncatedError(IdxFormatError):
    """The payload is shorter than the header says."""


class TrailingBytesError(IdxFormatError):
    """The payload is longer than the header says."""


class CorruptGzipError(IdxFormatError):
    """The gzip stream is damaged (bad header, bad CRC, cut short)."""


class UnsupportedDtypeError(DataError):
    """An array cannot be written as IDX because its dtype has no IDX code."""


class ChecksumMismatchError(DataError):
    """A file's SHA-256 (of its uncompressed bytes) differs from the dataset spec's."""


class SpecMismatchError(DataError):
    """A file's shape or dtype contradicts the dataset spec."""


class LabelRangeError(DataError):
    """A label lies outside ``0 .. n_classes - 1``."""


class UnknownDatasetError(DataError):
    """No dataset of that name is registered."""


class DatasetNotFoundError(DataError):
    """A dataset file was found nowhere: not locally, not on a mirror, not through npm.

    The message is one short line; ``attempts`` holds every failed attempt in full (``where: why``).
    """

    def __init__(self, message: str, attempts: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.attempts = attempts


class FileAccessError(DataError):
    """A file or folder cannot be used: unreadable, not a folder, disk full, read-only."""


def os_reason(e: OSError) -> str:
    """The operating system's words for ``e`` (``Permission denied``), on one line."""
    return " ".join(str(e.strerror or e).split())
