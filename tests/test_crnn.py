"""The CRNN string model and CTC: shapes at any width, config checks, decoding, targets, a tiny training run,
ONNX parity at two widths."""

import io
import math
import warnings

import numpy as np
import pytest
import torch

from digitlab.models import ModelError, count_parameters, create_model, get_entry, list_models
from digitlab.models.crnn import WIDTH_STRIDE, frame_lengths
from digitlab.models.ctc import (
    ALPHABET,
    ctc_beam_decode,
    ctc_greedy_decode,
    ctc_loss,
    targets_to_text,
    text_to_targets,
)

TINY = {"channels": [8, 16, 16], "hidden_size": 32, "num_layers": 1}


@pytest.fixture(autouse=True)
def one_thread():
    """Models this small gain nothing from more threads, and on a busy machine OpenMP's waiting threads
    make a 0.1 s step take seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_registry_lists_crnn_as_a_sequence_model() -> None:
    assert "crnn" in list_models() and list_models("cr*") == ["crnn"]
    assert get_entry("crnn").kind == "sequence"
    model = create_model("crnn")
    assert model.head.out_features == 1 + len(ALPHABET) == 15
    assert 300_000 <= count_parameters(model) <= 1_000_000


@pytest.mark.parametrize("width", [4, 28, 64, 200, 333])
def test_one_frame_per_four_columns_at_any_width(width: int) -> None:
    torch.manual_seed(0)
    model = create_model("crnn", channels=[8, 8, 8, 8], hidden_size=16, num_layers=2)
    log_probs, frames = model.forward_features(torch.randn(3, 1, 32, width))
    assert log_probs.shape == (3, width // WIDTH_STRIDE, 15)
    assert frames.shape == (3, width // WIDTH_STRIDE, 32)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3, width // WIDTH_STRIDE), atol=1e-5)
    log_probs.logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_frame_lengths_round_up() -> None:
    assert frame_lengths(torch.tensor([1, 4, 5, 8, 130])).tolist() == [1, 1, 2, 2, 33]


BAD = [({"channels": [16]}, "channels: List should have at least 2 items"),
       ({"channels": [0, 8]}, "channels.0: Input should be greater than or equal to 1"),
       ({"hidden_size": -1}, "hidden_size: Input should be greater than or equal to 1"),
       ({"num_layers": 9}, "num_layers: Input should be less than or equal to 4"),
       ({"dropout": 1.0}, "dropout: Input should be less than 1"),
       ({"cell": "transformer"}, "cell"),
       ({"n_classes": 10}, "n_classes must be 1 + len(alphabet) = 15"),
       ({"alphabet": "0012"}, "repeats a character"),
       ({"alphabet": ""}, "alphabet: String should have at least 1 character"),
       ({"input_size": [8, 128]}, "input height 8 is below 2**4"),
       ({"input_size": [32, 130]}, "input width 130 is not a multiple of 4"),
       ({"hiden_size": 8}, "hiden_size: Extra inputs"),
       ({"hidden_size": 60_000}, "parameter budget")]


@pytest.mark.parametrize("cfg, why", BAD)
def test_config_rejects_bad_values_in_one_line(cfg: dict, why: str) -> None:
    with pytest.raises(ModelError) as e:
        create_model("crnn", **cfg)
    assert str(e.value).startswith("model 'crnn': ") and why in str(e.value) and "\n" not in str(e.value)


def test_config_accepts_a_digits_only_alphabet() -> None:
    model = create_model("crnn", alphabet="0123456789", n_classes=11, cell="gru", input_size=[48, 64])
    assert model(torch.randn(1, 1, 48, 64)).shape == (1, 16, 11)


def frames_for(path: str, peak: float = 0.9) -> torch.Tensor:
    """``(T, C)`` log-probabilities whose best path is ``path`` ("_" is the blank): ``peak`` on the chosen
    class, the rest spread evenly."""
    classes = [0 if ch == "_" else ALPHABET.index(ch) + 1 for ch in path]
    p = torch.full((len(path), 15), (1 - peak) / 14)
    p[torch.arange(len(path)), torch.tensor(classes)] = peak
    return p.log()


@pytest.mark.parametrize("path, text", [
    ("11_1", "11"),          # a repeat collapses; a blank between two 1s keeps both
    ("__3__", "3"),
    ("1_..__0", "1.0"),      # a doubled separator run is one character
    ("1._.0", "1..0"),       # a blank between two separators keeps both
    ("12-//7", "12-/7"),
    ("_____", ""),
    ("9", "9"),
])
def test_greedy_decoding_collapses_repeats_and_drops_blanks(path: str, text: str) -> None:
    (decoded,) = ctc_greedy_decode(frames_for(path)[None])
    assert decoded.text == text and len(decoded.confidences) == len(text)
    assert all(c == pytest.approx(0.9) for c in decoded.confidences)


def test_greedy_confidence_is_the_peak_over_a_characters_frames_and_lengths_cut_padding() -> None:
    lp = frames_for("_77_5__", peak=0.6)
    lp[2] = frames_for("7", peak=0.95)[0]  # the second frame of the 7 is surer
    padded = torch.cat([lp, frames_for("888")])  # frames past the string's length: padding, never read
    batch = torch.stack([padded, frames_for("4444_44" + "___")])
    first, second = ctc_greedy_decode(batch, lengths=torch.tensor([7, 10]))
    assert first.text == "75" and first.confidences == pytest.approx((0.95, 0.6))
    assert second.text == "44"
    assert ctc_greedy_decode(batch, lengths=torch.tensor([0, 3]))[0] == ("", ())
    assert [d.text for d in ctc_greedy_decode(batch.numpy())] == ["758", "44"]  # numpy in, no lengths


def test_beam_search_sums_alignments_where_best_path_does_not() -> None:
    # Each frame prefers the blank (0.4), but "1" over all its alignments (1_, _1, 11) has 0.4025 > 0.16.
    p = torch.zeros(2, 15)
    p[:, 0], p[:, 2], p[:, 3] = 0.4, 0.35, 0.25
    lp = p.log()[None]
    assert ctc_greedy_decode(lp)[0].text == ""
    (best,) = ctc_beam_decode(lp, beam=8)
    assert best.text == "1" and best.confidences == pytest.approx((0.35,))
    assert ctc_beam_decode(lp, beam=1)[0].text == ""  # a beam of one is best path here
    peaked = torch.stack([frames_for("1._.00_5"), frames_for("__7_7-__")])
    assert [d.text for d in ctc_beam_decode(peaked, torch.tensor([8, 6]))] == ["1..05", "77-"]
    with pytest.raises(ValueError, match="beam must be at least 1"):
        ctc_beam_decode(lp, beam=0)


def test_targets_round_trip_and_refuse_unknown_characters() -> None:
    texts = ["12.50", "", "3-7", "0/0,1"]
    targets, lengths = text_to_targets(texts)
    assert targets.dtype == lengths.dtype == torch.int64
    assert targets.shape == (4, 5) and lengths.tolist() == [5, 0, 3, 5]
    assert targets[0].tolist() == [2, 3, 11, 6, 1] and targets[2].tolist() == [4, 13, 8, 0, 0]  # padded with blanks
    assert targets_to_text(targets, lengths) == texts
    assert text_to_targets([""])[0].shape == (1, 0)
    with pytest.raises(ModelError, match=r"text '12a': character 'a' is not in the alphabet"):
        text_to_targets(["12a"])


def draw_line(digits: dict[str, list[np.ndarray]], text: str, height: int = 32) -> np.ndarray:
    """MNIST digits side by side on a ``height``-pixel line; "." a dot at the baseline, "-" a mid-height bar."""
    top = (height - 28) // 2
    pieces = []
    for ch in text:
        if ch.isdigit():
            glyph = np.zeros((height, 28), np.uint8)
            glyph[top : top + 28] = digits[ch].pop()
        else:
            glyph = np.zeros((height, 12), np.uint8)
            if ch == ".":
                glyph[top + 21 : top + 25, 4:8] = 255
            else:
                glyph[top + 13 : top + 16, 1:11] = 255
        pieces.append(glyph)
    return np.concatenate(pieces, axis=1)


@pytest.mark.mnist
def test_a_tiny_crnn_learns_to_read_training_strings(mnist_dataset) -> None:
    texts = ["305", "12.7", "4-68", "990", "2.5", "81-7", "6.04", "753"]
    images, labels = mnist_dataset.train_images, mnist_dataset.train_labels
    digits = {str(d): list(images[np.flatnonzero(labels == d)[:8]]) for d in range(10)}
    lines = [draw_line(digits, t) for t in texts]
    width = max(line.shape[1] for line in lines)
    width += -width % WIDTH_STRIDE
    x = np.zeros((len(texts), 1, 32, width), np.float32)
    for i, line in enumerate(lines):
        x[i, 0, :, : line.shape[1]] = line / 255.0
    batch = torch.from_numpy((x - x.mean()) / x.std())
    input_lengths = frame_lengths(torch.tensor([line.shape[1] for line in lines]))
    targets, target_lengths = text_to_targets(texts)

    torch.manual_seed(0)
    model = create_model("crnn", **TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(150):
        loss = ctc_loss(model(batch), targets, input_lengths, target_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        read = ctc_greedy_decode(model(batch), input_lengths)
    assert math.isfinite(losses[-1]) and losses[-1] < 0.1 * losses[0], losses[::15]
    exact = sum(d.text == t for d, t in zip(read, texts, strict=True))
    assert exact >= len(texts) // 2, [d.text for d in read]  # separators included


@pytest.fixture(scope="module")
def exported() -> tuple[torch.nn.Module, bytes]:
    import onnx

    torch.manual_seed(0)
    model = create_model("crnn")
    with torch.no_grad():
        model(2 * torch.randn(4, 1, 32, 64) + 1)  # batch-norm statistics away from their defaults, checked too
    model.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer notes
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 1, 32, 128),), buffer, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["log_probs"],
                          dynamic_axes={"input": {0: "batch", 3: "width"}, "log_probs": {0: "batch", 1: "frames"}})
    proto = onnx.load_model_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*proto.graph.input,
                                                                                          *proto.graph.output)]
    assert dims == [["batch", 1, 32, "width"], ["batch", "frames", 15]]
    return model, buffer.getvalue()


@pytest.mark.parametrize("batch, width", [(3, 64), (1, 212)])
def test_onnx_export_matches_torch_at_other_batches_and_widths(exported, batch: int, width: int) -> None:
    import onnxruntime as ort

    model, graph = exported
    x = torch.randn(batch, 1, 32, width, generator=torch.Generator().manual_seed(width))
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == want.shape == (batch, width // WIDTH_STRIDE, 15)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
