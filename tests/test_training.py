"""The training engine on a few hundred real MNIST images: run directory, determinism, resume, CLI; and the
configs, recipes and schedules, which need no data."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from digitlab.cli import app
from digitlab.core.config import ConfigError, RunConfig, config_keys, dump_config, resolve_config
from digitlab.models.registry import ModelError, get_entry, make_config
from digitlab.training import config_from_recipe, list_recipes, resume_run, train_run
from digitlab.training.optim import lr_factor
from digitlab.training.recipes import settable_keys
from digitlab.training.trainer import EpochEnd, TrainingInterrupted

TINY = ["data.train_subset=400", "data.n_val=200", "train.batch_size=50", "train.eval_batch_size=500"]
SMALL_CNN = ["model.name=cnn", "model.args={blocks: [{filters: 8, batch_norm: true}], dense: [16]}"]


def needs_mnist(test):
    """Real MNIST must be there (a failure under CI=true, a skip elsewhere)."""
    return pytest.mark.mnist(pytest.mark.usefixtures("mnist_dataset")(test))


def _weights(run_dir: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "model.safetensors"))


def test_every_shipped_recipe_resolves() -> None:
    names = {n for n, _ in list_recipes()}
    assert names >= {"mlp-256-128", "mlp-128-64-sgd", "rnn-simple", "cnn-32-64", "lenet5", "svm", "knn",
                     "random-forest", "pytorch-tutorial", "fast", "default", "lstm", "best"}
    for name in names:
        cfg = config_from_recipe(name)
        assert cfg.recipe == name and cfg.description


def test_config_round_trips_and_overrides_win() -> None:
    cfg = config_from_recipe("pytorch-tutorial", ["train.epochs=3", "optim.lr=0.5", "model.args.dense=[64]"])
    assert (cfg.train.epochs, cfg.optim.lr, cfg.model.args["dense"]) == (3, 0.5, [64])
    assert cfg.schedule.name == "step" and cfg.optim.name == "adadelta"
    again = RunConfig.model_validate(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_bad_keys_are_one_line_errors() -> None:
    for bad in (["train.epohcs=3"], ["optim.name=rmsprop"], ["nokey"], ["train.epochs.x=1"]):
        with pytest.raises(ConfigError) as e:
            resolve_config({}, bad)
        assert "\n" not in str(e.value)


NONSENSE = [("train.epochs=-1", "train.epochs", "greater than or equal to 1"),
            ("train.epochs=0", "train.epochs", "greater than or equal to 1"),
            ("data.train_subset=-5", "data.train_subset", "greater than or equal to 1"),
            ("train.batch_size=0", "train.batch_size", "greater than or equal to 1"),
            ("train.eval_batch_size=0", "train.eval_batch_size", "greater than or equal to 1"),
            ("data.n_val=-1", "data.n_val", "greater than or equal to 0"),
            ("optim.lr=.nan", "optim.lr", "finite"),
            ("optim.lr=.inf", "optim.lr", "finite"),
            ("optim.lr=0", "optim.lr", "greater than 0"),
            ("optim.betas=[0.9, 1.5]", "optim.betas.1", "less than 1"),
            ("augment.p=2", "augment.p", "less than or equal to 1"),
            ("train.label_smoothing=-0.1", "train.label_smoothing", "greater than or equal to 0")]


@pytest.mark.parametrize("expr, key, why", NONSENSE)
def test_nonsense_values_are_one_line_errors(expr: str, key: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        resolve_config({}, [expr])
    assert str(e.value).startswith(f"bad config: {key}: ") and why in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("expr", ["train.epochs=-1", "data.train_subset=-5", "train.batch_size=0", "optim.lr=.nan"])
def test_train_refuses_nonsense_before_loading_data(expr: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # no data where the run would look: an error from loading would name the data, not the key
    monkeypatch.setenv("DIGITLAB_DATA_DIR", str(tmp_path / "no-data"))
    result = CliRunner().invoke(app, ["train", "--set", expr, "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"digitlab: error: bad config: {expr.partition('=')[0]}: "), \
        result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@needs_mnist
@pytest.mark.parametrize("expr, why", [("model.args.dense=[100000000]", "dense.0: Input should be less than"),
                                       ("model.args.blocks.0.filters=1e6", "blocks.0.filters: Input should be"),
                                       ("model.args.blocks.0.filters=1.0e+6", "blocks.0.filters: Input should be less"),
                                       ("model.args.blocks.0.filters=-5", "greater than or equal to 1"),
                                       ("model.args.dense=[60000, 60000]", "parameter budget")])
def test_train_refuses_an_oversized_model_before_allocating_it(expr: str, why: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--set", expr, *(a for s in TINY for a in ("--set", s)),
                                      "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("digitlab: error: ")]
    assert len(lines) == 1 and "model 'cnn'" in lines[0] and why in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_misspelt_key_names_the_nearest_one() -> None:
    with pytest.raises(ConfigError, match=r"^bad config: train\.epoch: Extra inputs are not permitted \(did you "
                                          r"mean train\.epochs\?\)$"):
        resolve_config({}, ["train.epoch=3"])
    with pytest.raises(ConfigError) as e:
        resolve_config({}, ["train.zzzzzz=3"])  # nothing close: no guess
    assert "did you mean" not in str(e.value)
    with pytest.raises(ModelError, match=r"blocks\.1\.filtres: .* \(did you mean blocks\.1\.filters\?\)"):
        make_config("cnn", blocks=[{"filters": 8}, {"filters": 8, "filtres": 16}])


def test_settable_keys_follow_the_model() -> None:
    keys = {k.key: k for k in settable_keys(config_from_recipe("mlp-256-128"))}
    assert keys["model.args.hidden_sizes"].type == "list[int]" and "model.args" not in keys
    assert (keys["train.epochs"].type, keys["train.epochs"].default) == ("int", "5")
    assert keys["augment.rotation"].description == "degrees, +-"
    assert set(keys) == {k.key for k in config_keys() if k.key != "model.args"} | {
        f"model.args.{k.key}" for k in config_keys(get_entry("mlp").config_cls)}


def test_schedules_are_functions_of_the_step() -> None:
    cfg = config_from_recipe("fast").schedule
    values = [lr_factor(cfg, s, 10, 2) for s in range(20)]
    assert values[0] < 0.1 and max(values) == pytest.approx(1.0, abs=0.06) and values[-1] < 0.05
    step = config_from_recipe("pytorch-tutorial").schedule
    assert [lr_factor(step, s, 10, 3) for s in (0, 9, 10, 25)] == pytest.approx([1, 1, 0.7, 0.49])


@needs_mnist
def test_tiny_run_writes_the_run_directory(tmp_path: Path) -> None:
    cfg = config_from_recipe("mlp-256-128", [*TINY, "train.epochs=2"])
    result = train_run(cfg, out_root=tmp_path, show_progress=False)
    run = Path(result.run_dir)
    assert run.parent == tmp_path and "mlp" in run.name
    for name in ("config.yaml", "model.safetensors", "model.json", "metrics.jsonl", "results.json",
                 "checkpoint/state.pt"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"} <= set(rows[0])
    meta = json.loads((run / "model.json").read_text())
    assert meta["name"] == "mlp" and meta["args"]["hidden_sizes"] == [256, 128]
    assert meta["preprocess"]["mean"] == pytest.approx(0.13, abs=0.02)
    assert resolve_config(yaml.safe_load((run / "config.yaml").read_text())) == cfg
    assert result.test_acc > 0.6 and result.n_test == 10000
    assert result.best_val_acc == max(r["val_acc"] for r in rows)


@needs_mnist
def test_same_seed_same_metrics(tmp_path: Path) -> None:
    cfg = config_from_recipe("default", [*TINY, *SMALL_CNN, "train.epochs=2"])
    a = train_run(cfg, out_root=tmp_path / "a", show_progress=False)
    b = train_run(cfg, out_root=tmp_path / "b", show_progress=False)
    rows = [[(r["train_loss"], r["val_acc"]) for r in map(json.loads, (Path(x.run_dir) / "metrics.jsonl")
             .read_text().splitlines())] for x in (a, b)]
    assert rows[0] == rows[1]
    wa, wb = _weights(a.run_dir), _weights(b.run_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train_run(cfg.model_copy(update={"seed": 1}), out_root=tmp_path / "c", show_progress=False)
    assert not all(torch.equal(wa[k], _weights(c.run_dir)[k]) for k in wa)


class _Killed(Exception):
    pass


@needs_mnist
def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path: Path) -> None:
    # Augmentation, EMA, a OneCycle schedule and dropout all draw on state that must be restored.
    cfg = config_from_recipe("default", [*TINY, *SMALL_CNN, "train.epochs=3", "model.args.dense_dropout=0.3"])
    whole = train_run(cfg, out_root=tmp_path / "whole", show_progress=False)

    def kill_after_first_epoch(end: EpochEnd) -> None:
        if end.epoch == 1:
            raise _Killed

    with pytest.raises(_Killed):
        train_run(cfg, out_root=tmp_path / "cut", show_progress=False, callbacks=[kill_after_first_epoch])
    (cut_dir,) = (tmp_path / "cut").iterdir()
    assert not (cut_dir / "model.safetensors").exists()
    resumed = resume_run(cut_dir, show_progress=False)
    assert resumed.run_dir == str(cut_dir) and resumed.epochs_run == 3
    w1, w2 = _weights(whole.run_dir), _weights(resumed.run_dir)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    metrics = (cut_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["epoch"] for m in metrics] == [1, 2, 3]
    assert resumed.test_acc == whole.test_acc


@needs_mnist
def test_classical_run(tmp_path: Path) -> None:
    cfg = config_from_recipe("knn", TINY)
    result = train_run(cfg, out_root=tmp_path, show_progress=False)
    run = Path(result.run_dir)
    assert (run / "model.skops").is_file() and json.loads((run / "model.json").read_text())["kind"] == "classical"
    assert 0.6 < result.test_acc <= 1.0


runner = CliRunner()


@needs_mnist
def test_cli_train_prints_run_and_accuracies(tmp_path: Path) -> None:
    args = ["train", "--recipe", "fast", "--out", str(tmp_path), "--quiet", "--seed", "3"]
    for s in [*TINY, "train.epochs=1"]:
        args += ["--set", s]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "run directory:" in result.stdout and "test accuracy:" in result.stdout
    assert "best validation accuracy:" in result.stdout
    (run,) = tmp_path.iterdir()
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 3


@pytest.mark.parametrize("args, needle", [
    (["train", "--recipe", "nope"], "unknown recipe 'nope'"),
    (["train", "--set", "train.epohcs=3"], "train.epohcs"),
    (["train", "--set", "model.args.bogus=1"], "bogus"),
    (["train", "--set", "model.name=transformer"], "unknown model 'transformer'"),
])
def test_cli_train_errors(args: list[str], needle: str, tmp_path: Path) -> None:
    result = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert needle in result.stderr and result.stderr.count("\n") == 1
    assert not any(tmp_path.iterdir()), "a failed start leaves no run directory behind"


def test_cli_list_recipes() -> None:
    result = runner.invoke(app, ["train", "--list-recipes"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "pytorch-tutorial" in result.stdout and "best" in result.stdout


@needs_mnist
def test_ctrl_c_says_how_to_resume(tmp_path: Path) -> None:
    cfg = config_from_recipe("fast", [*TINY, "train.epochs=2"])

    def interrupt(end: EpochEnd) -> None:
        raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match=r"interrupted after 1 finished epoch\(s\): continue with "
                                                  r"digitlab train --resume ") as e:
        train_run(cfg, out_root=tmp_path, show_progress=False, callbacks=[interrupt])
    assert e.value.exit_code == 130
    (run,) = tmp_path.iterdir()
    assert str(run) in str(e.value)
    assert resume_run(run, show_progress=False).epochs_run == 2
