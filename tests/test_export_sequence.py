"""Export of a string model (kind sequence): ONNX with dynamic batch and width, parity with torch, the reading
policy in the metadata, a hub folder with a card that says it reads strings; StringReader reads the same from
the run, the .onnx file and the hub folder."""

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file

from digitlab.core.config import dump_config, resolve_config
from digitlab.data.preprocess import PreprocessSpec
from digitlab.export.errors import ExportError
from digitlab.export.hub import export_hub, is_hub_folder
from digitlab.export.onnx import export_onnx
from digitlab.inference.formats import HUB_CONFIG, HUB_ONNX, HUB_WEIGHTS, META_MODEL, META_READING, ModelInfo
from digitlab.inference.sequence import REASON_UNSURE, StringReader, StringReaderError
from digitlab.models import create_model, make_config

TINY = {"channels": [8, 16, 16], "hidden_size": 16, "num_layers": 1}
SPEC = PreprocessSpec(mean=0.1307, std=0.3081, dataset="mnist")

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


@pytest.fixture(scope="module")
def string_run(tmp_path_factory):
    """A run directory of a tiny CRNN (random weights, batch-norm statistics moved off their defaults) with a
    reading policy."""
    torch.manual_seed(0)
    model = create_model("crnn", **TINY)
    with torch.no_grad():
        model(2 * torch.randn(4, 1, 32, 64) + 1)  # training-mode pass: running statistics away from 0 and 1
    model.eval()
    run = tmp_path_factory.mktemp("runs") / "20261203-000000-crnn-tiny"
    run.mkdir()
    cfg = resolve_config(None, ["model.name=crnn"])
    (run / "config.yaml").write_text(dump_config(cfg))
    args = make_config("crnn", **TINY).model_dump(mode="json")
    info = ModelInfo(name="crnn", kind="sequence", args=args, class_names=["<blank>", *args["alphabet"]],
                     preprocess=SPEC, dataset="mnist", n_params=sum(p.numel() for p in model.parameters()))
    (run / "model.json").write_text(info.to_json())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    (run / "reading.json").write_text(json.dumps({"min_confidence": 0.5, "kept_accuracy": 0.99, "n_val": 100}))
    return run


def lines() -> list[np.ndarray]:
    """Prepared-looking lines of three widths: strokes on black, so the readings are not all empty."""
    rng = np.random.default_rng(0)
    out = []
    for w in (40, 96, 180):
        x = np.zeros((32, w), np.float32)
        x[4:26, 6: w - 6: 9] = 1.0
        out.append(np.clip(x + 0.1 * rng.random((32, w), dtype=np.float32), 0, 1))
    return out


def test_onnx_export_of_a_string_run(string_run) -> None:
    result = export_onnx(string_run)
    path = string_run / "export" / "model.onnx"
    assert result["onnx"] == str(path) and result["kind"] == "sequence" and result["int8"] is None
    parity = result["parity"]
    assert parity["max_abs_diff"] <= parity["tolerance"] and parity["shapes"] == [[3, 64], [1, 212]]
    assert json.loads((string_run / "export" / "export.json").read_text())["parity"] == parity
    proto = onnx.load(str(path))
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*proto.graph.input,
                                                                                          *proto.graph.output)]
    assert dims == [["batch", 1, 32, "width"], ["batch", "frames", 15]]
    assert [o.name for o in proto.graph.output] == ["log_probs"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta[META_MODEL])["kind"] == "sequence"
    assert json.loads(meta[META_READING])["min_confidence"] == 0.5

    torch_reader = StringReader.from_path(string_run, device="cpu")
    onnx_reader = StringReader.from_path(path, device="cpu")
    assert onnx_reader.backend.name == "onnx" and onnx_reader.min_confidence == 0.5
    want, got = torch_reader.read_prepared(lines()), onnx_reader.read_prepared(lines())
    assert [r.text for r in got] == [r.text for r in want]
    assert [r.confidence for r in got] == pytest.approx([r.confidence for r in want], abs=1e-4)
    assert all(r.rejected in (None, REASON_UNSURE, "no digits found") for r in got)


def test_int8_is_refused_for_a_string_model(string_run, tmp_path) -> None:
    with pytest.raises(ExportError, match="a string model exports in float32 only") as e:
        export_onnx(string_run, tmp_path / "m.onnx", quantize="int8")
    assert "\n" not in str(e.value) and not (tmp_path / "m.onnx").exists()


def test_hub_folder_of_a_string_run_reads_like_the_run(string_run, tmp_path) -> None:
    folder = export_hub(string_run, tmp_path / "hub")
    assert is_hub_folder(folder)
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([HUB_CONFIG, HUB_WEIGHTS, HUB_ONNX, "README.md", "reading.json"])
    card = (folder / "README.md").read_text()
    assert "reader of handwritten digit strings" in card and "pipeline_tag: image-to-text" in card
    assert "0.500" in card and "StringReader.from_path" in card
    want = [r.text for r in StringReader.from_path(string_run, device="cpu").read_prepared(lines())]
    for backend in ("torch", "onnx"):
        reader = StringReader.from_path(folder, backend=backend, device="cpu")
        assert reader.backend.name == backend and reader.min_confidence == 0.5
        assert [r.text for r in reader.read_prepared(lines())] == want


def test_a_digit_classifier_onnx_is_refused_by_the_string_reader(tmp_path) -> None:
    """An ONNX file whose metadata describes a digit classifier: one line, not a crash at run time."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    path = tmp_path / "digits.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notes
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"])
    proto = onnx.load(str(path))
    info = ModelInfo(name="mlp", kind="torch", args={}, class_names=list("0123456789"), preprocess=SPEC)
    onnx.helper.set_model_props(proto, {META_MODEL: info.to_json()})
    onnx.save(proto, str(path))
    with pytest.raises(StringReaderError, match="mlp is a digit classifier, not a string model") as e:
        StringReader.from_path(path, device="cpu")
    assert "\n" not in str(e.value)
