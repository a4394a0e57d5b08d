"""ONNX export of a torch run, checked against torch, with optional static INT8 quantization.

Usage::

    result = export_onnx("runs/20261121-101500-cnn-default")      # RUN/export/model.onnx
    result["parity"]["max_abs_diff"]                               # vs torch, on up to 1,000 test images
    result = export_onnx(run, quantize="int8")                    # + RUN/export/model.int8.onnx
    result["int8"]["drop_points"]                                  # test accuracy lost, in points

The file holds the network alone: its input is the normalised float32 ``(N, 1, 28, 28)`` tensor that
``PreprocessSpec.normalize`` makes, its output the logits; when the run's rejection has a non-digit
detector, the detector too, as a second output (``nondigit_score``, ``(N,)``). The model description
(architecture, class names, preprocessing spec) and the rejection policy travel in its metadata (names
in ``digitlab.inference.formats``), so ``Predictor.from_path`` feeds it exactly as training did. A file is
checked (``onnx.checker``, a dynamic batch axis, parity with torch, of both outputs) before it is renamed
into place: one that fails never replaces a good one.
"""

import contextlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from digitlab import __version__
from digitlab.core.config import ConfigError, RunConfig, read_run_config
from digitlab.core.errors import first_line
from digitlab.core.fileio import atomic_path, atomic_write_text
from digitlab.core.rundir import RunDir, check_output
from digitlab.data.errors import DataError
from digitlab.data.loading import Dataset, load_dataset
from digitlab.data.splits import split_train_val
from digitlab.export.errors import ExportError
from digitlab.inference.backends import run_onnx
from digitlab.inference.detector import ScoredModel
from digitlab.inference.formats import (
    HUB_ONNX,
    HUB_ONNX_INT8,
    META_MODEL,
    META_READING,
    META_REJECTION,
    META_VERSION,
    ONNX_INPUT,
    ONNX_LOG_PROBS,
    ONNX_OUTPUT,
    ONNX_SCORE,
    READING_FILE,
    ModelInfo,
    ModelInfoError,
    read_model_info,
)
from digitlab.inference.predictor import Predictor

DEFAULT_OPSET = 17
MIN_OPSET = 17
QUANTIZE_CHOICES = ("int8",)
EXPORT_DIR = "export"
RECORD = "export.json"  # the figures of the last default export, in RUN/export/
PARITY_TOLERANCE = 1e-4  # max |logit difference| (and |non-digit score difference|); fp32 reorderings stay near 1e-6
PARITY_SAMPLES = 1000
CALIBRATION_SAMPLES = 300  # training images for the INT8 ranges: a few hundred are plenty for min/max
CALIBRATION_BATCH = 100
SELECTION_SAMPLES = 1000  # held-out images that choose per-channel or per-tensor weights
BATCH = 1000
# Not 0 or 1: torch.export specialises those sizes, and the batch axis must stay symbolic.
EXAMPLE_BATCH = 2
BATCH_AXIS = "batch"
WIDTH_AXIS = "width"  # a string model's line width (its input's last axis), and its output's frames
FRAMES_AXIS = "frames"
# A string model's parity: lines of two widths and two batch sizes other than the example's (2 x 128).
SEQUENCE_PARITY = ((3, 64), (1, 212))


def default_onnx_path(run: str | os.PathLike[str]) -> Path:
    """Where ``export_onnx`` writes when given no ``out``: ``RUN/export/model.onnx``."""
    return Path(run) / EXPORT_DIR / HUB_ONNX


def int8_path(onnx_path: str | os.PathLike[str]) -> Path:
    """The INT8 file beside an ONNX file: ``model.onnx`` -> ``model.int8.onnx``."""
    p = Path(onnx_path)
    return p.with_name(HUB_ONNX_INT8) if p.name == HUB_ONNX else p.with_name(f"{p.stem}.int8{p.suffix or '.onnx'}")


def export_onnx(run: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *, opset: int = DEFAULT_OPSET,
                quantize: str | None = None, log: Callable[[str], None] | None = None,
                force: bool = False) -> dict[str, Any]:
    """Export a torch run to ONNX, check it, and optionally quantize it to INT8.

    A string model's run (model.json kind ``sequence``) exports in float32 only: input lines of any width, output
    ``log_probs``, the reading policy in the metadata (``inference.formats``), parity checked at two batch sizes
    and widths.

    Args:
        run: a run directory written by ``digitlab train``.
        out: the ONNX file (or a folder for ``model.onnx``) to write, by default ``RUN/export/model.onnx``; the
            INT8 file goes beside it (``model.int8.onnx``). A default export also records its figures in
            ``RUN/export/export.json``.
        opset: ONNX opset, 17 or newer.
        quantize: ``"int8"`` for static QDQ quantization calibrated on training images.
        log: a callable taking one progress line, or None.
        force: let an ``out`` file (and its INT8 file) replace existing ones; never one of a run's own files
            (``core.rundir.check_output``). The default files in ``RUN/export/`` are this command's own: refreshed.

    Returns:
        ``{"run", "onnx", "size_bytes", "opset", "exporter", "parity": {"max_abs_diff", "n", "inputs",
        "tolerance"}, "int8": None or {"path", "size_bytes", "per_channel", "accuracy_fp32",
        "accuracy_int8", "drop_points", "agreement", ...}}``.

    Raises:
        ExportError: a classical run, an opset below 17, a graph that fails the checks or parity, INT8
            without the training data. RunDirError, PredictorError: not a loadable run. OutputError: ``out``
            exists (without ``force``) or is inside a run directory outside ``RUN/export/`` and ``RUN/eval/``.
    """
    say = log or (lambda _msg: None)
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise ExportError(f"unknown quantization {quantize!r}: the choice is {', '.join(QUANTIZE_CHOICES)}")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset}: digitlab exports opset {MIN_OPSET} or newer")
    rundir = RunDir.open(run)
    target = Path(out) if out is not None else default_onnx_path(rundir.path)
    if target.is_dir():  # --out FOLDER means FOLDER/model.onnx
        target = target / HUB_ONNX
    replace = force or out is None
    if out is not None:  # before any work
        for path in (target, int8_path(target)) if quantize is not None else (target,):
            check_output(path, force=force)
    cfg = _run_config(rundir)
    if run_info(rundir).kind == "sequence":
        return _export_sequence(rundir, target, opset=opset, quantize=quantize, say=say, replace=replace,
                                record=out is None)
    predictor = load_torch_predictor(rundir.path)
    # INT8 cannot be calibrated without training images, so only then is a download worth it.
    data = _load_data(predictor, cfg, download=quantize is not None, say=say)
    if data is None and quantize is not None:
        raise ExportError(f"INT8 quantization calibrates on training images of {_dataset_name(predictor, cfg)}, "
                          "which could not be loaded; run `digitlab data fetch` first")

    say(f"exporting {predictor.name} to ONNX (opset {opset})")
    start = time.perf_counter()
    proto, exporter = _to_onnx(predictor, opset, say)
    set_metadata(proto, onnx_metadata(predictor))
    got_opset = _default_opset(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{predictor.name}: the exported graph fails onnx.checker: {first_line(e)}") from None
    _check_batch_axis(proto)

    if data is not None:
        images, inputs = data.test_images[:PARITY_SAMPLES], f"images of the {data.spec.name} test split"
    else:
        h, w = predictor.spec.input_size
        images = np.random.default_rng(0).integers(0, 256, (PARITY_SAMPLES, h, w), dtype=np.uint8)
        inputs = "random images"
    with atomic_path(target, overwrite=replace) as tmp:
        onnx.save_model(proto, str(tmp))
        # Checked on the temp file: a file that fails parity is never renamed into place.
        parity = check_parity(tmp, predictor, images, inputs=inputs)
    say(f"wrote {target} ({target.stat().st_size / 1e6:.2f} MB, {time.perf_counter() - start:.1f} s); parity with "
        f"torch: max |logit difference| {parity['max_abs_diff']:.2e} on {parity['n']:,} {inputs}"
        + (f", max |non-digit score difference| {parity['max_abs_diff_score']:.2e}" if "max_abs_diff_score" in parity
           else ""))

    result: dict[str, Any] = {
        "run": str(rundir.path),
        "model": predictor.name,
        "onnx": str(target),
        "size_bytes": target.stat().st_size,
        "weights_size_bytes": _size(rundir.file(RunDir.WEIGHTS)),
        "opset": got_opset,
        "exporter": exporter,
        "parity": parity,
        "detector": exports_detector(predictor),
        "int8": None,
    }
    if quantize == "int8":
        assert data is not None  # checked above, before the export
        result["int8"] = quantize_int8(target, int8_path(target), predictor, data, cfg, say=say, overwrite=replace)
    if out is None:
        atomic_write_text(rundir.path / EXPORT_DIR / RECORD, json.dumps(result, indent=2) + "\n")
    return result


def run_info(run: RunDir) -> ModelInfo:
    """The model description (model.json) of a run.

    Raises:
        ExportError: missing or unreadable.
    """
    path = run.file(RunDir.MODEL_JSON)
    try:
        return read_model_info(path.read_bytes(), source=str(path))
    except OSError as e:
        raise ExportError(f"{run.path}: no readable {RunDir.MODEL_JSON} ({e.strerror}); not a finished run") from None
    except ModelInfoError as e:
        raise ExportError(str(e)) from None


def _export_sequence(rundir: RunDir, target: Path, *, opset: int, quantize: str | None,
                     say: Callable[[str], None], replace: bool, record: bool) -> dict[str, Any]:
    """``export_onnx`` for a string model: input ``(N, 1, H, W)`` standardised lines, output ``ONNX_LOG_PROBS``
    ``(N, W / 4, C)``, batch and width dynamic (TorchScript exporter: it keeps the LSTM's width symbolic), the
    model description and the reading policy in the metadata; parity at two batch sizes and widths."""
    from digitlab.inference.sequence import StringReader

    if quantize is not None:
        raise ExportError(f"{rundir.path}: a string model exports in float32 only (INT8 covers the digit classifiers)")
    reader = StringReader.from_path(rundir.path, backend="torch", device="cpu")
    model = reader.backend.model  # type: ignore[attr-defined]
    say(f"exporting {reader.info.name} (a string model) to ONNX (opset {opset}, dynamic batch and width)")
    start = time.perf_counter()
    h, w = reader.height, int((reader.info.args.get("input_size") or (0, 128))[1])
    example = torch.from_numpy(_random_lines(EXAMPLE_BATCH, h, w, reader, seed=0))
    buffer = io.BytesIO()
    try:
        with _quiet():
            torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset,
                              input_names=[ONNX_INPUT], output_names=[ONNX_LOG_PROBS],
                              dynamic_axes={ONNX_INPUT: {0: BATCH_AXIS, 3: WIDTH_AXIS},
                                            ONNX_LOG_PROBS: {0: BATCH_AXIS, 1: FRAMES_AXIS}})
    except Exception as e:  # the tracer's failures have no common type
        raise ExportError(f"{reader.info.name}: cannot export to ONNX: {type(e).__name__}: {first_line(e)}") from None
    proto = onnx.load_model_from_string(buffer.getvalue())
    meta = {META_MODEL: reader.info.model_dump_json(), META_VERSION: __version__}
    policy = rundir.path / READING_FILE
    if policy.is_file():
        meta[META_READING] = json.dumps(json.loads(policy.read_text(encoding="utf-8")))
    set_metadata(proto, meta)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{reader.info.name}: the exported graph fails onnx.checker: {first_line(e)}") from None
    _check_batch_axis(proto)
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 4 or not dims[3].dim_param:
            raise ExportError(f"the exported graph's {value.name!r} has a fixed width; a string model reads any width")
    inputs = "random lines (" + ", ".join(f"{n} x {w}" for n, w in SEQUENCE_PARITY) + " px)"
    with atomic_path(target, overwrite=replace) as tmp:
        onnx.save_model(proto, str(tmp))
        parity = _sequence_parity(tmp, reader, inputs=inputs)  # on the temp file: a failure is never renamed in
    say(f"wrote {target} ({target.stat().st_size / 1e6:.2f} MB, {time.perf_counter() - start:.1f} s); parity with "
        f"torch: max |log-probability difference| {parity['max_abs_diff']:.2e} on {inputs}")
    result: dict[str, Any] = {
        "run": str(rundir.path),
        "model": reader.info.name,
        "kind": "sequence",
        "onnx": str(target),
        "size_bytes": target.stat().st_size,
        "weights_size_bytes": _size(rundir.file(RunDir.WEIGHTS)),
        "opset": _default_opset(proto),
        "exporter": "torchscript",
        "parity": parity,
        "detector": False,
        "int8": None,
    }
    if record:
        atomic_write_text(rundir.path / EXPORT_DIR / RECORD, json.dumps(result, indent=2) + "\n")
    return result


def _random_lines(n: int, h: int, w: int, reader: Any, *, seed: int) -> np.ndarray:
    """``n`` standardised lines of uniform noise in [0, 1] (every pixel value the model can be fed)."""
    from digitlab.inference.sequence import standardize_lines

    return standardize_lines(np.random.default_rng(seed).random((n, 1, h, w), dtype=np.float32), reader.spec)


def _sequence_parity(path: Path, reader: Any, *, inputs: str) -> dict[str, Any]:
    """Log-probabilities of the ONNX file against torch's at ``SEQUENCE_PARITY``'s batch sizes and widths.

    Raises:
        ExportError: a difference above ``PARITY_TOLERANCE`` (or a NaN), or a wrong output shape.
    """
    sess = session(path)
    diff, n = 0.0, 0
    for i, (batch, width) in enumerate(SEQUENCE_PARITY):
        x = _random_lines(batch, reader.height, width, reader, seed=i + 1)
        (got,) = sess.run([ONNX_LOG_PROBS], {ONNX_INPUT: x})
        want = reader.backend.log_probs(x)
        if got.shape != want.shape:
            raise ExportError(f"{reader.info.name}: the ONNX output is {got.shape} for a {batch} x {width} batch, "
                              f"torch's {want.shape}; the file was not written")
        diff, n = max(diff, _max_diff(got, want)), n + batch
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"{reader.info.name}: the ONNX log-probabilities differ from torch's by up to {diff:.3g} "
                          f"on {inputs} (tolerance {PARITY_TOLERANCE:g}); the file was not written")
    return {"max_abs_diff": diff, "n": n, "inputs": inputs, "tolerance": PARITY_TOLERANCE,
            "shapes": [list(s) for s in SEQUENCE_PARITY]}


def load_torch_predictor(run_path: str | os.PathLike[str]) -> Predictor:
    """The run's model on CPU, refusing a classical one (ONNX export is for networks).

    Raises:
        ExportError: a scikit-learn run. PredictorError: a run whose model cannot be loaded.
    """
    predictor = Predictor.from_run(run_path, device="cpu")
    if predictor.kind != "torch":
        raise ExportError(f"{run_path}: a {predictor.kind} ({predictor.name}) run; export covers torch networks "
                          "only (cnn, lenet5, mlp, resnet, rnn)")
    return predictor


def exports_detector(predictor: Predictor) -> bool:
    """Whether the export carries the run's non-digit detector (loaded, with a threshold chosen for it)."""
    return predictor.has_detector and predictor.detector_threshold is not None


def onnx_metadata(predictor: Predictor) -> dict[str, str]:
    """The metadata_props an exported file carries (keys from ``inference.formats``): the model description,
    the rejection policy (when the run has one) and the version."""
    meta = {META_MODEL: predictor.info.model_dump_json(), META_VERSION: __version__}
    if predictor.rejection is not None:
        meta[META_REJECTION] = predictor.rejection.policy.model_dump_json()
    return meta


def set_metadata(proto: onnx.ModelProto, meta: dict[str, str]) -> None:
    """Set ``meta`` in ``proto.metadata_props``, keeping entries under other keys."""
    kept = {p.key: p.value for p in proto.metadata_props if p.key not in meta}
    onnx.helper.set_model_props(proto, {**kept, **meta})


def check_parity(path: str | os.PathLike[str], predictor: Predictor, images: np.ndarray, *,
                 inputs: str) -> dict[str, Any]:
    """Logits (and non-digit scores, when the file has the detector) of the ONNX file against torch's on the
    same raw images, through the same spec.

    Raises:
        ExportError: a difference above ``PARITY_TOLERANCE`` (or a NaN).
    """
    sess = session(path)
    with_score = ONNX_SCORE in {o.name for o in sess.get_outputs()}
    if with_score:
        torch_logits, torch_score = predictor.logits_and_nondigit(images, batch_size=BATCH)
        onnx_logits, onnx_score = onnx_outputs(sess, images, predictor)
    else:
        torch_logits, onnx_logits = predictor.logits(images, batch_size=BATCH), onnx_scores(sess, images, predictor)
    diff = _max_diff(onnx_logits, torch_logits)
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"{predictor.name}: the ONNX logits differ from torch's by up to {diff:.3g} on {inputs} "
                          f"(tolerance {PARITY_TOLERANCE:g}); the file was not written")
    out: dict[str, Any] = {"max_abs_diff": diff, "n": len(images), "inputs": inputs, "tolerance": PARITY_TOLERANCE}
    if with_score:
        diff = _max_diff(onnx_score, torch_score)
        if not diff <= PARITY_TOLERANCE:
            raise ExportError(f"{predictor.name}: the ONNX non-digit scores differ from torch's by up to {diff:.3g} "
                              f"on {inputs} (tolerance {PARITY_TOLERANCE:g}); the file was not written")
        out["max_abs_diff_score"] = diff
    return out


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max()) if len(a) else 0.0


def session(path: str | os.PathLike[str]) -> ort.InferenceSession:
    """An onnxruntime CPU session (warnings off: the one-line errors say what matters).

    Raises:
        ExportError: onnxruntime cannot load the file.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except (RuntimeError, ValueError) as e:  # onnxruntime's Fail / InvalidGraph / NotImplemented
        raise ExportError(f"{path}: onnxruntime cannot load it: {first_line(e)}") from None


def onnx_scores(sess: ort.InferenceSession, images: np.ndarray, predictor: Predictor) -> np.ndarray:
    """Logits ``(N, n_classes)`` of an ONNX session for raw uint8 images, normalised by the run's spec."""
    return run_onnx(sess, images, predictor.spec, [ONNX_OUTPUT], batch_size=BATCH)[0]


def onnx_outputs(sess: ort.InferenceSession, images: np.ndarray, predictor: Predictor) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(N, n_classes)`` and non-digit scores ``(N,)`` of a session whose graph has the detector."""
    logits, score = run_onnx(sess, images, predictor.spec, [ONNX_OUTPUT, ONNX_SCORE], batch_size=BATCH)
    return logits, score


def quantize_int8(fp32_path: Path, target: Path, predictor: Predictor, data: Dataset, cfg: RunConfig, *,
                  say: Callable[[str], None], overwrite: bool = True) -> dict[str, Any]:
    """Static QDQ INT8 quantization of ``fp32_path`` into ``target``, then fp32 vs INT8 on the test split.

    The activation ranges come from ``CALIBRATION_SAMPLES`` images of the run's training split (never
    validation or test). Weights are quantized per channel or per tensor, whichever agrees more often
    with the fp32 model on held-out validation images. A non-digit detector in the graph stays float32
    (the nodes only its score depends on are left out of quantization: its inputs mix scales, from a
    confidence in [0, 1] to energies of tens, that one uint8 range would blur).
    """
    start = time.perf_counter()
    train_idx, val_idx = split_train_val(data.train_labels, n_val=cfg.data.n_val, seed=cfg.data.split_seed)
    rng = np.random.default_rng(cfg.seed)
    calib_idx = np.sort(rng.choice(train_idx, size=min(CALIBRATION_SAMPLES, len(train_idx)), replace=False))
    # The choice of per-channel weights sees validation images; with no validation split, training
    # images that calibration did not use.
    held_out = val_idx if len(val_idx) else np.setdiff1d(train_idx, calib_idx)
    select_idx = np.sort(rng.choice(held_out, size=min(SELECTION_SAMPLES, len(held_out)), replace=False))
    calib = _normalized(predictor, data.train_images[calib_idx])
    batches = [{ONNX_INPUT: calib[i : i + CALIBRATION_BATCH]} for i in range(0, len(calib), CALIBRATION_BATCH)]
    say(f"INT8: calibrating on {len(calib_idx)} training images; choosing per-channel or per-tensor weights on "
        f"{len(select_idx)} held-out images")

    fp32 = session(fp32_path)
    select_fp32 = onnx_scores(fp32, data.train_images[select_idx], predictor).argmax(axis=1)
    with tempfile.TemporaryDirectory(prefix="digitlab-int8-") as work:
        prepared = Path(work) / "prepared.onnx"
        # Shape inference and graph optimisation first (batch norm folded into the convolutions:
        # fewer tensors to quantize), as onnxruntime recommends before static quantization.
        with _quiet():
            quant_pre_process(str(fp32_path), str(prepared))
        exclude = _detector_only_nodes(prepared)
        candidates: dict[bool, tuple[Path, float]] = {}
        for per_channel in (False, True):
            path = Path(work) / f"int8-{'channel' if per_channel else 'tensor'}.onnx"
            _quantize(prepared, path, batches, per_channel=per_channel, exclude=exclude)
            labels = onnx_scores(session(path), data.train_images[select_idx], predictor).argmax(axis=1)
            candidates[per_channel] = (path, float(np.mean(labels == select_fp32)) if len(labels) else 1.0)
        # Ties go to per-tensor weights: the simpler scheme.
        per_channel = candidates[True][1] > candidates[False][1]
        proto = onnx.load_model(str(candidates[per_channel][0]))
    set_metadata(proto, onnx_metadata(predictor))
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{predictor.name}: the INT8 graph fails onnx.checker: {first_line(e)}") from None
    with atomic_path(target, overwrite=overwrite) as tmp:
        onnx.save_model(proto, str(tmp))
        int8 = session(tmp)
    say(f"INT8: measuring fp32 and INT8 on the {len(data.test_labels):,} test images")
    y = data.test_labels.astype(np.int64)
    pred_fp32 = onnx_scores(fp32, data.test_images, predictor).argmax(axis=1)
    pred_int8 = onnx_scores(int8, data.test_images, predictor).argmax(axis=1)
    acc_fp32, acc_int8 = float(np.mean(pred_fp32 == y)), float(np.mean(pred_int8 == y))
    result = {
        "path": str(target),
        "size_bytes": target.stat().st_size,
        "format": "QDQ",
        "activations": "uint8",
        "weights": "int8",
        "per_channel": per_channel,
        "selection_agreement": {"per_tensor": candidates[False][1], "per_channel": candidates[True][1],
                                "n": len(select_idx), "split": "val" if len(val_idx) else "train (held out)"},
        "calibration": {"split": "train", "n": len(calib_idx), "method": "minmax"},
        "n_test": len(y),
        "accuracy_fp32": acc_fp32,
        "accuracy_int8": acc_int8,
        "drop_points": round(100 * (acc_fp32 - acc_int8), 6),  # float noise off: 0.01, not 0.009999...
        "agreement": float(np.mean(pred_fp32 == pred_int8)),
        "detector": None,
        "seconds": time.perf_counter() - start,
    }
    if exclude:
        _, score_fp32 = onnx_outputs(fp32, data.test_images, predictor)
        _, score_int8 = onnx_outputs(int8, data.test_images, predictor)
        t_det = predictor.detector_threshold
        result["detector"] = {"quantized": False, "nodes_kept_float": len(exclude),
                              "max_abs_diff_score": _max_diff(score_int8, score_fp32),
                              "flag_agreement": (float(np.mean((score_fp32 > t_det) == (score_int8 > t_det)))
                                                 if t_det is not None else None)}
        result["seconds"] = time.perf_counter() - start
    say(f"wrote {target} ({result['size_bytes'] / 1e6:.2f} MB, {'per-channel' if per_channel else 'per-tensor'} "
        f"weights); test accuracy fp32 {acc_fp32:.4f}, INT8 {acc_int8:.4f} (drop {result['drop_points']:.2f} points)")
    return result


class _Batches(CalibrationDataReader):
    """Feeds onnxruntime's calibrator the prepared batches, once."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _detector_only_nodes(path: Path) -> list[str]:
    """Names of the nodes that only the non-digit score depends on (none without one); nodes without a
    name are named first, in the file, so that the quantizer can be told to leave them alone."""
    proto = onnx.load_model(str(path))
    outputs = {o.name for o in proto.graph.output}
    if ONNX_SCORE not in outputs or ONNX_OUTPUT not in outputs:
        return []
    named = set()
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            node.name = f"digitlab_node_{i}"
            named.add(node.name)
    producer = {t: node for node in proto.graph.node for t in node.output}

    def ancestors(tensor: str) -> set[str]:
        seen: set[str] = set()
        stack = [tensor]
        while stack:
            node = producer.get(stack.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                stack.extend(node.input)
        return seen

    if named:
        onnx.save_model(proto, str(path))
    return sorted(ancestors(ONNX_SCORE) - ancestors(ONNX_OUTPUT))


def _quantize(prepared: Path, out: Path, batches: list[dict[str, np.ndarray]], *, per_channel: bool,
              exclude: list[str] | None = None) -> None:
    try:
        with _quiet():
            quantize_static(
                str(prepared), str(out), _Batches(batches),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                nodes_to_exclude=exclude or [],
                # 7-bit weights: u8 x s8 products saturate in the AVX2/AVX-512 kernels of CPUs without
                # VNNI, which per-channel scales make likelier (onnxruntime's quantization guide;
                # docs/decisions.md#int8).
                reduce_range=per_channel,
                calibrate_method=CalibrationMethod.MinMax,
            )
    except (RuntimeError, ValueError) as e:
        raise ExportError(f"INT8 quantization failed: {first_line(e)}") from None


def _to_onnx(predictor: Predictor, opset: int, say: Callable[[str], None]) -> tuple[onnx.ModelProto, str]:
    """The network as an ONNX graph with a symbolic batch axis, and which exporter made it.

    The dynamo exporter (torch.export + onnxscript) first. The TorchScript exporter (``dynamo=False``)
    only where that one fails: torch.export and onnxscript reject some models (data-dependent control
    flow, ops without a translation yet), and the dynamo exporter writes opset 18 and converts down,
    which fails for some ops (LSTM, ResNet's ReduceMean), while the TorchScript one writes the asked
    opset directly.
    """
    h, w = predictor.spec.input_size
    example = torch.from_numpy(_normalized(predictor, np.zeros((EXAMPLE_BATCH, h, w), dtype=np.uint8)))
    module, outputs = _graph_module(predictor)
    try:
        with _quiet():
            program = torch.onnx.export(
                module, (example,), dynamo=True, opset_version=opset, verbose=False,
                input_names=[ONNX_INPUT], output_names=outputs,
                dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS)},),
            )
    # torch.export and onnxscript raise many unrelated types (UserError, constraint violations, missing
    # translations): whichever it is, the TorchScript exporter gets its chance.
    except Exception as e:
        say(f"the dynamo exporter failed ({type(e).__name__}: {first_line(e)}); using the TorchScript exporter")
        return _to_onnx_torchscript(predictor, example, opset), "torchscript"
    proto = program.model_proto
    got = _default_opset(proto)
    if got == opset:
        return proto, "dynamo"
    say(f"the dynamo exporter wrote opset {got}, not {opset}; using the TorchScript exporter")
    try:
        return _to_onnx_torchscript(predictor, example, opset), "torchscript"
    except ExportError as e:
        say(f"{e}; keeping the dynamo exporter's graph at opset {got}")
        return proto, "dynamo"


def _graph_module(predictor: Predictor) -> tuple[torch.nn.Module, list[str]]:
    """What is traced, and its output names: the network, or the network and its detector."""
    if exports_detector(predictor):
        assert predictor.rejection is not None and predictor.rejection.detector is not None
        return ScoredModel(predictor.model, predictor.rejection.detector).eval(), [ONNX_OUTPUT, ONNX_SCORE]
    return predictor.model, [ONNX_OUTPUT]


def _to_onnx_torchscript(predictor: Predictor, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    module, outputs = _graph_module(predictor)
    try:
        with _quiet():
            torch.onnx.export(
                module, (example,), buffer, dynamo=False, opset_version=opset,
                input_names=[ONNX_INPUT], output_names=outputs,
                dynamic_axes={ONNX_INPUT: {0: BATCH_AXIS}, **{name: {0: BATCH_AXIS} for name in outputs}},
            )
    except Exception as e:  # as above: the tracer's failures have no common type
        raise ExportError(f"{predictor.name}: cannot export to ONNX: {type(e).__name__}: {first_line(e)}") from None
    return onnx.load_model_from_string(buffer.getvalue())


def _check_batch_axis(proto: onnx.ModelProto) -> None:
    """The first axis of the input and the output must be symbolic, or batch sizes other than the
    example's would fail at run time."""
    for value in (*proto.graph.input, *proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            raise ExportError(f"the exported graph's {value.name!r} has a fixed batch size; cannot export a "
                              "model whose batch size is baked into its graph")


def _normalized(predictor: Predictor, images: np.ndarray) -> np.ndarray:
    """Raw uint8 images -> the model's float32 ``(N, 1, H, W)`` input, by the run's spec."""
    return predictor.spec.normalize_array(images)


def _default_opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _run_config(run: RunDir) -> RunConfig:
    try:
        return read_run_config(run.file(RunDir.CONFIG))
    except ConfigError as e:
        raise ExportError(str(e)) from None


def _dataset_name(predictor: Predictor, cfg: RunConfig) -> str:
    return str(predictor.info.dataset or cfg.data.dataset)


def _load_data(predictor: Predictor, cfg: RunConfig, *, download: bool,
               say: Callable[[str], None]) -> Dataset | None:
    """The run's dataset, or None (with a logged line) when it cannot be loaded or does not fit the model."""
    name = _dataset_name(predictor, cfg)
    try:
        data = load_dataset(name, cfg.data.data_dir, download=download)
    except DataError as e:
        say(f"dataset {name} not available ({first_line(e)}): checking parity on random images instead")
        return None
    if data.spec.n_classes != predictor.n_classes or tuple(data.test_images.shape[1:]) != predictor.spec.input_size:
        say(f"dataset {name} does not match the model's classes or input size: checking parity on random images")
        return None
    return data


def _size(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() else None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' and quantizer's progress prints, warnings and log lines (library code prints
    nothing; what matters comes back as results or one-line errors)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "root")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
