"""Loading a tampered model is one clear error, never a silent NaN or a traceback (issue 15, items 6 and 7):
NaN weights, class names that do not match the output layer, nonsense or oversized model configs, a bad
rejection file, an ONNX graph that does not take ``input`` or holds NaN weights. Hand-made runs: no data."""

import io
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from digitlab.cli import app
from digitlab.data.preprocess import PreprocessSpec
from digitlab.inference.formats import META_MODEL, ONNX_INPUT, ONNX_OUTPUT
from digitlab.inference.predictor import Predictor, PredictorError
from digitlab.inference.rejection import REJECTION_FILE, Rejection, RejectionPolicy, save_rejection
from digitlab.models import create_model

SPEC = PreprocessSpec(mean=0.13, std=0.31)
CLASSES = [str(d) for d in range(10)]
ARGS = {"blocks": [{"filters": 4}], "dense": []}
POLICY = {"temperature": 0.8, "fitted_on": "validation", "n_val": 5000, "confidence_threshold": 0.6,
          "rule": "calibrated confidence below 0.6"}
runner = CliRunner()


def info(**changes: object) -> dict:
    return {"name": "cnn", "kind": "torch", "args": ARGS, "class_names": CLASSES, "preprocess": SPEC.model_dump(),
            **changes}


def make_run(folder: Path, *, nan: bool = False, **changes: object) -> Path:
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    model = create_model("cnn", **ARGS)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if nan:
        state["head.1.weight"][3, 5] = math.nan
    (folder / "model.json").write_text(json.dumps(info(**changes)))
    save_file(state, str(folder / "model.safetensors"))
    return folder


def image(folder: Path) -> Path:
    a = np.zeros((28, 28), np.uint8)
    a[6:22, 12:16] = 255
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    (folder / "one.png").write_bytes(buf.getvalue())
    return folder / "one.png"


def one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("digitlab: error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_good_hand_made_run_loads_and_answers(tmp_path: Path) -> None:
    r = runner.invoke(app, ["predict", str(make_run(tmp_path / "run")), str(image(tmp_path))])
    assert r.exit_code == 0, r.output


def test_nan_weights_are_refused_at_load_naming_the_file(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", nan=True)
    with pytest.raises(PredictorError) as e:
        Predictor.from_path(run)
    message = str(e.value)
    assert "model.safetensors" in message and "head.1.weight" in message and "NaN" in message and "\n" not in message
    one_line_error(runner.invoke(app, ["predict", str(run), str(image(tmp_path))]), "model.safetensors", "NaN")


@pytest.mark.parametrize("changes, needles", [
    ({"class_names": CLASSES[:9]}, ("10 outputs", "9 classes")),
    ({"class_names": [*CLASSES, "x"]}, ("10 outputs", "11 classes")),
    ({"args": {"blocks": [{"filters": -5}], "dense": []}}, ("blocks.0.filters", "greater than or equal to 1")),
    ({"args": {**ARGS, "input_size": [100_000, 100_000]}}, ("input_size.0", "less than or equal to 1024")),
    ({"args": {"blocks": [{"filters": 4}], "dense": [65_536, 65_536]}}, ("parameter budget",)),
])
def test_a_model_description_that_does_not_fit_is_one_line(tmp_path: Path, changes: dict,
                                                            needles: tuple[str, ...]) -> None:
    run = make_run(tmp_path / "run", **changes)
    with pytest.raises(PredictorError) as e:
        Predictor.from_path(run)
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in needles), str(e.value)
    one_line_error(runner.invoke(app, ["predict", str(run), str(image(tmp_path))]), *needles)


@pytest.mark.parametrize("temperature", [0, math.nan, "hot"])
def test_a_bad_rejection_file_is_one_line_at_the_cli(tmp_path: Path, temperature: object) -> None:
    from safetensors.torch import save_file as save

    run = make_run(tmp_path / "run")
    save({}, str(run / REJECTION_FILE), metadata={"format": "digitlab-rejection/1", "digitlab.rejection":
                                                  json.dumps({**POLICY, "temperature": temperature})})
    one_line_error(runner.invoke(app, ["predict", str(run), str(image(tmp_path))]), "temperature")


def test_a_garbage_rejection_file_is_one_line_at_the_cli(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    save_rejection(run / REJECTION_FILE, Rejection(RejectionPolicy(**POLICY)))
    assert runner.invoke(app, ["predict", str(run), str(image(tmp_path))]).exit_code == 0
    (run / REJECTION_FILE).write_bytes(b"garbage")
    one_line_error(runner.invoke(app, ["predict", str(run), str(image(tmp_path))]), "not a digitlab rejection file")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_predict_on_a_device_is_one_line(tmp_path: Path) -> None:
    one_line_error(runner.invoke(app, ["predict", str(make_run(tmp_path / "run")), "/dev/zero"]),
                   "/dev/zero", "character device")


def onnx_file(path: Path, *, input_name: str = ONNX_INPUT, n_out: int = 10, nan: bool = False,
              class_names: list[str] = CLASSES) -> Path:
    """A linear model on the flattened image, as digitlab's exporter lays it out (or not)."""
    w = np.random.default_rng(0).normal(size=(784, n_out)).astype(np.float32)
    if nan:
        w[0, 0] = np.nan
    graph = helper.make_graph(
        [helper.make_node("Flatten", [input_name], ["flat"]), helper.make_node("MatMul", ["flat", "w"], [ONNX_OUTPUT])],
        "linear", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info(ONNX_OUTPUT, TensorProto.FLOAT, ["N", n_out])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {META_MODEL: json.dumps(info(class_names=class_names))})
    onnx.save(model, str(path))
    return path


def test_a_well_formed_onnx_file_loads(tmp_path: Path) -> None:
    p = Predictor.from_path(onnx_file(tmp_path / "m.onnx"))
    assert p.predict(np.zeros((2, 28, 28), np.uint8)).proba.shape == (2, 10)


@pytest.mark.parametrize("kw, needles", [
    ({"input_name": "pixels"}, ("['pixels']", f"'{ONNX_INPUT}'")),
    ({"nan": True}, ("initializer w", "NaN")),
    ({"class_names": CLASSES[:9]}, ("10 outputs", "9 classes")),
])
def test_an_onnx_file_that_digitlab_cannot_feed_is_one_line(tmp_path: Path, kw: dict,
                                                            needles: tuple[str, ...]) -> None:
    path = onnx_file(tmp_path / "m.onnx", **kw)
    with pytest.raises(PredictorError) as e:
        Predictor.from_path(path)
    assert "m.onnx" in str(e.value) and "\n" not in str(e.value) and all(n in str(e.value) for n in needles), \
        str(e.value)
    one_line_error(runner.invoke(app, ["predict", str(path), str(image(tmp_path))]), *needles)
