"""core.rundir: no command replaces a run's own files, and one process at a time trains in a run."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from digitlab.cli import app
from digitlab.core.rundir import OutputError, RunDir, RunLockedError, check_output, enclosing_run

runner = CliRunner()


def _fake_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, text in (("config.yaml", "seed: 0\n"), ("model.json", "{}\n"), ("model.safetensors", "weights")):
        (folder / name).write_text(text)
    return folder


def test_inside_a_run_only_export_and_eval_take_outputs(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run")
    for own in ("model.safetensors", "model.json", "config.yaml", "checkpoint/state.pt", "new.csv", "."):
        for force in (False, True):
            with pytest.raises(OutputError, match="inside the run directory"):
                check_output(run / own, force=force)
    with pytest.raises(OutputError, match="inside the run directory"):  # no way round it through ..
        check_output(run / "export" / ".." / "model.json", force=True)
    check_output(run / "export" / "digits.onnx")
    check_output(run / "eval" / "predictions.csv")
    assert enclosing_run(run / "export" / "hub" / "model.onnx") == run.resolve()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "config.yaml").write_text("a project's own config\n")  # not a run: no run files
    assert enclosing_run(tmp_path / "elsewhere" / "out.csv") is None


def test_an_existing_file_is_replaced_only_with_force(tmp_path: Path) -> None:
    old = tmp_path / "old.csv"
    old.write_text("mine")
    with pytest.raises(OutputError, match=r"already exists \(--force replaces it\)"):
        check_output(old)
    check_output(old, force=True)
    check_output(tmp_path / "new.csv")


def test_predict_csv_never_replaces_a_run_file_even_with_force(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run")
    image = tmp_path / "digit.png"
    image.write_bytes(b"not read: the target is refused first")
    for extra in ([], ["--force"]):
        result = runner.invoke(app, ["predict", str(run), str(image), "--csv", str(run / "model.json"), *extra])
        assert result.exit_code == 2, result.output
        assert "inside the run directory" in result.stderr and result.stderr.count("\n") == 1
    assert (run / "model.json").read_text() == "{}\n"


def test_export_out_never_replaces_a_run_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from digitlab.export import onnx as onnx_module

    run = _fake_run(tmp_path / "run")
    monkeypatch.setattr(onnx_module, "_run_config", lambda run: None)
    monkeypatch.setattr(onnx_module, "load_torch_predictor", lambda path: None)
    for extra in ([], ["--force"]):
        result = runner.invoke(app, ["export", str(run), "--out", str(run / "model.safetensors"), *extra])
        assert result.exit_code == 2, result.output
        assert "inside the run directory" in result.stderr and result.stderr.count("\n") == 1
    assert (run / "model.safetensors").read_text() == "weights"
    mine = tmp_path / "mine.onnx"
    mine.write_text("an older export")
    result = runner.invoke(app, ["export", str(run), "--out", str(mine)])
    assert result.exit_code == 2 and "already exists (--force replaces it)" in result.stderr
    assert mine.read_text() == "an older export"


HOLD = textwrap.dedent("""
    import sys, time
    from digitlab.core.rundir import RunDir
    with RunDir(sys.argv[1]).locked():
        print("held", flush=True)
        time.sleep(60)
""")


def test_a_run_is_locked_while_a_process_trains_in_it(tmp_path: Path) -> None:
    run = RunDir(_fake_run(tmp_path / "run"))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(RunLockedError, match=rf"another process is training in this run \(pid {holder.pid}\)"), \
                run.locked():
            pass
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with run.locked():  # a killed holder's lock is free again
        assert (run.path / RunDir.HOLDER).read_text().split()[0] == str(os.getpid())
    assert not (run.path / RunDir.HOLDER).exists()


@pytest.mark.parametrize("command", [
    ["data", "explore", "--out", "{run}"],
    ["data", "explore", "--out", "{run}/checkpoint"],
    ["compare", "{run}", "--out", "{run}"],
    ["tune", "--out", "{run}"],
    ["train", "--out", "{run}"],
    ["predict", "{run}", "{image}", "--save-prepared", "{run}"],
])
def test_folder_outputs_are_refused_inside_a_run(tmp_path: Path, command: list[str]) -> None:
    run = _fake_run(tmp_path / "run")
    image = tmp_path / "digit.png"
    image.write_bytes(b"not read: the folder is refused first")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = runner.invoke(app, [a.format(run=run, image=image) for a in command])
    assert result.exit_code == 2, result.output
    assert "inside the run directory" in result.stderr and result.stderr.count("\n") == 1
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_folder_outputs_under_export_or_eval_are_allowed(tmp_path: Path) -> None:
    from digitlab.core.rundir import check_output_dir

    run = _fake_run(tmp_path / "run")
    check_output_dir(run / "eval" / "explore")
    check_output_dir(run / "export")
    check_output_dir(tmp_path / "elsewhere")
    with pytest.raises(OutputError, match="inside the run directory"):
        check_output_dir(run / "export" / ".." / "checkpoint")


def test_predict_box_is_checked_before_the_model_loads(tmp_path: Path) -> None:
    image = tmp_path / "digit.png"
    image.write_bytes(b"not read: the box is refused first")
    run = _fake_run(tmp_path / "run")  # weights that would not load: the box's error comes first
    result = runner.invoke(app, ["predict", str(run), str(image), "--box", "1,2,3"])
    assert result.exit_code == 2, result.output
    assert "four whole numbers" in result.stderr and result.stderr.count("\n") == 1
