"""One reader for users: ``read_digits``, ``predict --multi``, ``/v1/read`` and ``/v1/model`` on a string model
(kind ``sequence``) read lines whole and say so; with a digit classifier they keep the segmentation reader."""

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from conftest import assert_one_line_error
from digitlab.cli import app
from digitlab.inference.sequence import StringReader
from digitlab.inference.strings import is_string_model, open_reader, read_digits
from digitlab.serve import ServeSettings, create_app
from digitlab.training import config_from_recipe, train_run

runner = CliRunner()
TINY = ["model.args.channels=[8,16,16,16]", "model.args.hidden_size=16", "model.args.num_layers=1",
        "strings.per_epoch=64", "strings.val=32", "strings.test=0", "train.batch_size=32", "data.n_val=500",
        "data.train_subset=2000", "data.synthetic_styles=0", "train.epochs=1"]


@pytest.fixture(scope="module")
def string_run(mnist_dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = train_run(config_from_recipe("strings", TINY), out_root=tmp_path_factory.mktemp("strings"),
                       show_progress=False, evaluate_test=False)
    return Path(result.run_dir)


@pytest.fixture(scope="module")
def line_png(mnist_dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three test digits side by side, dark ink on white: a user's scanned line."""
    digits = [255 - mnist_dataset.test_images[i] for i in range(3)]
    path = tmp_path_factory.mktemp("line") / "line.png"
    Image.fromarray(np.concatenate(digits, axis=1)).resize((168, 56)).save(path)
    return path


def test_the_model_kind_chooses_the_reader(string_run: Path, small_cnn, line_png: Path) -> None:
    assert is_string_model(string_run) and not is_string_model(small_cnn.source)
    assert not is_string_model(line_png) and not is_string_model(line_png.parent / "missing")
    reader = open_reader(string_run)
    assert isinstance(reader, StringReader)
    line = read_digits(line_png, reader)
    assert line.reader == "sequence" and line.found
    assert len(line.digits) == len(line.text) and all(d.box is None for d in line.digits)
    assert line.value == "".join(c for c in line.text if c.isdigit())
    record = line.record()
    assert record["reader"] == "sequence" and set(record) >= {"text", "value", "confidence", "rejected", "reason"}
    assert read_digits(line_png, small_cnn).reader == "segmentation"


def test_a_line_reads_the_same_alone_and_in_a_batch(string_run: Path, mnist_dataset) -> None:
    from digitlab.data.synth_strings import StringOptions, synthetic_strings

    batch, widths, _, _, _ = synthetic_strings(mnist_dataset.test_images, mnist_dataset.test_labels, 12, seed=4,
                                               options=StringOptions.separated())
    lines = [(255 - line[:, :w] * 255).astype(np.uint8) for line, w in zip(batch[:, 0].numpy(), widths.tolist(),
                                                                            strict=True)]
    reader = StringReader.from_path(string_run)
    together = reader.read(lines, min_confidence=0.0)
    alone = [reader.read_one(line, min_confidence=0.0) for line in lines]
    assert len({r.line.image.shape[1] for r in together}) > 1  # lines of several widths
    assert [(r.text, r.confidence) for r in together] == [(r.text, r.confidence) for r in alone]


def test_a_string_with_another_number_of_digits_than_expected_is_rejected(string_run: Path, line_png: Path) -> None:
    reader = StringReader.from_path(string_run)
    line = read_digits(line_png, reader, min_confidence=0.0, n_digits=60)
    assert line.rejected is not None and "60 expected" in line.rejected


def test_predict_multi_reads_with_the_string_model(string_run: Path, line_png: Path) -> None:
    result = runner.invoke(app, ["predict", str(string_run), str(line_png), "--multi", "--json"])
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)["strings"]
    assert record["reader"] == "sequence" and record["source"] == str(line_png)
    plain = runner.invoke(app, ["predict", str(string_run), str(line_png), "--multi"])
    assert plain.exit_code == 0 and str(line_png) in plain.stdout
    assert_one_line_error(runner.invoke(app, ["predict", str(string_run), str(line_png)]), "add --multi")


def test_the_service_reads_lines_with_its_string_model(string_run: Path, small_cnn, line_png: Path) -> None:
    service = create_app(ServeSettings(strings=string_run), predictor=small_cnn)
    with TestClient(service) as client:
        r = client.post("/v1/read", content=line_png.read_bytes(), headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["reader"] == "sequence" and body["found"] and len(body["digits"]) == len(body["text"])
        assert all(d["box"] is None for d in body["digits"])
        lines = client.get("/v1/model").json()["lines"]
        assert lines["reader"] == "sequence" and lines["name"] == "crnn"
    with TestClient(create_app(ServeSettings(), predictor=small_cnn)) as client:  # no string model: segmentation
        body = client.post("/v1/read", content=line_png.read_bytes(), headers={"Content-Type": "image/png"}).json()
        assert body["reader"] == "segmentation" and all(len(d["box"]) == 4 for d in body["digits"])
        assert client.get("/v1/model").json()["lines"] == {"reader": "segmentation"}
