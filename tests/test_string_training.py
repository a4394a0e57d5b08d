"""The one training loop on a string model (kind ``sequence``): CTC on synthetic strings, a run directory like
every other, exact resume, whole-string scoring, and fine-tuning on a user's labelled strings (``--strings``)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import assert_one_line_error
from digitlab.cli import app
from digitlab.core.config import ConfigError
from digitlab.data.string_batches import StringTargets
from digitlab.models.ctc import text_to_targets
from digitlab.training import config_from_recipe, resume_run, train_run
from digitlab.training.sequence import StringScores, exact_matches, fit_min_confidence
from digitlab.training.trainer import EpochEnd

runner = CliRunner()
# A tiny CRNN on a few strings: seconds per epoch.
TINY = ["model.args.channels=[8,16,16,16]", "model.args.hidden_size=16", "model.args.num_layers=1",
        "strings.per_epoch=96", "strings.val=48", "strings.test=48", "train.batch_size=32", "data.n_val=500",
        "data.train_subset=2000", "data.synthetic_styles=0", "train.epochs=2"]


class _Killed(Exception):
    pass


def _one_hot_log_probs(paths: list[list[int]], n_classes: int = 15) -> torch.Tensor:
    lp = torch.full((len(paths), max(map(len, paths)), n_classes), -20.0)
    for i, path in enumerate(paths):
        for t, k in enumerate(path):
            lp[i, t, k] = 0.0
    return lp


def test_exact_matches_collapses_repeats_and_blanks_like_greedy_decoding() -> None:
    # classes: 0 blank, k + 1 is ALPHABET[k]: "1" is 2, "2" is 3, "." is 11
    lp = _one_hot_log_probs([[2, 2, 0, 2, 3, 0], [2, 0, 11, 3, 3, 3], [2, 3, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    targets, lengths = text_to_targets(["112", "1.2", "12", ""])
    y = StringTargets(targets, lengths, torch.tensor([24, 24, 8, 24]))  # the third string spans 2 frames
    assert int(exact_matches(lp, y)) == 4
    wrong, wrong_lengths = text_to_targets(["12", "1.22", "1", "0"])
    assert int(exact_matches(lp, StringTargets(wrong, wrong_lengths, y.widths))) == 0


def test_the_threshold_keeps_the_confident_strings_that_are_read_right() -> None:
    scores = StringScores(right=np.array([True] * 99 + [False] * 5 + [True]), confidence=np.r_[np.linspace(
        0.99, 0.9, 99), [0.5, 0.45, 0.4, 0.35, 0.3], 0.2], loss=np.zeros(105))
    assert fit_min_confidence(scores, kept_accuracy=0.995) == pytest.approx(0.9)  # the 99 right ones, no wrong one
    assert fit_min_confidence(scores, kept_accuracy=0.99) == pytest.approx(0.5)  # 99 of 100 kept are right
    assert fit_min_confidence(StringScores(np.ones(5, bool), np.full(5, 0.5), np.zeros(5))) == 0.0
    # a threshold keeps every string of its confidence: 98 of 100 right at 0.9 cannot be cut at 0.9
    tied = StringScores(np.r_[np.ones(98, bool), np.zeros(2, bool)], np.full(100, 0.9), np.zeros(100))
    assert fit_min_confidence(tied) > 0.9
    assert fit_min_confidence(StringScores(np.zeros(0, bool), np.zeros(0), np.zeros(0))) is None


def test_a_string_run_trains_writes_its_run_and_resumes_exactly(mnist_dataset, tmp_path: Path) -> None:
    cfg = config_from_recipe("strings", TINY)
    whole = train_run(cfg, out_root=tmp_path / "whole", show_progress=False)
    run = Path(whole.run_dir)
    info = json.loads((run / "model.json").read_text())
    assert info["kind"] == "sequence" and info["name"] == "crnn"
    assert info["class_names"][0] == "<blank>" and "".join(info["class_names"][1:]) == "0123456789.,-/"
    assert info["args"]["input_size"] == [32, 128]
    reading = json.loads((run / "reading.json").read_text())
    assert 0.0 <= reading["min_confidence"] <= 1.0 and reading["n_val"] == 48
    assert whole.n_test == 48 and 0.0 <= whole.test_acc <= 1.0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and all(np.isfinite(m["train_loss"]) for m in metrics)

    def kill_after_first_epoch(end: EpochEnd) -> None:
        if end.epoch == 1:
            raise _Killed

    with pytest.raises(_Killed):
        train_run(cfg, out_root=tmp_path / "cut", show_progress=False, callbacks=[kill_after_first_epoch])
    (cut,) = (tmp_path / "cut").iterdir()
    resumed = resume_run(cut, show_progress=False)
    w1, w2 = load_file(str(run / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert resumed.test_acc == whole.test_acc


def test_a_string_model_learns_from_ctc(mnist_dataset, tmp_path: Path) -> None:
    # The loss falls: the loop feeds CTC the right targets and frame lengths.
    cfg = config_from_recipe("strings", [*TINY, "train.epochs=4", "strings.per_epoch=256", "optim.lr=0.005"])
    result = train_run(cfg, out_root=tmp_path, show_progress=False, evaluate_test=False)
    losses = [json.loads(line)["train_loss"] for line in (Path(result.run_dir) / "metrics.jsonl").read_text()
              .splitlines()]
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("bad, why", [("augment.rotation=5", "augment"), ("strings.val=0", "strings.val"),
                                      ("model.args.input_size=[32,64]", "strings.height"),
                                      ("train.outlier_exposure=0.5", "outlier_exposure"),
                                      ("train.label_smoothing=0.1", "label_smoothing")])
def test_digit_only_options_are_refused_for_a_string_model(bad: str, why: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=why):
        train_run(config_from_recipe("strings", [*TINY, bad]), out_root=tmp_path, show_progress=False)
    assert not any(tmp_path.iterdir())  # refused before any run directory


@pytest.fixture(scope="module")
def string_run(mnist_dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = config_from_recipe("strings", [*TINY, "train.epochs=1"])
    return Path(train_run(cfg, out_root=tmp_path_factory.mktemp("strings"), show_progress=False,
                          evaluate_test=False).run_dir)


@pytest.fixture(scope="module")
def labelled_strings(mnist_dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 synthetic strings of test digits as a user's scans: dark ink on white, enlarged 2x, with labels.tsv."""
    from digitlab.data.synth_strings import StringOptions, synthetic_strings

    folder = tmp_path_factory.mktemp("mine") / "strings"
    folder.mkdir()
    batch, widths, _, _, texts = synthetic_strings(mnist_dataset.test_images, mnist_dataset.test_labels, 30, seed=3,
                                                   options=StringOptions.separated())
    rows = []
    for i, (line, w, text) in enumerate(zip(batch[:, 0].numpy(), widths.tolist(), texts, strict=True)):
        image = Image.fromarray((255 - line[:, :w] * 255).astype(np.uint8))
        image.resize((2 * w, 64), Image.BILINEAR).save(folder / f"{i:03d}.png")
        rows.append(f"{i:03d}.png\t{text}")
    (folder / "labels.tsv").write_text("\n".join(rows) + "\n")
    return folder


def test_finetune_on_labelled_strings_writes_a_run_that_records_its_parent(string_run, labelled_strings,
                                                                          tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--init", str(string_run), "--strings", str(labelled_strings), "--out",
                                 str(tmp_path / "runs"), "--quiet", "--set", "train.epochs=1",
                                 "--set", "strings.per_epoch=64"])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["finetune"]["strings"] == str(labelled_strings.resolve()) and cfg["finetune"]["n_strings"] == 30
    assert cfg["finetune"]["images"] is None
    assert cfg["model"] == yaml.safe_load((string_run / "config.yaml").read_text())["model"]
    assert (run / "user_strings.safetensors").is_file() and (run / "reading.json").is_file()
    info = json.loads((run / "model.json").read_text())
    assert info["kind"] == "sequence" and info["finetuned_from"]["strings"] == str(labelled_strings.resolve())
    assert resume_run(run, show_progress=False).epochs_run == 1  # a finished run resumes from its own user strings


def test_finetune_refuses_the_wrong_kind_of_folder_in_one_line(string_run, labelled_strings, tmp_path: Path) -> None:
    digits = tmp_path / "digits"
    (digits / "0").mkdir(parents=True)
    result = runner.invoke(app, ["train", "--init", str(string_run), "--images", str(digits), "--out",
                                 str(tmp_path / "runs")])
    assert_one_line_error(result, "string model")
    result = runner.invoke(app, ["train", "--init", str(string_run), "--images", str(digits), "--strings",
                                 str(labelled_strings), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "one of --images" in result.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "labels.tsv").write_text("a.png\t12x\n")
    Image.new("L", (40, 20), 255).save(bad / "a.png")
    result = runner.invoke(app, ["train", "--init", str(string_run), "--strings", str(bad), "--out",
                                 str(tmp_path / "runs")])
    assert_one_line_error(result, "not a digit string")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
