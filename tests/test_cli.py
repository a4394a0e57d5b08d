"""The digitlab command through Typer's runner: help, version, and one-line errors with exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_arrays, write_dataset
from digitlab import __version__
from digitlab.cli import app
from digitlab.data import datasets

runner = CliRunner()


@pytest.fixture
def registered_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A tiny dataset registered under the name 'tiny' for the duration of one test."""
    def register(arrays=None, **kw):
        spec = write_dataset(tmp_path / "data" / "tiny", arrays or make_arrays(), **kw)
        monkeypatch.setitem(datasets._REGISTRY, "tiny", spec)
        return spec, tmp_path / "data"
    return register


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("digitlab: error: ")
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("args", [[], ["--help"], ["data", "--help"], ["data", "fetch", "--help"],
                                  ["data", "check", "--help"], ["data", "explore", "--help"], ["data"]])
def test_help_everywhere(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"digitlab {__version__}"


def test_fetch_says_where_files_came_from(registered_tiny) -> None:
    _, data_dir = registered_tiny()
    result = runner.invoke(app, ["data", "fetch", "--dataset", "tiny", "--data-dir", str(data_dir)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert result.output.count("--data-dir") == 4
    assert "t10k-labels-idx1-ubyte" in result.output


def test_check_json_and_exit_code(registered_tiny) -> None:
    _, data_dir = registered_tiny()
    result = runner.invoke(app, ["data", "check", "--dataset", "tiny", "--data-dir", str(data_dir), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and len(report["checks"]) == 8
    assert report["checks"][0]["name"] == "checksums"


def test_check_fails_with_exit_1_on_leakage(registered_tiny) -> None:
    arrays = make_arrays()
    arrays["test_images"][3] = arrays["train_images"][8]
    _, data_dir = registered_tiny(arrays)
    result = runner.invoke(app, ["data", "check", "--dataset", "tiny", "--data-dir", str(data_dir)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "1 test images also appear in train" in result.output
    assert "class balance" in result.output and "some checks failed" in result.output


def test_explore_writes_figures(registered_tiny, tmp_path: Path) -> None:
    _, data_dir = registered_tiny()
    out = tmp_path / "explore"
    result = runner.invoke(app, ["data", "explore", "--dataset", "tiny", "--data-dir", str(data_dir),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "summary.json").exists() and str(out / "pca.png") in result.output


def test_unknown_dataset(registered_tiny) -> None:
    line = _one_line_error(runner.invoke(app, ["data", "check", "--dataset", "nope"]))
    assert "unknown dataset 'nope'" in line and "mnist" in line


def test_bad_option() -> None:
    line = _one_line_error(runner.invoke(app, ["data", "check", "--bogus"]))
    assert "--bogus" in line


def test_missing_required_option() -> None:
    assert "--out" in _one_line_error(runner.invoke(app, ["data", "explore"]))


def test_missing_data(registered_tiny, tmp_path: Path) -> None:
    registered_tiny()
    line = _one_line_error(runner.invoke(app, ["data", "fetch", "--dataset", "tiny", "--offline"]))
    assert "not found" in line and "downloads are off" in line


def test_bad_file(registered_tiny) -> None:
    _, data_dir = registered_tiny()
    target = data_dir / "tiny" / "t10k-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-20])
    line = _one_line_error(runner.invoke(app, ["data", "check", "--dataset", "tiny", "--data-dir", str(data_dir)]))
    assert "t10k-images-idx3-ubyte.gz: corrupt gzip" in line


def test_checksum_mismatch(registered_tiny) -> None:
    _, data_dir = registered_tiny()
    write_dataset(data_dir / "tiny", make_arrays(seed=9))
    line = _one_line_error(runner.invoke(app, ["data", "fetch", "--dataset", "tiny", "--data-dir", str(data_dir)]))
    assert "checksum mismatch: expected sha256" in line


def test_installed_entry_point_prints_one_line() -> None:
    exe = Path(sys.executable).parent / "digitlab"
    proc = subprocess.run([str(exe), "data", "check", "--dataset", "nope"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown dataset" in proc.stderr
