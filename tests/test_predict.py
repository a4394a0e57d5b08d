"""Predictions on real images: the Predictor's batch API and rejection, `digitlab predict`, and
`digitlab evaluate --images`, on a small CNN trained in seconds on real MNIST."""

import csv
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from digitlab.cli import app
from digitlab.data.nondigits import synthetic_nondigits
from digitlab.data.splits import split_train_val
from digitlab.evaluation.evaluate import evaluate_run
from digitlab.inference import Predictor, PredictorError
from digitlab.inference.rejection import (
    REASON_BLOB,
    REASON_NOT_A_DIGIT,
    REJECT_VAL_RATE,
    REJECTION_FILE,
    REREAD_TRAIN,
    Rejection,
    calibrate_run,
    load_rejection,
)
from digitlab.training import config_from_recipe, train_run

pytestmark = pytest.mark.mnist

TINY = ["data.train_subset=3000", "data.n_val=500", "train.batch_size=100", "train.eval_batch_size=500",
        "model.args={blocks: [{filters: 8, pool_first: true, batch_norm: true}, "
        "{filters: 16, pool_first: true, batch_norm: true}], dense: []}", "train.epochs=2"]
runner = CliRunner()


def png(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def one_line_error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("digitlab: error: ") and needle in lines[0], result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def model(mnist_dataset, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("predict")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIGITLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        run = Path(train_run(config_from_recipe("fast", TINY), out_root=root, show_progress=False).run_dir)
        calibrate_run(run)
        evaluate_run(run)
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    x, y = mnist_dataset.test_images[:40], mnist_dataset.test_labels[:40]
    for i in range(8):  # dark ink on white, enlarged: what a scan looks like
        big = np.asarray(Image.fromarray(255 - x[i]).resize((112, 112), Image.Resampling.BICUBIC))
        (images / f"d{i}_{y[i]}.png").write_bytes(png(big))
    (images / "sub" / "blank.png").write_bytes(png(np.full((64, 64), 250, np.uint8)))
    (images / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    labelled = root / "labelled"
    for i in range(40):
        (labelled / str(y[i])).mkdir(parents=True, exist_ok=True)
        (labelled / str(y[i]) / f"t{i}.jpg").write_bytes(png(255 - x[i], "JPEG"))
    return SimpleNamespace(run=run, images=images, labelled=labelled, x=x, y=y, root=root)


def test_calibrate_stores_a_rejection_threshold_chosen_on_validation(model) -> None:
    policy = load_rejection(model.run / REJECTION_FILE).policy
    assert 0 < policy.confidence_threshold < 1 and "validation" in policy.rule
    rej = json.loads((model.run / "eval" / "metrics.json").read_text())["rejection"]
    assert rej["threshold"] == pytest.approx(policy.confidence_threshold)
    coverages = [row["coverage"] for row in rej["curve"]]
    assert coverages == sorted(coverages, reverse=True)  # a higher threshold keeps fewer
    assert Predictor.from_run(model.run).threshold == pytest.approx(policy.confidence_threshold)


def test_calibrate_fits_a_detector_and_chooses_both_thresholds_on_validation(model, mnist_dataset) -> None:
    policy = load_rejection(model.run / REJECTION_FILE).policy
    rej = json.loads((model.run / "eval" / "metrics.json").read_text())["rejection"]
    assert rej["detector_threshold"] == pytest.approx(policy.detector_threshold)
    assert policy.rule == rej["rule"] and "non-digit" in policy.rule
    assert policy.val_rejected <= REJECT_VAL_RATE and rej["rejected"] == pytest.approx(1 - rej["coverage"])
    # data.train_subset's 3,000 digits and as many non-digits, and up to REREAD_TRAIN of each read back through
    # the preparation (those in which it finds nothing are left out)
    assert 3000 + 0.9 * REREAD_TRAIN <= policy.detector.n_digits <= 3000 + REREAD_TRAIN
    assert 3000 + 0.5 * REREAD_TRAIN <= policy.detector.n_nondigits <= 3000 + REREAD_TRAIN
    p = Predictor.from_run(model.run)
    assert p.has_detector and p.detector_threshold == pytest.approx(policy.detector_threshold)
    # the rule as the Predictor applies it gives the reported test rate
    assert p.predict(mnist_dataset.test_images).rejected.mean() == pytest.approx(rej["rejected"], abs=2e-4)


def test_the_detector_rejects_synthetic_nondigits_more_than_confidence_alone(model, mnist_dataset) -> None:
    p = Predictor.from_run(model.run)
    _, val_idx = split_train_val(mnist_dataset.train_labels, n_val=500, seed=0)
    # confidence alone: the threshold that rejects the same share of validation digits as the rule
    t_alone = np.quantile(p.predict_proba(mnist_dataset.train_images[val_idx]).max(axis=1), REJECT_VAL_RATE)
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 256, (100, 28, 28), dtype=np.uint8)
    blobs = synthetic_nondigits(100, seed=5, kinds=("blob",))  # not the bank the detector learnt from
    for kind, x in (("noise", noise), ("blobs", blobs)):
        out = p.predict(x)
        alone = out.confidence < t_alone
        # confidence alone rejected 36% of the noise and 19% of the blobs here; the detector adds 30 points or more
        assert out.rejected.mean() >= min(0.95, alone.mean() + 0.3), kind


def test_a_prediction_rejected_by_the_detector_says_so(model) -> None:
    p = Predictor.from_run(model.run)
    flag_all = {"confidence_threshold": 0.0, "detector_threshold": -1e9}
    p.rejection = Rejection(p.rejection.policy.model_copy(update=flag_all), p.rejection.detector)
    out = p.predict_images(png(255 - model.x[0]))  # one image, not in a list
    assert out[0].rejected and out[0].reason == REASON_NOT_A_DIGIT and out[0].label == str(model.y[0])
    assert repr(out[0]) == f"ImagePrediction('#0': not read, {REASON_NOT_A_DIGIT}; best guess {model.y[0]})"
    assert out[0].record()["nondigit_score"] == pytest.approx(out[0].nondigit_score, abs=1e-6)


def test_predict_returns_labels_top_k_and_rejection(model) -> None:
    p = Predictor.from_run(model.run)
    out = p.predict(model.x, top_k=3)
    assert out.proba.shape == (40, 10) and np.allclose(out.proba.sum(axis=1), 1)
    assert list(out.indices) == list(p.classify(model.x))
    assert np.mean(out.indices == model.y) > 0.8
    top = out.top(0)
    assert len(top) == 3 and top[0][0] == out.labels[0] and top[0][1] >= top[1][1] >= top[2][1]
    assert np.array_equal(out.rejected, (out.confidence < p.threshold) | (out.nondigit_score > p.detector_threshold))
    assert p.predict(model.x, min_confidence=1.0).rejected.all()
    assert np.array_equal(p.predict(model.x, min_confidence=0.0).rejected, out.nondigit_score > p.detector_threshold)
    record = out.record(0)
    assert set(record) == {"label", "confidence", "rejected", "reason", "nondigit_score", "top_k", "probabilities"}
    json.dumps(record)


def test_predict_images_prepares_and_says_why_it_rejects(model) -> None:
    p = Predictor.from_run(model.run)
    blank = png(np.full((50, 50), 255, np.uint8))
    rng = np.random.default_rng(0)
    noise = png(rng.integers(0, 256, (64, 64)).astype(np.uint8))
    blob = Image.new("L", (64, 64), 255)
    ImageDraw.Draw(blob).ellipse((18, 14, 46, 50), fill=0)  # a filled blob covering 19% of the image
    digit = png(255 - model.x[0])
    out = p.predict_images([blank, noise, png(np.asarray(blob)), digit], names=["blank", "noise", "blob", "digit"])
    assert [o.source for o in out] == ["blank", "noise", "blob", "digit"]
    assert out[0].rejected and out[0].reason == "no digit found" and out[0].label is None
    assert out[1].rejected and out[1].reason == "no digit found"  # scattered ink is noise
    assert out[2].rejected and out[2].reason in (REASON_BLOB, REASON_NOT_A_DIGIT)
    assert out[3].prepared.found and out[3].prepared.inverted and out[3].label == str(model.y[0])


def test_predict_images_takes_one_image_or_many(model, tmp_path: Path) -> None:
    p = Predictor.from_run(model.run)
    f = next(model.images.glob("d0_*.png"))
    one = p.predict_images(str(f))  # a path string is one image, not a list of characters
    assert len(one) == 1 and one[0].source == str(f) and one[0].label == str(model.y[0])
    assert len(p.predict_images(f)) == 1 and len(p.predict_images(Image.open(f))) == 1
    assert len(p.predict_images(f.read_bytes())) == 1 and len(p.predict_images(255 - model.x[0])) == 1
    assert len(p.predict_images(255 - model.x[:3])) == 3  # an (N, H, W) stack is N images
    assert p.predict_image(f).label == one[0].label
    assert "\n" not in repr(one[0]) and len(repr(one[0])) < 120  # one line, no pixel array


def test_from_path_refuses_what_it_cannot_load(model, tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(PredictorError, match="not a loadable ONNX model"):
        Predictor.from_path(tmp_path / "junk.onnx")
    with pytest.raises(PredictorError, match="neither a run directory"):
        Predictor.from_path(tmp_path)
    with pytest.raises(PredictorError, match="export it first"):
        Predictor.from_path(model.run, backend="onnx")
    with pytest.raises(PredictorError, match="backend"):
        Predictor.from_path(model.run, backend="tpu")
    (tmp_path / "model.onnx").write_bytes(b"not onnx either")
    with pytest.raises(PredictorError, match="runs on ONNX Runtime"):
        Predictor.from_path(tmp_path / "model.onnx", backend="torch")


def test_cli_predict_one_image(model) -> None:
    f = next(model.images.glob("d0_*.png"))
    r = runner.invoke(app, ["predict", str(model.run), str(f), "--top-k", "2"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"{f}: {model.y[0]} (")
    r = runner.invoke(app, ["predict", str(model.run), str(f), "--json"])
    data = json.loads(r.stdout)
    pred = data["predictions"][0]
    assert pred["label"] == str(model.y[0]) and len(pred["top_k"]) == 3 and pred["found"] and pred["inverted"]


def test_cli_predict_a_folder_writes_a_csv_and_what_the_model_saw(model, tmp_path: Path) -> None:
    csv_path, prepared = tmp_path / "out.csv", tmp_path / "prepared"
    r = runner.invoke(app, ["predict", str(model.run), str(model.images), "--csv", str(csv_path),
                            "--save-prepared", str(prepared)])
    assert r.exit_code == 2, r.output  # one unreadable file: reported, the others still predicted
    rows = {Path(row["source"]).name: row for row in csv.DictReader(csv_path.open())}
    assert len(rows) == 10
    assert "not an image" in rows["broken.png"]["error"] or "corrupt" in rows["broken.png"]["error"]
    assert rows["blank.png"]["reason"] == "no digit found"
    correct = sum(rows[n]["label"] == n.split("_")[1].split(".")[0] for n in rows if n.startswith("d"))
    assert correct >= 6
    saved = sorted(prepared.glob("*.png"))
    assert len(saved) == 8 and Image.open(saved[0]).size == (28, 28)
    before = {p.name: p.read_bytes() for p in saved}
    r = runner.invoke(app, ["predict", str(model.run), str(model.images), "--save-prepared", str(prepared)])
    assert r.exit_code == 2, r.output  # a second run into the same folder adds numbered files, replaces none
    assert {p.name: p.read_bytes() for p in prepared.glob("*.png") if p.name in before} == before
    assert len(list(prepared.glob("*.png"))) == 16


def test_cli_predict_bad_inputs_are_one_line(model, tmp_path: Path) -> None:
    one_line_error(runner.invoke(app, ["predict", str(model.run), str(model.images / "sub" / "broken.png")]),
                   "broken.png")
    one_line_error(runner.invoke(app, ["predict", str(model.run), str(tmp_path / "missing.png")]), "missing.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(runner.invoke(app, ["predict", str(model.run), str(empty)]), "no image files")
    one_line_error(runner.invoke(app, ["predict", str(tmp_path), str(model.images)]), "neither a run directory")
    f = next(model.images.glob("d0_*.png"))
    one_line_error(runner.invoke(app, ["predict", str(model.run), str(f), "--polarity", "up"]), "--polarity")


def test_cli_min_confidence_one_rejects_everything(model) -> None:
    f = next(model.images.glob("d1_*.png"))
    r = runner.invoke(app, ["predict", str(model.run), str(f), "--min-confidence", "1", "--json"])
    assert json.loads(r.stdout)["predictions"][0]["rejected"] is True


def test_cli_evaluate_images_on_a_labelled_folder(model, tmp_path: Path) -> None:
    run = Path(shutil.copytree(model.run, tmp_path / "run"))
    r = runner.invoke(app, ["evaluate", str(run), "--images", str(model.labelled)])
    assert r.exit_code == 0, r.output
    m = json.loads((run / "eval" / "images-labelled" / "metrics.json").read_text())
    assert m["n"] == 40
    rows = list(csv.DictReader((run / "eval" / "images-labelled" / "predictions.csv").open()))
    right = sum(row["label"] == Path(row["source"]).parent.name for row in rows)
    assert m["accuracy"] == pytest.approx(right / 40) and m["accuracy"] > 0.7
    assert np.asarray(m["confusion_matrix"]).sum() == 40 - m["no_digit_found"]
    one_line_error(runner.invoke(app, ["evaluate", str(run), "--images", str(model.images / "sub")]),
                   "no images in sub-folders")
