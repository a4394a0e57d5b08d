"""The string reader: loads a string run (and refuses a digit classifier or bad weights in one line), reads scanned
lines through prepare_line with the training's normalisation, batches by width, applies reading.json."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from digitlab.data.preprocess import PreprocessSpec
from digitlab.data.synth_strings import StringOptions, synthetic_strings
from digitlab.inference.formats import READING_FILE, ModelInfo
from digitlab.inference.lines import batch_lines, prepare_line
from digitlab.inference.sequence import (
    REASON_NO_DIGITS,
    REASON_UNSURE,
    StringReader,
    StringReaderError,
    StringReading,
    _width_groups,
)
from digitlab.models import create_model, make_config
from digitlab.models.crnn import frame_lengths
from digitlab.models.ctc import ctc_loss, text_to_targets

TINY = {"channels": [8, 16, 16], "hidden_size": 32, "num_layers": 1}
SPEC = PreprocessSpec(mean=0.1307, std=0.3081, dataset="mnist")

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


def write_run(folder, model: torch.nn.Module, *, kind: str = "sequence", name: str = "crnn", args=None,
              reading: dict | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    args = args if args is not None else make_config("crnn", **TINY).model_dump(mode="json")
    info = ModelInfo(name=name, kind=kind, args=args, class_names=[], preprocess=SPEC, dataset="mnist")
    (folder / "model.json").write_text(info.to_json())
    (folder / "config.yaml").write_text("seed: 0\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    if reading is not None:
        (folder / READING_FILE).write_text(json.dumps(reading))
    return folder


def scan_of(line: np.ndarray, factor: float = 2.5) -> np.ndarray:
    """A generator line as a scan: enlarged, with margins, dark ink on white paper (uint8)."""
    h, w = line.shape
    big = np.asarray(Image.fromarray(line).resize((round(w * factor), round(h * factor)), Image.Resampling.BILINEAR))
    return (255 * (1 - np.pad(big, ((15, 25), (30, 20))))).astype(np.uint8)


@pytest.fixture(scope="module")
def trained(mnist_dataset, tmp_path_factory):
    """A tiny CRNN fitted to 8 synthetic strings, both as the generator drew them and as prepare_line makes them
    from scans of them, fed as the training loop feeds lines (``PreprocessSpec.standardize``), saved as a run
    directory. A model this small only memorises what it saw: reading the scans through ``StringReader`` tests
    the reader's path (file, preparation, normalisation, batching, decoding), and test_lines the geometry."""
    torch.set_num_threads(1)
    batch, widths, _, _, texts = synthetic_strings(mnist_dataset.train_images[:4000], mnist_dataset.train_labels[:4000],
                                                   8, seed=5, max_chars=5, options=StringOptions.separated())
    lines = [batch[i, 0, :, : widths[i]].numpy() for i in range(len(texts))]
    scans = [scan_of(line) for line in lines]
    images, all_widths = batch_lines(lines + [prepare_line(s).image for s in scans])
    targets, target_lengths = text_to_targets(texts + texts)
    x = SPEC.standardize(torch.from_numpy(images))  # what the training loop feeds
    frames = frame_lengths(torch.from_numpy(all_widths))
    torch.manual_seed(0)
    model = create_model("crnn", **TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(200):
        loss = ctc_loss(model(x), targets, frames, target_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    run = write_run(tmp_path_factory.mktemp("runs") / "crnn-run", model)
    return run, model, texts, lines, scans


@pytest.mark.mnist
def test_a_trained_run_reads_scans_of_its_strings(trained) -> None:
    run, _, texts, lines, scans = trained
    reader = StringReader.from_path(run, device="cpu")
    assert reader.backend.name == "torch" and reader.min_confidence is None
    direct = reader.read_prepared(lines)
    assert sum(r.text == t for r, t in zip(direct, texts, strict=True)) >= 6, [r.text for r in direct]
    readings = reader.read(scans, names=texts, batch_size=3)
    right = [r.text == t for r, t in zip(readings, texts, strict=True)]
    assert sum(right) >= 6, ([r.text for r in readings], texts)
    assert [r.source for r in readings] == texts  # in the order given, whatever the batching by width
    for r in readings:
        assert isinstance(r, StringReading) and r.found and len(r.confidences) == len(r.text)
        assert r.confidence == pytest.approx(math.prod(r.confidences)) and 0 < r.confidence <= 1
        assert r.rejected is None and r.digits == r.text  # digits only; no policy: nothing rejected
        rec = r.record()
        json.dumps(rec)
        assert rec["text"] == r.text and rec["box"] is not None and rec["inverted"] is True
    beam = reader.read(scans, beam=4)
    assert sum(b.text == r.text for b, r in zip(beam, readings, strict=True)) >= 6


@pytest.mark.mnist
def test_a_blank_image_reads_as_no_digits_found(trained) -> None:
    run, _, _, _, scans = trained
    reader = StringReader.from_path(run, device="cpu")
    blank = np.full((60, 200), 230, np.uint8)
    out = reader.read([blank, scans[0], blank])
    assert [r.found for r in out] == [False, True, False]
    assert out[0].rejected == REASON_NO_DIGITS and out[0].text == "" and out[0].confidence == 0.0
    assert out[1].text == reader.read_one(scans[0]).text


@pytest.mark.mnist
def test_reading_json_rejects_unsure_strings(trained, tmp_path) -> None:
    _, model, _, _, scans = trained
    sure = write_run(tmp_path / "strict", model, reading={"min_confidence": 1.0, "kept_accuracy": 0.99})
    reader = StringReader.from_path(sure, device="cpu")
    assert reader.min_confidence == 1.0
    out = reader.read(scans[:3])
    assert all(r.rejected == REASON_UNSURE and r.text for r in out)  # rejected, the best guess kept
    assert all(r.rejected is None for r in reader.read(scans[:3], min_confidence=0.0))  # a per-call override
    bad = write_run(tmp_path / "bad-policy", model, reading={"min_confidence": 3})
    with pytest.raises(StringReaderError, match=r"min_confidence must be a number in \[0, 1\], got 3"):
        StringReader.from_path(bad)


def test_width_groups_batch_only_lines_of_one_width() -> None:
    widths = [400, 40, 44, 40, 1200, 40, 400, 40]
    groups = _width_groups(widths, batch_size=3)
    assert sorted(i for g in groups for i in g) == list(range(8))
    assert groups == [[1, 3, 5], [7], [2], [0, 6], [4]]  # nothing is padded; a full batch starts another
    assert _width_groups([], 4) == []


def test_read_prepared_takes_arrays_and_checks_their_height(tmp_path) -> None:
    torch.manual_seed(0)
    reader = StringReader.from_path(write_run(tmp_path / "run", create_model("crnn", **TINY)), device="cpu")
    out = reader.read_prepared([np.zeros((32, 64), np.float32), np.zeros((32, 0), np.float32)], names=["a", "b"])
    assert [r.source for r in out] == ["a", "b"] and not out[1].found and out[1].rejected == REASON_NO_DIGITS
    lp, lengths = reader.log_probs(np.zeros((2, 1, 32, 64), np.float32), np.array([64, 30]))
    assert lp.shape == (2, 16, 15) and lengths.tolist() == [16, 8]
    with pytest.raises(StringReaderError, match=r"a line of shape \(28, 28\); this model reads \(32, W\)"):
        reader.read_prepared([np.zeros((28, 28), np.float32)])
    with pytest.raises(StringReaderError, match="beam must be 0 or more"):
        reader.read_prepared([], beam=-1)
    with pytest.raises(StringReaderError, match="1 names for 2 lines"):
        reader.read_prepared([np.zeros((32, 8), np.float32)] * 2, names=["a"])


def test_loading_errors_are_one_line(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("crnn", **TINY)
    cases = []
    cases.append((tmp_path / "nowhere", "no such model"))
    digit = write_run(tmp_path / "cnn-run", create_model("mlp"), kind="torch", name="mlp",
                      args=make_config("mlp").model_dump(mode="json"))
    cases.append((digit, "mlp is a digit classifier, not a string model"))
    corrupt = write_run(tmp_path / "corrupt", model)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 40)
    cases.append((corrupt, "cannot load the crnn weights"))
    other = write_run(tmp_path / "other-shape", create_model("crnn", channels=[8, 8, 8, 8], hidden_size=16,
                                                             num_layers=1))
    cases.append((other, "cannot load the crnn weights"))
    nan = write_run(tmp_path / "nan", model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["head.bias"][0] = float("nan")
    save_file(state, str(nan / "model.safetensors"))
    cases.append((nan, "head.bias holds NaN"))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append((empty, "neither a run directory"))
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_bytes(b"garbage")
    cases.append((not_onnx, "not a loadable ONNX model"))
    for path, why in cases:
        with pytest.raises(StringReaderError) as e:
            StringReader.from_path(path, device="cpu")
        assert why in str(e.value) and "\n" not in str(e.value), str(e.value)
    with pytest.raises(StringReaderError, match="a run directory loads with torch"):
        StringReader.from_path(corrupt, backend="onnx")
    with pytest.raises(StringReaderError, match="backend 'tf'"):
        StringReader.from_path(corrupt, backend="tf")


def test_reader_normalises_like_training(tmp_path) -> None:
    """The reader feeds (x - mean) / std of [0, 1] lines: what PreprocessSpec.standardize gives the training loop."""
    torch.manual_seed(0)
    model = create_model("crnn", **TINY).eval()
    reader = StringReader.from_path(write_run(tmp_path / "run", model), device="cpu")
    x = np.random.default_rng(0).random((2, 1, 32, 48), dtype=np.float32)
    lp, _ = reader.log_probs(x, np.array([48, 48]))
    with torch.no_grad():
        want = model(SPEC.standardize(torch.from_numpy(x).clone())).numpy()
    np.testing.assert_allclose(lp, want, atol=1e-5)
    assert prepare_line(np.zeros((4, 4))).found is False


def test_a_reading_keeps_separators_in_its_text_and_drops_them_from_its_digits() -> None:
    r = StringReading("cheque.png", "1.480", (0.9, 0.8, 0.99, 0.97, 0.9), 0.62, None, True)
    assert r.digits == "1480" and "1.480" in repr(r)
    rec = r.record()
    assert rec["text"] == "1.480" and rec["digits"] == "1480"
    assert [c["char"] for c in rec["characters"]] == list("1.480")
    assert rec["rejected"] is False and rec["reason"] is None and rec["box"] is None
    assert "not read, no digits found" in repr(StringReading("b", "", (), 0.0, REASON_NO_DIGITS, False))
