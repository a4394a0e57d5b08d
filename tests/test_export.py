"""Export: the ONNX file (checker, dynamic batch, metadata, parity), INT8, the hub folder and its model card,
push failures, and the CLI.

Failures that need no data run anywhere; the rest share a tiny CNN trained once for the module on a few
hundred real MNIST images (evaluated, so it has a calibration and eval/metrics.json), an unevaluated copy
of it, and a k-NN run.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from conftest import assert_one_line_error
from digitlab import __version__
from digitlab.cli import app
from digitlab.data.errors import DataError
from digitlab.data.preprocess import PreprocessSpec
from digitlab.data.splits import split_train_val
from digitlab.evaluation.evaluate import evaluate_run
from digitlab.export import ExportError
from digitlab.export import onnx as onnx_module
from digitlab.export.hub import export_hub
from digitlab.export.onnx import export_onnx
from digitlab.export.push import push
from digitlab.inference.formats import (
    HUB_CARD,
    HUB_CONFIG,
    HUB_ONNX,
    HUB_WEIGHTS,
    META_MODEL,
    META_REJECTION,
    META_VERSION,
    ONNX_INPUT,
    ONNX_OUTPUT,
    ONNX_SCORE,
)
from digitlab.inference.predictor import Predictor
from digitlab.inference.rejection import REJECTION_FILE, calibrate_run, load_rejection
from digitlab.training import config_from_recipe, train_run

TINY = ["data.train_subset=400", "data.n_val=200", "train.batch_size=50", "train.eval_batch_size=500"]
# The fast recipe with one 8-filter block and one epoch: seconds to train, and trained channels-last.
SMALL_FAST = ["model.args={blocks: [{filters: 8, pool_first: true, batch_norm: true}], dense: []}", "train.epochs=1"]
HUB_FILES = {HUB_CONFIG, HUB_WEIGHTS, HUB_ONNX, REJECTION_FILE, HUB_CARD}
CARD_SECTIONS = ("## Model description", "## Evaluation", "## Intended use", "## How the input must be prepared",
                 "## Limitations", "## Usage")

runner = CliRunner()


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load_model(str(path)).metadata_props}


def fake_hub_folder(folder: Path) -> Path:
    """What push needs of a hub folder, without a model (push fails before it reads one)."""
    folder.mkdir()
    (folder / HUB_CONFIG).write_text(json.dumps({"name": "cnn", "digitlab_version": __version__}))
    (folder / HUB_CARD).write_text("---\nlicense: mit\n---\n# a card\n")
    return folder


@pytest.fixture
def no_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No token in the environment nor in a stored login (huggingface_hub reads its paths at import)."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))


# ---------------------------------------------------------------------------------------------------------------
# Failures that need no data


def test_cli_export_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    assert_one_line_error(runner.invoke(app, ["export", str(tmp_path)]), "not a run directory")


def test_cli_export_a_missing_path(tmp_path: Path) -> None:
    assert_one_line_error(runner.invoke(app, ["export", str(tmp_path / "nowhere")]), "does not exist")


@pytest.mark.parametrize(("args", "needle"), [
    (["--format", "tflite"], "Invalid value for '--format' / '-f': 'tflite' is not one of 'onnx', 'hub'."),
    (["--quantize", "int4"], "Invalid value for '--quantize': 'int4' is not one of 'int8'."),
    (["--format", "hub", "--quantize", "int8"], "--quantize goes with --format onnx"),
    (["--opset", "13"], "--opset"),
])
def test_cli_export_bad_options(tmp_path: Path, args: list[str], needle: str) -> None:
    assert_one_line_error(runner.invoke(app, ["export", str(tmp_path), *args]), needle)


def test_push_without_a_token_fails_before_the_network(tmp_path: Path, no_token: None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder = fake_hub_folder(tmp_path / "hub")

    def no_network(*args, **kwargs):
        raise AssertionError("push reached the network without a token")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", no_network)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", no_network)
    result = runner.invoke(app, ["push", str(folder), "--repo-id", "someone/digits"])
    assert_one_line_error(result, "no Hugging Face token")
    assert "HF_TOKEN" in result.output and "hf auth login" in result.output


def test_push_offline_is_one_line(tmp_path: Path, no_token: None, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = fake_hub_folder(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    start = time.perf_counter()
    result = runner.invoke(app, ["push", str(folder), "--repo-id", "someone/digits", "--token", "hf_fake"])
    assert_one_line_error(result, "offline mode")
    assert "push to someone/digits" in result.output
    assert time.perf_counter() - start < 30


def test_push_to_an_unreachable_hub_is_one_line(tmp_path: Path) -> None:
    """The real command in its own process, so that huggingface_hub reads HF_ENDPOINT as it starts."""
    folder = fake_hub_folder(tmp_path / "hub")
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_fake", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    exe = Path(sys.executable).parent / "digitlab"
    start = time.perf_counter()
    proc = subprocess.run([str(exe), "push", str(folder), "--repo-id", "someone/digits"], env=env,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("digitlab: error: push to someone/digits on http://127.0.0.1:9 "
                                                   "failed"), proc.stderr
    assert "Traceback" not in proc.stderr and not proc.stdout
    assert elapsed < 60


def test_push_rejects_a_bad_repo_id_and_a_folder_that_is_not_a_hub_folder(tmp_path: Path) -> None:
    folder = fake_hub_folder(tmp_path / "hub")
    with pytest.raises(ExportError, match="bad --repo-id"):
        push(folder, "not a repo id", token="hf_fake")
    with pytest.raises(ExportError, match="user/name"):
        push(folder, "digits", token="hf_fake")
    with pytest.raises(ExportError, match="neither a run directory"):
        push(tmp_path, "someone/digits", token="hf_fake")


# ---------------------------------------------------------------------------------------------------------------
# Tiny real runs, trained once for the module


@pytest.fixture(scope="module")
def runs(mnist_dataset, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A small CNN, calibrated and evaluated; an uncalibrated, unevaluated copy of it (no rejection, no eval/);
    a k-NN."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:  # the function-scoped hermetic fixture does not reach here
        mp.setenv("DIGITLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("DIGITLAB_MIRRORS", "http://127.0.0.1:9/")

        def train(recipe: str, *overrides: str) -> Path:
            cfg = config_from_recipe(recipe, [*TINY, *overrides])
            return Path(train_run(cfg, out_root=root / recipe, show_progress=False).run_dir)

        cnn = train("fast", *SMALL_FAST)
        unevaluated = Path(shutil.copytree(cnn, root / "unevaluated"))
        calibrate_run(cnn)
        metrics = evaluate_run(cnn)
        knn = train("knn")
    return SimpleNamespace(cnn=cnn, unevaluated=unevaluated, metrics=metrics, knn=knn)


@pytest.fixture(scope="module")
def onnx_cli(runs: SimpleNamespace):
    """``digitlab export RUN`` on the evaluated CNN (the default: RUN/export/model.onnx)."""
    return runner.invoke(app, ["export", str(runs.cnn)])


@pytest.fixture(scope="module")
def hub_cli(runs: SimpleNamespace):
    """``digitlab export RUN --format hub`` on the evaluated CNN (RUN/export/hub/)."""
    return runner.invoke(app, ["export", str(runs.cnn), "--format", "hub"])


@pytest.fixture(scope="module")
def int8(runs: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """An INT8 export, with the images each quantization (per tensor, per channel) calibrated on."""
    calibration: list[np.ndarray] = []
    real = onnx_module._Batches

    class Spy(real):
        def __init__(self, batches):
            calibration.append(np.concatenate([b[ONNX_INPUT] for b in batches]))
            super().__init__(batches)

    out = tmp_path_factory.mktemp("int8") / "digits.onnx"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_module, "_Batches", Spy)
        result = export_onnx(runs.cnn, out, quantize="int8")
    return SimpleNamespace(result=result, out=out, calibration=calibration)


@pytest.mark.mnist
def test_cli_export_onnx_prints_the_file_and_the_parity(runs: SimpleNamespace, onnx_cli) -> None:
    assert onnx_cli.exit_code == 0, onnx_cli.output
    record = json.loads((runs.cnn / "export" / "export.json").read_text())
    assert record["onnx"] == str(runs.cnn / "export" / HUB_ONNX)
    assert f"written: {record['onnx']}" in onnx_cli.stdout
    assert f"max |logit difference| {record['parity']['max_abs_diff']:.2e}" in onnx_cli.stdout
    assert record["parity"]["n"] == 1000 and "mnist test split" in record["parity"]["inputs"]
    assert 0 <= record["parity"]["max_abs_diff"] <= 1e-4
    assert 0 <= record["parity"]["max_abs_diff_score"] <= 1e-4 and record["detector"] is True
    assert record["int8"] is None


@pytest.mark.mnist
def test_onnx_file_passes_the_checker_and_names_its_tensors(runs: SimpleNamespace, onnx_cli) -> None:
    path = runs.cnn / "export" / HUB_ONNX
    model = onnx.load_model(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert [i.name for i in model.graph.input] == [ONNX_INPUT]
    assert [o.name for o in model.graph.output] == [ONNX_OUTPUT, ONNX_SCORE]  # the run has a detector
    for value in (model.graph.input[0], *model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param, value  # a symbolic batch axis
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]] == [1, 28, 28]


@pytest.mark.mnist
def test_onnx_metadata_is_complete_and_parses(runs: SimpleNamespace, onnx_cli) -> None:
    meta = metadata(runs.cnn / "export" / HUB_ONNX)
    model_json = json.loads((runs.cnn / "model.json").read_text())
    assert json.loads(meta[META_MODEL]) == model_json  # one model description, in the run and in the file
    assert model_json["class_names"] == [str(d) for d in range(10)]
    assert PreprocessSpec.model_validate(json.loads(meta[META_MODEL])["preprocess"]).mean > 0
    policy = load_rejection(runs.cnn / REJECTION_FILE).policy
    assert json.loads(meta[META_REJECTION]) == json.loads(policy.model_dump_json())
    assert meta[META_VERSION] == __version__


@pytest.mark.mnist
@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_runs_any_batch_size_and_matches_torch(runs: SimpleNamespace, onnx_cli, mnist_dataset,
                                                    batch: int) -> None:
    predictor = Predictor.from_run(runs.cnn, device="cpu")
    images = mnist_dataset.test_images[100 : 100 + batch]
    x = predictor.spec.normalize(torch.as_tensor(images)).numpy()
    (logits,) = session(runs.cnn / "export" / HUB_ONNX).run([ONNX_OUTPUT], {ONNX_INPUT: x})
    assert logits.shape == (batch, 10) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, predictor.logits(images), atol=1e-4, rtol=0)
    logits, score = session(runs.cnn / "export" / HUB_ONNX).run([ONNX_OUTPUT, ONNX_SCORE], {ONNX_INPUT: x})
    torch_logits, torch_score = predictor.logits_and_nondigit(images)
    assert score.shape == (batch,) and score.dtype == np.float32
    np.testing.assert_allclose(score, torch_score, atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits, torch_logits, atol=1e-4, rtol=0)


@pytest.mark.mnist
def test_without_the_data_parity_is_checked_on_random_images(runs: SimpleNamespace, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(*args, **kwargs):
        raise DataError("mnist: not found")

    monkeypatch.setattr(onnx_module, "load_dataset", unavailable)
    lines: list[str] = []
    result = export_onnx(runs.unevaluated, tmp_path, log=lines.append)  # a folder: FOLDER/model.onnx
    assert result["onnx"] == str(tmp_path / HUB_ONNX)
    assert result["parity"]["inputs"] == "random images" and result["parity"]["max_abs_diff"] <= 1e-4
    assert any("random images" in line for line in lines)
    assert META_REJECTION not in metadata(tmp_path / HUB_ONNX)  # that run has no rejection: one output
    assert [o.name for o in onnx.load_model(str(tmp_path / HUB_ONNX)).graph.output] == [ONNX_OUTPUT]
    assert "max_abs_diff_score" not in result["parity"] and result["detector"] is False
    assert not (runs.unevaluated / "export" / "export.json").exists()  # an export elsewhere records nothing
    with pytest.raises(ExportError, match="could not be loaded"):  # INT8 cannot calibrate on nothing
        export_onnx(runs.unevaluated, tmp_path / "q.onnx", quantize="int8")
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.mnist
def test_a_failed_parity_check_writes_nothing(runs: SimpleNamespace, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_module, "PARITY_TOLERANCE", -1.0)  # any difference, even 0, now fails
    old = tmp_path / "model.onnx"
    old.write_bytes(b"the previous export")
    with pytest.raises(ExportError, match="differ from torch's"):
        export_onnx(runs.cnn, old, force=True)  # without force it is refused before any work
    assert old.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temp file left behind


@pytest.mark.mnist
def test_int8_is_quantized_and_measured_on_the_test_split(runs: SimpleNamespace, int8: SimpleNamespace,
                                                          mnist_dataset) -> None:
    q = int8.result["int8"]
    path = Path(q["path"])
    assert path == int8.out.with_name("digits.int8.onnx")
    model = onnx.load_model(str(path))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert set(metadata(path)) >= {META_MODEL, META_REJECTION, META_VERSION}
    # The reported accuracies are what the two files score on all 10,000 test images.
    predictor = Predictor.from_run(runs.cnn, device="cpu")
    images, y = mnist_dataset.test_images, mnist_dataset.test_labels
    x = predictor.spec.normalize(torch.as_tensor(images)).numpy()
    for file, key in ((int8.out, "accuracy_fp32"), (path, "accuracy_int8")):
        (logits,) = session(file).run([ONNX_OUTPUT], {ONNX_INPUT: x})
        assert q[key] == float(np.mean(logits.argmax(axis=1) == y)), key
    assert q["n_test"] == 10_000
    assert q["drop_points"] == pytest.approx(100 * (q["accuracy_fp32"] - q["accuracy_int8"]))
    assert q["accuracy_fp32"] > 0.5 and abs(q["drop_points"]) < 5
    assert path.stat().st_size == q["size_bytes"] < int8.out.stat().st_size
    # the detector stays in the graph, in float32: its score moves only as much as the features it reads
    assert [o.name for o in model.graph.output] == [ONNX_OUTPUT, ONNX_SCORE] and META_REJECTION in metadata(path)
    d = q["detector"]
    assert d["quantized"] is False and d["nodes_kept_float"] > 0 and d["flag_agreement"] > 0.95
    loaded = Predictor.from_path(path)
    assert loaded.has_detector and loaded.detector_threshold == predictor.detector_threshold
    assert loaded.predict(images[:100]).nondigit_score.shape == (100,)


@pytest.mark.mnist
def test_int8_calibrates_on_training_images_only(runs: SimpleNamespace, int8: SimpleNamespace,
                                                 mnist_dataset) -> None:
    q = int8.result["int8"]
    assert len(int8.calibration) == 2  # per tensor and per channel, on the same images
    x = int8.calibration[0]
    assert np.array_equal(int8.calibration[1], x)
    assert q["calibration"] == {"split": "train", "n": len(x), "method": "minmax"} and len(x) == 300
    spec = Predictor.from_run(runs.cnn, device="cpu").spec
    pixels = np.rint((x[:, 0] * spec.std + spec.mean) / spec.scale).astype(np.uint8)  # undo the normalisation
    assert np.allclose(spec.normalize(torch.as_tensor(pixels)).numpy(), x, atol=1e-5)
    train_idx, _ = split_train_val(mnist_dataset.train_labels, n_val=200, seed=0)  # the run's split (TINY)
    train = {mnist_dataset.train_images[i].tobytes() for i in train_idx}
    assert all(p.tobytes() in train for p in pixels)  # never a validation or test image


@pytest.mark.mnist
def test_hub_folder_of_an_evaluated_run(runs: SimpleNamespace, hub_cli) -> None:
    assert hub_cli.exit_code == 0, hub_cli.output
    folder = runs.cnn / "export" / "hub"
    assert f"written: {folder}/" in hub_cli.stdout
    assert {p.name for p in folder.iterdir()} == HUB_FILES
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    assert (folder / HUB_WEIGHTS).read_bytes() == (runs.cnn / "model.safetensors").read_bytes()
    model_json = json.loads((runs.cnn / "model.json").read_text())
    config = json.loads((folder / HUB_CONFIG).read_text())
    assert config == {**model_json, "digitlab_version": __version__}
    assert (folder / REJECTION_FILE).read_bytes() == (runs.cnn / REJECTION_FILE).read_bytes()
    onnx.checker.check_model(onnx.load_model(str(folder / HUB_ONNX)))
    assert set(metadata(folder / HUB_ONNX)) >= {META_MODEL, META_REJECTION, META_VERSION}


@pytest.mark.mnist
def test_model_card_of_an_evaluated_run(runs: SimpleNamespace, hub_cli) -> None:
    card = ModelCard.load(runs.cnn / "export" / "hub" / HUB_CARD)
    data, m = card.data, runs.metrics
    assert (data.license, data.library_name, data.datasets) == ("mit", "digitlab", ["mnist"])
    assert {"digitlab", "mnist", "onnx"} <= set(data.tags)
    results = {r.metric_type: r for r in data.eval_results}
    assert set(results) == {"accuracy", "f1", "ece"}
    assert results["accuracy"].metric_value == pytest.approx(m["accuracy"], abs=1e-6)
    assert results["f1"].metric_value == pytest.approx(m["macro_avg"]["f1"], abs=1e-6)
    assert results["ece"].metric_value == pytest.approx(m["calibration"]["ece_after"], abs=1e-6)
    assert all(r.dataset_split == "test" and r.dataset_type == "mnist" for r in results.values())
    text = card.text
    for section in CARD_SECTIONS:
        assert section in text, section
    n_params = json.loads((runs.cnn / "model.json").read_text())["n_params"]
    assert f"{n_params:,} parameters" in text
    assert "recipe `fast`" in text and "digitlab predict" in text and "Single digits" in text
    assert 'Predictor.from_path("<folder>")' in text and "ort.InferenceSession" in text
    assert f"| accuracy | {m['accuracy']:.4f}" in text
    assert "Not evaluated" not in text
    cal = load_rejection(runs.cnn / REJECTION_FILE).policy
    # the rejection thresholds calibrate chose on validation: confidence, and the detector's
    assert f"below {cal.confidence_threshold:.3f} or when the non-digit detector" in text
    assert f"above {cal.detector_threshold:.3f}" in text and "`rejection.safetensors`" in text


@pytest.mark.mnist
def test_model_card_of_an_unevaluated_run_says_so(runs: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "hub"
    lines: list[str] = []
    assert export_hub(runs.unevaluated, out, log=lines.append) == out
    assert {p.name for p in out.iterdir()} == HUB_FILES - {REJECTION_FILE}
    card = ModelCard.load(out / HUB_CARD)
    assert card.data.eval_results is None and card.data.metrics is None
    assert "model-index" not in (out / HUB_CARD).read_text()
    assert "Not evaluated" in card.text and "No temperature was fitted" in card.text
    assert any("not evaluated" in line for line in lines)
    # A second export replaces the folder whole, and leaves nothing beside it.
    stale = out / "stale.txt"
    stale.write_text("from an older export")
    export_hub(runs.unevaluated, out)
    assert {p.name for p in out.iterdir()} == HUB_FILES - {REJECTION_FILE}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub"]


@pytest.mark.mnist
def test_hub_export_never_replaces_a_folder_it_did_not_write(runs: SimpleNamespace, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a digitlab hub folder"):
        export_hub(runs.cnn, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.mnist
def test_a_classical_run_is_a_clear_error(runs: SimpleNamespace, tmp_path: Path) -> None:
    for fmt in ("onnx", "hub"):
        assert_one_line_error(runner.invoke(app, ["export", str(runs.knn), "--format", fmt]), "classical (knn) run")
    with pytest.raises(ExportError, match="torch networks only"):
        export_onnx(runs.knn)
    with pytest.raises(ExportError, match="classical"):
        push(runs.knn, "someone/digits", token="hf_fake")
    assert not (runs.knn / "export").exists()


@pytest.mark.mnist
@pytest.mark.parametrize(("what", "backend"), [("hub", "torch"), ("hub", "onnx"), ("onnx", "auto")])
def test_exported_files_predict_like_the_run(runs: SimpleNamespace, onnx_cli, hub_cli, mnist_dataset, what: str,
                                             backend: str) -> None:
    path = runs.cnn / "export" / ("hub" if what == "hub" else HUB_ONNX)
    images = mnist_dataset.test_images[:2000]
    reference = Predictor.from_run(runs.cnn, device="cpu")
    loaded = Predictor.from_path(path, backend=backend, device="cpu")
    assert np.array_equal(loaded.classify(images), reference.classify(images))
    np.testing.assert_allclose(loaded.predict_proba(images), reference.predict_proba(images), atol=1e-5)
    # the non-digit detector travels too (hub: rejection.safetensors for torch, the second output for ONNX)
    assert loaded.has_detector and loaded.detector_threshold == reference.detector_threshold is not None
    assert loaded.threshold == reference.threshold
    out, ref = loaded.predict(images), reference.predict(images)
    np.testing.assert_allclose(out.nondigit_score, ref.nondigit_score, atol=1e-4, rtol=0)
    assert np.mean(out.rejected == ref.rejected) > 0.999
