"""core.fileio: a file is replaced only when the caller allows it, and never half-written."""

import csv
import errno
import os
from pathlib import Path

import pytest

from digitlab.core import fileio
from digitlab.core.fileio import atomic_path, write_csv_rows


def test_without_overwrite_a_file_that_appeared_meanwhile_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    with pytest.raises(FileExistsError), atomic_path(target, overwrite=False) as tmp:
        tmp.write_text("new")
        target.write_text("someone else's")  # between our check and our rename
    assert target.read_text() == "someone else's"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]  # the temp file is gone
    with atomic_path(tmp_path / "fresh.csv", overwrite=False) as tmp:
        tmp.write_text("new")
    assert (tmp_path / "fresh.csv").read_text() == "new"


def test_without_hard_links_it_checks_then_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(fileio.os, "link", no_links)
    with atomic_path(tmp_path / "a.txt", overwrite=False) as tmp:
        tmp.write_text("a")
    assert (tmp_path / "a.txt").read_text() == "a"
    with pytest.raises(FileExistsError), atomic_path(tmp_path / "a.txt", overwrite=False) as tmp:
        tmp.write_text("b")
    assert (tmp_path / "a.txt").read_text() == "a" and len(os.listdir(tmp_path)) == 1


def test_write_csv_rows_leaves_missing_fields_empty(tmp_path: Path) -> None:
    path = write_csv_rows(tmp_path / "rows.csv", ("source", "text", "error"),
                          [{"source": "a.png", "text": "42"}, {"source": "b.png", "error": "not an image"}])
    assert list(csv.DictReader(path.open())) == [{"source": "a.png", "text": "42", "error": ""},
                                                  {"source": "b.png", "text": "", "error": "not an image"}]
