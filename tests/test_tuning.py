"""Tuning: search spaces, a 3-trial study on a tiny subset, the test split never read, two workers on
one study, resume, and one-line errors."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from typer.testing import CliRunner

from digitlab.cli import app
from digitlab.data import loading
from digitlab.training import config_from_recipe
from digitlab.tuning.space import TuningError, list_spaces, load_space, override
from digitlab.tuning.study import TuneOptions, tune

TINY = ["data.train_subset=300", "data.n_val=200", "train.batch_size=50", "train.eval_batch_size=500",
        "train.epochs=2", "model.args.blocks=[{filters: 8}, {filters: 8}]"]
runner = CliRunner()


def test_shipped_spaces_load_and_fit_their_recipes() -> None:
    names = dict(list_spaces())
    assert {"seed-grid", "best-wide"} <= set(names)
    grid = load_space("seed-grid")
    assert grid.recipe == "cnn-32-64" and grid.grid_size() == 27
    assert grid.grid() == {"model.args.blocks.0.filters": [32, 64, 128], "model.args.dense.0": [32, 64, 128],
                           "optim.lr": [0.01, 0.001, 0.0001]}
    for name in names:
        space = load_space(name)
        trial = optuna.create_study().ask()
        cfg = config_from_recipe(space.recipe, space.suggest(trial))  # every key is a real recipe key
        assert cfg.recipe == space.recipe


@pytest.mark.parametrize(("text", "needle"), [
    ("params: {optim.lr: {type: log-float, low: 0, high: 1}}", "low > 0"),
    ("params: {optim.lr: {type: gaussian}}", "optim.lr"),
    ("params: {}", "params"),
    ("[1, 2]", "mapping"),
    ("params: {optim.lr: {type: float, low: 1, high: 0}}", "low 1.0 > high 0.0"),
])
def test_bad_spaces_are_one_line_errors(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(TuningError, match=needle) as info:
        load_space(path)
    assert "\n" not in str(info.value)
    with pytest.raises(TuningError, match="unknown search space"):
        load_space("no-such-space")


def test_a_float_without_step_cannot_be_a_grid(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("recipe: fast\nparams: {optim.lr: {type: float, low: 0.01, high: 0.1}}")
    with pytest.raises(TuningError, match="step"):
        load_space(path).grid()


class _Unreadable:
    """Stands in for the test split: any use of it fails the test."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the test split was read during tuning ({name})")

    def __len__(self) -> int:
        raise AssertionError("the test split was read during tuning (len)")

    def __getitem__(self, key):
        raise AssertionError("the test split was read during tuning (indexing)")


@pytest.mark.mnist
def test_three_trial_study_never_reads_the_test_split(mnist_dataset, tmp_path: Path, monkeypatch) -> None:
    real = loading.load_dataset

    def without_test(*args, **kwargs):
        ds = real(*args, **kwargs)
        object.__setattr__(ds, "test_images", _Unreadable())
        object.__setattr__(ds, "test_labels", _Unreadable())
        return ds

    monkeypatch.setattr("digitlab.training.trainer.load_dataset", without_test)
    summary = tune(TuneOptions(space="seed-grid", trials=3, sampler="grid", pruner="none", overrides=TINY,
                               out_root=str(tmp_path)))
    folder = Path(summary["dir"])
    assert summary["n_trials"] == 3 and summary["states"]["complete"] == 3
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == [0, 1, 2] and all(r["state"] == "complete" for r in rows)
    assert len({(r["model.args.blocks.0.filters"], r["model.args.dense.0"], r["optim.lr"]) for r in rows}) == 3
    for r in rows:  # each trial is a child run directory with per-epoch validation, and no test result
        run = Path(r["run_dir"])
        assert run.parent == folder / "trials" and len((run / "metrics.jsonl").read_text().splitlines()) == 2
        assert json.loads((run / "results.json").read_text())["test_acc"] is None
    assert {"optimization_history.png", "slice.png", "parallel_coordinate.png"} <= {p.name for p in folder.iterdir()}
    html = (folder / "summary.html").read_text()
    assert "Best trial" in html and "http://" not in html and "https://" not in html
    best = summary["best"]
    assert best["value"] == max(float(r["val_acc"]) for r in rows)
    recipe = yaml.safe_load((folder / "best-recipe.yaml").read_text())
    assert recipe["model"]["args"]["dense"] == [best["params"]["model.args.dense.0"]]
    assert config_from_recipe(folder / "best-recipe.yaml").optim.lr == best["params"]["optim.lr"]


@pytest.mark.mnist
def test_two_processes_share_one_study_and_resume_continues(mnist_dataset, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "digitlab.cli", "tune", "--space", "seed-grid", "--sampler", "random",
            "--pruner", "none", "--trials", "4", "--out", str(tmp_path), "--study", "shared"]
    for o in TINY:
        args += ["--set", o]
    env = {**os.environ}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    storage = f"sqlite:///{tmp_path / 'tune-shared' / 'study.db'}"
    study = optuna.load_study(study_name="shared", storage=storage)
    numbers = sorted(t.number for t in study.trials)
    assert numbers == [0, 1, 2, 3], "4 trials between the two workers, none lost, none run twice"
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs["run_dir"] for t in study.trials}) == 4

    result = runner.invoke(app, ["tune", "--space", "seed-grid", "--sampler", "random", "--pruner", "none",
                                 "--trials", "5", "--out", str(tmp_path), "--study", "shared", "--resume",
                                 *[x for o in TINY for x in ("--set", o)]])
    assert result.exit_code == 0, result.output
    assert len(optuna.load_study(study_name="shared", storage=storage).trials) == 5
    assert "best recipe:" in result.stdout


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    for argv, needle in [
        (["tune", "--space", "nope", "--out", str(tmp_path)], "unknown search space"),
        (["tune", "--sampler", "anneal", "--out", str(tmp_path)], "--sampler"),
        (["tune", "--resume", "--study", "ghost", "--out", str(tmp_path)], "no study 'ghost'"),
        (["tune", "--set", "optim.nope=1", "--out", str(tmp_path)], "optim.nope"),
        (["tune", "--sampler", "grid", "--trials", "28", "--out", str(tmp_path)], "27 points"),
    ]:
        result = runner.invoke(app, argv)
        assert result.exit_code == 2, (argv, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("digitlab: error: ") and needle in lines[0], result.output


def test_list_spaces() -> None:
    result = runner.invoke(app, ["tune", "--list-spaces"])
    assert result.exit_code == 0 and "seed-grid" in result.stdout


def test_override_values_round_trip() -> None:
    assert override("train.ema_decay", None) == "train.ema_decay=null"
    assert override("optim.lr", 0.001) == "optim.lr=0.001"
    assert override("model.args.dense", [32, 64]) == "model.args.dense=[32, 64]"
    assert np.isclose(config_from_recipe("fast", [override("optim.lr", 1e-4)]).optim.lr, 1e-4)


@pytest.mark.mnist
def test_ctrl_c_finishes_the_running_trial_and_resume_goes_on(mnist_dataset, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "digitlab.cli", "tune", "--space", "seed-grid", "--sampler", "grid",
            "--pruner", "none", "--trials", "3", "--out", str(tmp_path), "--study", "cut",
            *[x for o in TINY for x in ("--set", o)]]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trials = tmp_path / "tune-cut" / "trials"
    deadline = time.monotonic() + 120
    while not (trials.exists() and any(trials.iterdir())) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the study ended before a trial started"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Ctrl-C" in err and "--resume" in out
    storage = f"sqlite:///{tmp_path / 'tune-cut' / 'study.db'}"
    first = optuna.load_study(study_name="cut", storage=storage).trials
    assert 1 <= len(first) < 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in first)
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    final = optuna.load_study(study_name="cut", storage=storage).trials
    assert len(final) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in final)
