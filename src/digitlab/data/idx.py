"""IDX files (the MNIST container format): read and write, gzip or raw, every dtype code.

Usage::

    images = read_idx("train-images-idx3-ubyte.gz")          # (60000, 28, 28) uint8
    write_idx("labels.idx1-ubyte.gz", labels)                 # gzip when the name ends in .gz

Layout: two zero bytes, a dtype code, the number of dimensions ``n``, ``n`` big-endian uint32
sizes, then the items in C order, big-endian. Reading first checks that the file can hold what
the header promises (a raw file by its size; a gzip file by deflate's expansion limit and its
ISIZE trailer, else by a streamed count), so a lying header never makes it allocate. It then
decompresses straight into the final buffer (chunk by chunk), so a 47 MB MNIST payload is
materialised once; an optional SHA-256 of the uncompressed bytes is computed from that buffer.
Every failure is a ``DataError`` whose message starts with the file.
"""

import contextlib
import gzip
import hashlib
import math
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from digitlab.core.fileio import atomic_path
from digitlab.data.errors import (
    BadDimensionsError,
    BadMagicError,
    ChecksumMismatchError,
    CorruptGzipError,
    FileAccessError,
    IdxFormatError,
    TrailingBytesError,
    TruncatedError,
    UnknownDtypeError,
    UnsupportedDtypeError,
    os_reason,
)

# IDX dtype code -> big-endian numpy dtype, as the format defines them.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_BY_KIND: dict[tuple[str, int], int] = {(d.kind, d.itemsize): c for c, d in IDX_DTYPES.items()}

GZIP_MAGIC = b"\x1f\x8b"
# 10-byte header + at least 2 bytes of deflate data + 8-byte trailer (CRC32, ISIZE).
_GZIP_MIN_LEN = 20
_CHUNK = 1 << 20
# deflate cannot expand data by more than about 1032:1; a header that asks for more than that
# from a gzip file is truncated for certain, and allocating it could exhaust memory.
_MAX_DEFLATE_RATIO = 1100


def format_shape(shape: Sequence[int]) -> str:
    """``(10000, 28, 28)`` -> ``'10000x28x28'``, the way every message writes a shape."""
    return "x".join(str(d) for d in shape)


@dataclass(frozen=True)
class IdxHeader:
    """What an IDX header says: the item dtype (big-endian) and the shape."""

    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def n_bytes(self) -> int:
        """Payload length the header promises."""
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def header_len(self) -> int:
        return 4 + 4 * len(self.shape)

    def describe(self) -> str:
        """``10000x28x28 = 7840000 bytes``."""
        return f"{format_shape(self.shape)} = {self.n_bytes} bytes"


@contextlib.contextmanager
def _errors_named(path: Path) -> Iterator[None]:
    """Turn what reading ``path`` can raise into DataErrors whose message starts with the file."""
    try:
        yield
    # BadGzipFile is an OSError: it must be caught before the general case.
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise CorruptGzipError(f"{path.name}: corrupt gzip stream: {e}") from None
    except OSError as e:
        raise FileAccessError(f"{path}: cannot read: {os_reason(e)}") from None


def is_gzip(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with the gzip magic bytes (whatever its name says).

    Raises:
        FileAccessError: the file cannot be read (missing, a folder, no permission).
    """
    path = Path(path)
    with _errors_named(path), open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_uncompressed(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for reading its uncompressed bytes: gunzip when it is gzip, else raw."""
    if is_gzip(path):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _parse_header(f: BinaryIO, name: str) -> tuple[IdxHeader, bytes]:
    magic = f.read(4)
    if len(magic) < 4:
        raise TruncatedError(f"{name}: truncated: {len(magic)} bytes, too short for an IDX header")
    if magic[0] != 0 or magic[1] != 0:
        raise BadMagicError(
            f"{name}: bad magic number {magic.hex()}: an IDX file starts with two zero bytes"
        )
    code, ndim = magic[2], magic[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise UnknownDtypeError(f"{name}: unknown dtype code 0x{code:02X} (the format defines {known})")
    if ndim == 0:
        raise BadDimensionsError(f"{name}: bad dimension count 0: an IDX file has at least one")
    dims_raw = f.read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise BadDimensionsError(
            f"{name}: header ends early: {ndim} dimensions need {4 * ndim} bytes, found {len(dims_raw)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
    return IdxHeader(IDX_DTYPES[code], shape), magic + dims_raw


def _count_rest(f: BinaryIO) -> int:
    """Bytes left in ``f``, counted through one reused chunk buffer (nothing kept)."""
    scratch = bytearray(_CHUNK)
    n = 0
    while got := f.readinto(scratch):
        n += got
    return n


def _length_error(name: str, header: IdxHeader, found: int) -> IdxFormatError:
    """The error for a payload of ``found`` bytes where the header promises another length."""
    if found < header.n_bytes:
        return TruncatedError(f"{name}: truncated: header says {header.describe()}, found {found}")
    return TrailingBytesError(f"{name}: overlong: header says {header.describe()}, found {found}")


def _gzip_isize(path: Path) -> int | None:
    """A gzip file's ISIZE trailer: the uncompressed length mod 2**32 (of its last member)."""
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) < _GZIP_MIN_LEN:
            return None
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little")


def _gzip_length_plausible(path: Path, header: IdxHeader) -> bool:
    """Whether a gzip file can hold the header's promise, judged from its size and trailer alone.

    Both tests are cheap and neither allocates: deflate's expansion limit, and the ISIZE trailer,
    which for a single-member gzip (what every writer of MNIST files makes) must equal the promised
    length mod 2**32. A multi-member gzip can fail the second test while being right, so a False
    here means "count before allocating", not "bad".
    """
    total = header.header_len + header.n_bytes
    if header.n_bytes > path.stat().st_size * _MAX_DEFLATE_RATIO:
        return False
    return _gzip_isize(path) == total % 2**32


def _read_idx_bytes(path: Path) -> tuple[IdxHeader, bytearray]:
    """Read the uncompressed bytes of ``path`` (header + payload) into one bytearray.

    The payload length is checked before the buffer is allocated, so a lying header costs a
    streamed count, never the memory it asks for.
    """
    name = path.name
    gz = is_gzip(path)
    with open_uncompressed(path) as f:
        header, head_bytes = _parse_header(f, name)
        n_bytes = header.n_bytes
        if not gz:
            found = path.stat().st_size - len(head_bytes)
            if found != n_bytes:
                raise _length_error(name, header, found)
        elif not _gzip_length_plausible(path, header):
            found = _count_rest(f)
            if found != n_bytes:
                raise _length_error(name, header, found)
            # The length is right after all (a multi-member gzip): rewind past the header.
            f.seek(len(head_bytes))
        buf = bytearray(len(head_bytes) + n_bytes)
        buf[: len(head_bytes)] = head_bytes
        view = memoryview(buf)[len(head_bytes) :]
        got = 0
        while got < n_bytes:
            n = f.readinto(view[got : got + _CHUNK])
            if not n:
                raise _length_error(name, header, got)
            got += n
        # Reading past the end also makes gzip check its CRC and length trailer.
        extra = _count_rest(f)
        if extra:
            raise _length_error(name, header, n_bytes + extra)
    return header, buf


def _read_buffer(path: Path) -> tuple[IdxHeader, bytearray]:
    with _errors_named(path):
        return _read_idx_bytes(path)


def _to_array(header: IdxHeader, buf: bytearray) -> np.ndarray:
    """View ``buf``'s payload as a native-endian array (swapping ``buf`` in place: hash it first)."""
    arr = np.frombuffer(buf, dtype=header.dtype, offset=header.header_len).reshape(header.shape)
    if header.dtype.itemsize > 1:
        # Swap in place and relabel: no second copy of the payload.
        arr = arr.byteswap(inplace=True).view(header.dtype.newbyteorder("="))
    return arr


def read_idx(path: str | os.PathLike[str], *, sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (gzip or raw) into a native-endian, writable numpy array.

    Args:
        path: the file; gzip is detected from its first bytes, not its name.
        sha256: when given, the expected SHA-256 (hex) of the uncompressed bytes.

    Returns:
        The array with the header's shape and dtype (native byte order).

    Raises:
        IdxFormatError: a subclass naming the file and the problem (bad magic, unknown dtype,
            bad dimensions, truncated, overlong, corrupt gzip).
        ChecksumMismatchError: ``sha256`` was given and differs.
        FileAccessError: the file cannot be read (missing, a folder, no permission).
    """
    path = Path(path)
    header, buf = _read_buffer(path)
    if sha256 is not None:
        # Hashed from the buffer just filled: the file is read once.
        actual = hashlib.sha256(buf).hexdigest()
        if actual != sha256.lower():
            raise ChecksumMismatchError(
                f"{path.name}: checksum mismatch: expected sha256 {sha256.lower()}, got {actual}"
            )
    return _to_array(header, buf)


def read_idx_with_hash(path: str | os.PathLike[str]) -> tuple[np.ndarray, str]:
    """Read an IDX file like ``read_idx`` and return the SHA-256 of its uncompressed bytes too.

    For callers that report a checksum mismatch instead of stopping on it (``data check``).

    Raises:
        IdxFormatError, FileAccessError: as ``read_idx``.
    """
    header, buf = _read_buffer(Path(path))
    digest = hashlib.sha256(buf).hexdigest()
    return _to_array(header, buf), digest


def hash_uncompressed(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's uncompressed bytes, streamed; gzip integrity is checked too.

    Raises:
        CorruptGzipError: the gzip stream is damaged.
        FileAccessError: the file cannot be read (missing, a folder, no permission).
    """
    path = Path(path)
    h = hashlib.sha256()
    with _errors_named(path), open_uncompressed(path) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def idx_code_for(dtype: np.dtype) -> int:
    """The IDX dtype code for a numpy dtype.

    Raises:
        UnsupportedDtypeError: the IDX format has no code for it (e.g. int64, bool).
    """
    dtype = np.dtype(dtype)
    code = _CODE_BY_KIND.get((dtype.kind, dtype.itemsize))
    if code is None:
        raise UnsupportedDtypeError(
            f"dtype {dtype} cannot be written as IDX: use uint8, int8, int16, int32, float32 or float64"
        )
    return code


def write_idx(path: str | os.PathLike[str], array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file, atomically (temp file, then rename).

    Args:
        path: the target; written gzip-compressed when ``compress`` is True, or when it is None
            and the name ends in ``.gz``.
        array: any number of dimensions (at least one) and an IDX dtype.
        compress: force gzip on or off.

    Returns:
        The path written.

    Raises:
        UnsupportedDtypeError: no IDX code for the dtype.
        BadDimensionsError: a 0-d array, more than 255 dimensions, or a dimension over 2**32 - 1.
        FileAccessError: the file or its folder cannot be written.
    """
    path = Path(path)
    array = np.asarray(array)
    code = idx_code_for(array.dtype)
    if not 1 <= array.ndim <= 255 or any(d >= 2**32 for d in array.shape):
        raise BadDimensionsError(f"{path.name}: cannot write an array of shape {array.shape} as IDX")
    if compress is None:
        compress = path.suffix == ".gz"
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = np.ascontiguousarray(array, dtype=IDX_DTYPES[code])
    try:
        # mtime=0 keeps the bytes reproducible for equal arrays.
        with atomic_path(path) as tmp, (gzip.GzipFile(tmp, "wb", mtime=0) if compress else open(tmp, "wb")) as f:
            f.write(header)
            f.write(memoryview(payload.reshape(-1)).cast("B"))
    except OSError as e:
        raise FileAccessError(f"{path}: cannot write: {os_reason(e)}") from None
    return path
