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
    FileAccessError,
    TrailingBytesError,
    TruncatedError,
    UnknownDtypeError,
    UnsupportedDtypeError,
)
from digitlab.data.idx import format_shape, hash_uncompressed, is_gzip, read_idx, read_idx_with_hash, write_idx

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


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


_GOOD = _header(0x08, (4, 3)) + bytes(range(12))
_GOOD_GZ = _gz(_GOOD)


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0xFF
    return bytes(out)


# name -> (file name, bytes on disk, expected error class); every way a file can be broken.
CORRUPTIONS = {
    "empty file": ("a.idx", b"", TruncatedError),
    "short header": ("a.idx", b"\x00\x00\x08", TruncatedError),
    "bad magic": ("a.idx", b"\x01" + _GOOD[1:], BadMagicError),
    "unknown dtype": ("a.idx", _header(0x0A, (12,)) + bytes(12), UnknownDtypeError),
    "zero dimensions": ("a.idx", bytes([0, 0, 8, 0]), BadDimensionsError),
    "header cut in the dims": ("a.idx", _GOOD[:6], BadDimensionsError),
    "truncated raw": ("a.idx", _GOOD[:-1], TruncatedError),
    "overlong raw": ("a.idx", _GOOD + b"\x00", TrailingBytesError),
    "truncated gzip payload": ("a.idx.gz", _gz(_GOOD[:-1]), TruncatedError),
    "overlong gzip payload": ("a.idx.gz", _gz(_GOOD + b"\x00"), TrailingBytesError),
    "gzip cut short": ("a.idx.gz", _GOOD_GZ[: len(_GOOD_GZ) // 2], CorruptGzipError),
    "gzip CRC flipped": ("a.idx.gz", _flip(_GOOD_GZ, -6), CorruptGzipError),
    "gzip ISIZE flipped": ("a.idx.gz", _flip(_GOOD_GZ, -2), CorruptGzipError),
    "gzip header garbage": ("a.idx.gz", b"\x1f\x8b" + b"garbage" * 4, CorruptGzipError),
    "gzip with junk after it": ("a.idx.gz", _GOOD_GZ + b"junk", CorruptGzipError),
    "huge promise in gzip": ("a.idx.gz", _gz(_header(0x08, (2**32 - 1, 2**32 - 1)) + bytes(8)), TruncatedError),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_every_corruption_is_a_data_error_naming_the_file(tmp_path: Path, case: str) -> None:
    name, data, cls = CORRUPTIONS[case]
    path = _raw(tmp_path, data, name)
    with pytest.raises(cls) as e:
        read_idx(path)
    assert isinstance(e.value, DataError)
    msg = str(e.value)
    assert msg.startswith(f"{name}: ") and "\n" not in msg, msg


def test_checksum_mismatch_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    path = _raw(tmp_path, _GOOD_GZ, "a.idx.gz")
    with pytest.raises(DataError, match=r"^a\.idx\.gz: checksum mismatch"):
        read_idx(path, sha256="f" * 64)


@pytest.mark.parametrize("kind", ["folder", "missing"])
def test_unreadable_paths_are_data_errors_naming_path_and_reason(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    if kind == "folder":
        path.mkdir()
    reason = "Is a directory" if kind == "folder" else "No such file or directory"
    for read in (read_idx, read_idx_with_hash, hash_uncompressed, is_gzip):
        with pytest.raises(FileAccessError) as e:
            read(path)
        assert str(e.value) == f"{path}: cannot read: {reason}"


def test_write_into_a_file_instead_of_a_folder_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(FileAccessError, match=r"blocker/a\.idx: cannot write: "):
        write_idx(tmp_path / "blocker" / "a.idx", np.zeros(3, np.uint8))


def test_lying_gzip_header_is_found_out_without_allocating_its_promise(tmp_path: Path) -> None:
    # 31,360,000 bytes promised, 31,000,000 there: zeros compress 1000:1, within deflate's limit,
    # so only the ISIZE trailer tells, before the buffer is allocated.
    path = _raw(tmp_path, _gz(_header(0x08, (40000, 28, 28)) + bytes(31_000_000)), "big.gz")
    tracemalloc.start()
    try:
        with pytest.raises(TruncatedError) as e:
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(e.value) == "big.gz: truncated: header says 40000x28x28 = 31360000 bytes, found 31000000"
    assert peak < 8_000_000, f"peak {peak / 1e6:.1f} MB"


def test_multi_member_gzip_is_read_although_its_trailer_counts_one_member(tmp_path: Path) -> None:
    arr = np.arange(3000, dtype=np.int16).reshape(30, 100)
    raw = write_idx(tmp_path / "a.idx", arr).read_bytes()
    path = _raw(tmp_path, _gz(raw[:1000]) + _gz(raw[1000:]), "multi.gz")
    np.testing.assert_array_equal(read_idx(path, sha256=hash_uncompressed(tmp_path / "a.idx")), arr)
    back, digest = read_idx_with_hash(path)
    np.testing.assert_array_equal(back, arr)
    assert digest == hash_uncompressed(path)
    bad = _raw(tmp_path, _gz(raw[:1000]) + _gz(raw[1000:-2]), "multi-cut.gz")
    with pytest.raises(TruncatedError, match=r"multi-cut\.gz: truncated: header says 30x100 = 6000 bytes, found 5998"):
        read_idx(bad)


def test_format_shape() -> None:
    assert format_shape((10000, 28, 28)) == "10000x28x28"
    assert format_shape([7]) == "7"


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
