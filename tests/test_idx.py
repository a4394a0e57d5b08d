"""IDX reader and writer: round trips for every dtype, and one distinct error per corruption."""

import gzip
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from digitlab.data.errors import (
    BadDimensionsError,
    BadMagicError,
    ChecksumMismatchError,
    CorruptGzipError,
    DataError,
    TrailingBytesError,
    TruncatedError,
    UnknownDtypeError,
    UnsupportedDtypeError,
)
from digitlab.data.idx import hash_uncompressed, read_idx, write_idx

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 4, 3), (2, 1, 3, 2, 2)])
@pytest.mark.parametrize("gz", [True, False])
def test_round_trip_every_dtype_and_rank(tmp_path: Path, dtype, shape, gz: bool) -> None:
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        arr = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        arr = (rng.standard_normal(shape) * 1e3).astype(dtype)
    path = write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), arr)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype)
    assert back.dtype.isnative
    assert back.shape == shape
    np.testing.assert_array_equal(back, arr)
    assert back.flags.writeable


def test_header_bytes_follow_the_format(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x.idx", np.arange(6, dtype=np.int16).reshape(2, 3))
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0B, 2])
    assert raw[4:12] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert raw[12:14] == (0).to_bytes(2, "big") and raw[14:16] == (1).to_bytes(2, "big")
    assert len(raw) == 12 + 6 * 2


def test_gzip_is_detected_by_content_not_name(tmp_path: Path) -> None:
    arr = np.arange(10, dtype=np.uint8)
    path = write_idx(tmp_path / "labels.idx", arr, compress=True)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(path), arr)


def test_sha256_is_of_uncompressed_bytes(tmp_path: Path) -> None:
    arr = np.arange(100, dtype=np.uint8)
    raw = write_idx(tmp_path / "a.idx", arr)
    gz = write_idx(tmp_path / "a.idx.gz", arr)
    assert hash_uncompressed(raw) == hash_uncompressed(gz)
    read_idx(gz, sha256=hash_uncompressed(raw))
    with pytest.raises(ChecksumMismatchError, match=r"a\.idx\.gz: checksum mismatch: expected sha256 0{64}, got "):
        read_idx(gz, sha256="0" * 64)


def test_write_rejects_dtypes_without_idx_code(tmp_path: Path) -> None:
    for bad in (np.zeros(3, dtype=np.int64), np.zeros(3, dtype=bool), np.zeros(3, dtype=np.uint16)):
        with pytest.raises(UnsupportedDtypeError):
            write_idx(tmp_path / "bad.idx", bad)
    with pytest.raises(BadDimensionsError):
        write_idx(tmp_path / "scalar.idx", np.uint8(3))
    assert not list(tmp_path.iterdir()), "a failed write leaves nothing behind"


def _raw(tmp_path: Path, data: bytes, name: str = "t10k-images-idx3-ubyte") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def test_bad_magic(tmp_path: Path) -> None:
    with pytest.raises(BadMagicError, match="bad magic number"):
        read_idx(_raw(tmp_path, b"\x01\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc"))


def test_unknown_dtype_code(tmp_path: Path) -> None:
    with pytest.raises(UnknownDtypeError, match="unknown dtype code 0x0A"):
        read_idx(_raw(tmp_path, _header(0x0A, (3,)) + b"abc"))


def test_zero_dimensions(tmp_path: Path) -> None:
    with pytest.raises(BadDimensionsError, match="dimension count 0"):
        read_idx(_raw(tmp_path, bytes([0, 0, 8, 0])))


def test_header_cut_in_the_dimensions(tmp_path: Path) -> None:
    with pytest.raises(BadDimensionsError, match="header ends early"):
        read_idx(_raw(tmp_path, bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big")))


def test_file_shorter_than_a_header(tmp_path: Path) -> None:
    with pytest.raises(TruncatedError, match="too short"):
        read_idx(_raw(tmp_path, b"\x00\x00"))


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_payload_names_file_and_sizes(tmp_path: Path, gz: bool) -> None:
    data = _header(0x08, (10000, 28, 28)) + bytes(7839000)
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(TruncatedError) as e:
        read_idx(path)
    assert str(e.value) == f"{name}: truncated: header says 10000x28x28 = 7840000 bytes, found 7839000"


@pytest.mark.parametrize("gz", [False, True])
def test_extra_bytes(tmp_path: Path, gz: bool) -> None:
    data = _header(0x0C, (2, 2)) + bytes(16 + 3)
    path = tmp_path / "x.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(TrailingBytesError, match=r"x\.idx: overlong: header says 2x2 = 16 bytes, found 19"):
        read_idx(path)


def test_corrupt_gzip(tmp_path: Path) -> None:
    good = gzip.compress(_header(0x08, (1000,)) + bytes(range(256)) * 4)
    cut = _raw(tmp_path, good[: len(good) // 2], "cut.gz")
    with pytest.raises(CorruptGzipError, match=r"cut\.gz: corrupt gzip"):
        read_idx(cut)
    flipped = bytearray(good)
    flipped[-6] ^= 0xFF  # inside the CRC32 trailer
    with pytest.raises(CorruptGzipError, match="corrupt gzip"):
        read_idx(_raw(tmp_path, bytes(flipped), "crc.gz"))
    with pytest.raises(CorruptGzipError):
        hash_uncompressed(cut)


def test_header_promising_more_than_gzip_can_hold_fails_without_allocating(tmp_path: Path) -> None:
    path = _raw(tmp_path, gzip.compress(_header(0x0E, (2**31, 2**10)) + bytes(8)), "huge.gz")
    with pytest.raises(TruncatedError, match="found 8"):
        read_idx(path)


def test_every_failure_is_a_data_error() -> None:
    for cls in (BadMagicError, UnknownDtypeError, BadDimensionsError, TruncatedError, TrailingBytesError,
                CorruptGzipError, ChecksumMismatchError, UnsupportedDtypeError):
        assert issubclass(cls, DataError)


def test_reading_copies_the_payload_once(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, size=(6000, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "imgs.gz", arr)
    tracemalloc.start()
    try:
        out = read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    payload = arr.nbytes
    assert out.shape == arr.shape
    # One buffer for the payload, plus chunk-sized scratch; a second full copy would double it.
    assert peak < payload * 1.5, f"peak {peak} bytes for a {payload}-byte payload"
