"""Fine-tuning a trained run on a labelled folder (``train --init RUN --images DIR``), and the folder's checks."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import SMALL_CNN, assert_one_line_error
from digitlab.cli import app

runner = CliRunner()
TINY = ["data.n_val=200", "train.eval_batch_size=500", "data.train_subset=2000", "train.epochs=1"]


def write_labelled(folder: Path, images: np.ndarray, labels: np.ndarray, per_class: int) -> Path:
    """``per_class`` digits of each class as dark-on-light PNGs, enlarged 2x: how a user's scans look."""
    for digit in range(10):
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
        for i, idx in enumerate(np.flatnonzero(labels == digit)[:per_class]):
            Image.fromarray(255 - images[idx]).resize((56, 56), Image.BILINEAR).save(folder / str(digit) / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def init_run(mnist_dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from digitlab.training import config_from_recipe, train_run

    root = tmp_path_factory.mktemp("init")
    result = train_run(config_from_recipe("fast", SMALL_CNN + TINY), out_root=root, show_progress=False,
                       evaluate_test=False)
    return Path(result.run_dir)


@pytest.fixture(scope="module")
def labelled(mnist_dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_labelled(tmp_path_factory.mktemp("mine") / "digits", mnist_dataset.test_images,
                          mnist_dataset.test_labels, per_class=10)


def test_finetune_writes_a_run_that_records_its_parent_and_predicts(init_run, labelled, tmp_path):
    from digitlab.inference import Predictor
    from digitlab.inference.rejection import load_rejection

    result = runner.invoke(app, ["train", "--init", str(init_run), "--images", str(labelled), "--out",
                                 str(tmp_path / "runs"), "--quiet", "--set", "train.epochs=1"])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.endswith("-finetune")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    init_cfg = yaml.safe_load((init_run / "config.yaml").read_text())
    assert cfg["finetune"]["init"] == str(init_run.resolve())
    assert cfg["finetune"]["images"] == str(labelled.resolve())
    assert len(cfg["finetune"]["init_sha256"]) == 64
    assert cfg["finetune"]["n_images"] == {str(d): 10 for d in range(10)}
    assert cfg["model"] == init_cfg["model"]  # the architecture comes from the init run
    assert cfg["optim"]["lr"] == pytest.approx(init_cfg["optim"]["lr"] * 0.1)
    assert cfg["train"]["epochs"] == 1  # --set still wins over the fine-tuning defaults
    info = json.loads((run / "model.json").read_text())
    assert info["finetuned_from"]["init"] == str(init_run.resolve())
    assert info["preprocess"] == json.loads((init_run / "model.json").read_text())["preprocess"]
    policy = load_rejection(run / "rejection.safetensors").policy
    assert "20 held-out user digits" in policy.fitted_on  # 2 of each class's 10
    predictor = Predictor.from_path(run)
    assert predictor.predict_image(labelled / "3" / "0.png").label in [str(d) for d in range(10)]


def test_finetune_through_the_api(init_run, labelled, tmp_path):
    from digitlab.api import train

    result = train(init=init_run, images=labelled, overrides={"train.epochs": 1}, out=tmp_path, calibrate=False)
    run = Path(result.run_dir)
    assert (run / "user_digits.safetensors").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["finetune"]["init"] == str(init_run.resolve())


def test_interrupted_finetune_resumes_without_the_folder(init_run, tmp_path, mnist_dataset):
    import shutil

    from digitlab.api import prepare_finetune
    from digitlab.training import resume_run, train_run
    from digitlab.training.trainer import TrainingInterrupted

    folder = write_labelled(tmp_path / "d", mnist_dataset.test_images, mnist_dataset.test_labels, per_class=3)
    cfg, digits = prepare_finetune(init_run, folder, ["train.epochs=2"])
    assert len(digits.val_labels) == 0  # 3 a class is too few to hold any out

    def stop(end) -> None:
        if end.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train_run(cfg, out_root=tmp_path / "runs", show_progress=False, evaluate_test=False, user_digits=digits,
                  callbacks=[stop])
    shutil.rmtree(folder)  # resuming reads the prepared digits kept in the run, not the folder
    (run,) = (tmp_path / "runs").iterdir()
    result = resume_run(run, show_progress=False, evaluate_test=False)
    assert result.epochs_run == 2 and len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert result.best_epoch == 2  # a fine-tune keeps its last epoch


def _bad(tmp_path: Path, init_run: Path, images: Path, needle: str) -> None:
    result = runner.invoke(app, ["train", "--init", str(init_run), "--images", str(images), "--out",
                                 str(tmp_path / "runs")])
    assert_one_line_error(result, needle)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_folder(init_run, tmp_path):
    _bad(tmp_path, init_run, tmp_path / "nowhere", "no such folder")


def test_no_class_folders(init_run, tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("L", (28, 28)).save(tmp_path / "flat" / "a.png")
    _bad(tmp_path, init_run, tmp_path / "flat", "no sub-folders 0-9")


def test_wrong_folder_name(init_run, labelled, tmp_path, mnist_dataset):
    folder = write_labelled(tmp_path / "d", mnist_dataset.test_images, mnist_dataset.test_labels, per_class=3)
    (folder / "seven").mkdir()
    _bad(tmp_path, init_run, folder, "sub-folder 'seven' is not a single digit")


def test_empty_class(init_run, tmp_path, mnist_dataset):
    folder = write_labelled(tmp_path / "d", mnist_dataset.test_images, mnist_dataset.test_labels, per_class=3)
    for f in (folder / "4").iterdir():
        f.unlink()
    _bad(tmp_path, init_run, folder, f"{folder / '4'}: empty class folder")


def test_missing_class(init_run, tmp_path, mnist_dataset):
    folder = write_labelled(tmp_path / "d", mnist_dataset.test_images, mnist_dataset.test_labels, per_class=3)
    for f in (folder / "9").iterdir():
        f.unlink()
    (folder / "9").rmdir()
    _bad(tmp_path, init_run, folder, "no sub-folder for class 9")


def test_non_image_files(init_run, tmp_path, mnist_dataset):
    folder = write_labelled(tmp_path / "d", mnist_dataset.test_images, mnist_dataset.test_labels, per_class=3)
    (folder / "2" / "notes.txt").write_text("hello")
    (folder / "5" / "list.csv").write_text("a,b")
    _bad(tmp_path, init_run, folder, "notes.txt: not an image file and 1 other non-image file(s)")


def test_unreadable_image(init_run, tmp_path, mnist_dataset):
    folder = write_labelled(tmp_path / "d", mnist_dataset.test_images, mnist_dataset.test_labels, per_class=3)
    (folder / "6" / "broken.png").write_bytes(b"not a png")
    _bad(tmp_path, init_run, folder, "broken.png")


def test_too_few_images_and_blank_images_counted(init_run, tmp_path, mnist_dataset):
    folder = write_labelled(tmp_path / "d", mnist_dataset.test_images, mnist_dataset.test_labels, per_class=2)
    (folder / "1" / "1.png").unlink()
    Image.new("L", (40, 40), 255).save(folder / "1" / "blank.png")  # no digit found: counted, left out
    _bad(tmp_path, init_run, folder, "19 usable digit(s); fine-tuning needs at least 20 (1 image(s) with no digit")


def test_too_few_images(init_run, tmp_path, mnist_dataset):
    folder = write_labelled(tmp_path / "d", mnist_dataset.test_images, mnist_dataset.test_labels, per_class=1)
    _bad(tmp_path, init_run, folder, "10 usable digit(s); fine-tuning needs at least 20")


def test_init_not_a_run(labelled, tmp_path):
    _bad(tmp_path, tmp_path / "missing-run", labelled, "--init")


def test_init_classical_run(labelled, tmp_path, mnist_dataset):
    from digitlab.core.config import resolve_config
    from digitlab.training import train_run

    cfg = resolve_config({"model": {"name": "knn"}, "data": {"train_subset": 500, "n_val": 100}})
    result = train_run(cfg, out_root=tmp_path / "classical", show_progress=False, evaluate_test=False)
    _bad(tmp_path, Path(result.run_dir), labelled, "is a classical model")


def test_init_without_images(init_run, tmp_path):
    result = runner.invoke(app, ["train", "--init", str(init_run)])
    assert result.exit_code == 2 and "--images" in result.output
