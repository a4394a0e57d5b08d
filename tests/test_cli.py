"""The digitlab command through Typer's runner: help, version, and one-line errors with exit 2."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import typer
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


def test_data_path_prints_the_verified_folder(registered_tiny, monkeypatch) -> None:
    _, data_dir = registered_tiny()
    monkeypatch.setenv("DIGITLAB_DATA_DIR", str(data_dir))
    result = runner.invoke(app, ["data", "path", "--dataset", "tiny"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{data_dir / 'tiny'}\n"  # its parent serves as DIGITLAB_DATA_DIR
    monkeypatch.delenv("DIGITLAB_DATA_DIR")
    line = _one_line_error(runner.invoke(app, ["data", "path", "--dataset", "tiny"]))
    assert line.endswith("`digitlab data fetch --dataset tiny` gets them")


# --------------------------------------------------------------------------------------------
# Conventions every command keeps: flags as flags, choices as choices


def _command_paths(command, path=()) -> list[tuple[str, ...]]:
    subcommands = getattr(command, "commands", {})
    return [path] + [p for name, sub in subcommands.items() for p in _command_paths(sub, (*path, name))]


def test_bool_options_show_as_flags_in_every_help() -> None:
    paths = _command_paths(typer.main.get_command(app))
    assert ("predict",) in paths and ("data", "fetch") in paths and len(paths) > 12
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.output, path
    result = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "200"})
    assert re.search(r"--json\s+One JSON document", result.output)
    assert re.search(r"--multi\s+Each image", result.output)
    assert "<auto|torch|onnx>" in result.output and "<auto|dark-on-light|light-on-dark>" in result.output


@pytest.mark.parametrize("args, option, value", [
    (["predict", "{tmp}", "{tmp}", "--backend", "tpu"], "--backend", "tpu"),
    (["predict", "{tmp}", "{tmp}", "--polarity", "up"], "--polarity", "up"),
    (["export", "{tmp}", "--format", "zip"], "--format", "zip"),
    (["export", "{tmp}", "--quantize", "int4"], "--quantize", "int4"),
    (["tune", "--sampler", "bayes"], "--sampler", "bayes"),
    (["tune", "--pruner", "asha"], "--pruner", "asha"),
    (["compare", "{tmp}", "--device", "tpu"], "--device", "tpu"),
])
def test_choices_are_refused_by_the_parser(args: list[str], option: str, value: str, tmp_path: Path) -> None:
    line = _one_line_error(runner.invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in args]))
    assert f"Invalid value for '{option}" in line and f"'{value}' is not one of" in line
    assert "Value error" not in line


def test_choices_are_the_librarys() -> None:
    from digitlab import cli
    from digitlab.export.onnx import QUANTIZE_CHOICES
    from digitlab.inference.prepare import POLARITIES
    from digitlab.tuning.study import PRUNERS, SAMPLERS

    assert get_args(cli.Polarity) == POLARITIES and get_args(cli.Quantize) == QUANTIZE_CHOICES
    assert get_args(cli.Sampler) == SAMPLERS and get_args(cli.Pruner) == PRUNERS


# --------------------------------------------------------------------------------------------
# train --list-keys and misspelt keys (no data needed)


def test_list_keys_comes_from_the_configs() -> None:
    result = runner.invoke(app, ["train", "--recipe", "default", "--list-keys"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = {cells[0]: cells[1:] for line in result.stdout.splitlines()
            if len(cells := [c.strip() for c in line.split("│")[1:-1]]) == 4}
    assert rows["train.epochs"][:2] == ["int", "5"]
    assert rows["optim.name"][:2] == ["sgd|adam|adamw|adadelta", "adam"]
    assert rows["train.grad_clip"][:2] == ["float | null", "null"]
    assert rows["model.args.blocks.N.filters"][:2] == ["int", "(required)"]  # the recipe's model: a CNN
    assert "model.args" not in rows
    result = runner.invoke(app, ["train", "--set", "model.name=mlp", "--list-keys"], env={"COLUMNS": "250"})
    assert "model.args.hidden_sizes" in result.stdout and "model.args.blocks" not in result.stdout


@pytest.mark.parametrize("key, nearest", [("train.epoch", "train.epochs"), ("optim.lrr", "optim.lr"),
                                          ("trian.epochs", "train"), ("model.args.dense_dropot", "dense_dropout")])
def test_a_misspelt_key_suggests_the_nearest(key: str, nearest: str, tmp_path: Path) -> None:
    line = _one_line_error(runner.invoke(app, ["train", "--set", f"{key}=3", "--out", str(tmp_path)]))
    assert line.endswith(f"(did you mean {nearest}?)")
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# predict: output, CSV, summary and exit status (a tiny MLP on synthetic digits: the answers do not matter)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from digitlab.training import config_from_recipe, train_run

    root = tmp_path_factory.mktemp("tiny-run")
    spec = write_dataset(root / "data" / "tiny", make_arrays())
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(datasets._REGISTRY, "tiny", spec)
        mp.setenv("DIGITLAB_CACHE_DIR", str(root / "cache"))
        cfg = config_from_recipe("mlp-256-128", ["data.dataset=tiny", f"data.data_dir={root / 'data'}",
                                                 "data.n_val=10", "train.epochs=1", "train.batch_size=10",
                                                 "model.args.hidden_sizes=[8]"])
        return Path(train_run(cfg, out_root=root / "runs", show_progress=False).run_dir)


def _png(path: Path, ink: bool = True) -> Path:
    from PIL import Image, ImageDraw

    im = Image.new("L", (64, 64), 255)
    if ink:
        ImageDraw.Draw(im).line([(32, 10), (32, 54)], fill=0, width=6)  # a 1, dark on light
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    _png(folder / "one.png")
    _png(folder / "blank.png", ink=False)
    return folder


def _summary(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_predict_writes_a_csv_only_when_asked(tiny_run: Path, images: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["predict", str(tiny_run), str(images)])
    assert result.exit_code == 0, result.output
    assert not list(tmp_path.glob("*.csv"))
    assert len(result.stdout.splitlines()) == 2 and f"{images / 'blank.png'}: no digit found" in result.stdout
    assert re.fullmatch(r"2 images: \d read, \d rejected \(1 with no digit found\), 0 unreadable", _summary(result))


def test_predict_never_overwrites_a_csv_without_force(tiny_run: Path, images: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("keep me\n")
    args = ["predict", str(tiny_run), str(images), "--csv", str(target)]
    line = _one_line_error(runner.invoke(app, args))
    assert line == f"digitlab: error: {target}: already exists (--force replaces it)"
    assert target.read_text() == "keep me\n"
    result = runner.invoke(app, [*args, "--force"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(target.open()))
    assert [Path(r["source"]).name for r in rows] == ["blank.png", "one.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["images", "out.csv"]  # no temp file left
    fresh = tmp_path / "new.csv"
    assert runner.invoke(app, ["predict", str(tiny_run), str(images), "--csv", str(fresh)]).exit_code == 0
    assert fresh.read_text() == target.read_text()


def test_predict_csv_with_multi_and_an_unreadable_file(tiny_run: Path, images: Path, tmp_path: Path) -> None:
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    target = tmp_path / "strings.csv"
    result = runner.invoke(app, ["predict", str(tiny_run), str(images), "--multi", "--csv", str(target)])
    assert result.exit_code == 2, result.output  # an unreadable file; the others are still read
    rows = {Path(r["source"]).name: r for r in csv.DictReader(target.open())}
    assert list(next(csv.reader(target.open()))) == ["source", "text", "value", "confidence", "found", "reason",
                                                     "reader", "digits", "error"]
    assert set(rows) == {"blank.png", "broken.png", "one.png"}
    assert rows["broken.png"]["error"] and not rows["broken.png"]["text"]
    assert rows["blank.png"]["found"] == "False" and rows["blank.png"]["text"] == ""
    one = rows["one.png"]
    assert one["found"] == "True" and len(one["text"]) == len(one["digits"].split()) >= 1
    assert one["reader"] == "segmentation" and one["value"] == one["text"].replace("?", "")
    assert re.fullmatch(r"3 images: \d read, \d rejected \(1 with no digit found\), 1 unreadable", _summary(result))


def test_predict_exit_status_with_an_unreadable_file(tiny_run: Path, images: Path) -> None:
    (images / "broken.png").write_bytes(b"not an image")
    result = runner.invoke(app, ["predict", str(tiny_run), str(images), "--json"])
    assert result.exit_code == 2
    assert len(json.loads(result.stdout)["predictions"]) == 3
    assert _summary(result).endswith(", 1 unreadable")


def test_ctrl_c_in_any_command_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("digitlab.cli.fetch_dataset", interrupted)
    result = runner.invoke(app, ["data", "fetch"])
    assert result.exit_code == 130
    assert result.output.strip() == "digitlab: error: interrupted"
