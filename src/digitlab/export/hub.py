"""A hub-ready folder of a torch run: weights, ONNX, the model description, the rejection file and a model card.

Usage::

    folder = export_hub("runs/20261121-101500-cnn-default")      # RUN/export/hub/
    Predictor.from_path(folder)                                   # reads it back

The layout is the one ``digitlab.inference.formats`` documents (config.json, model.safetensors,
model.onnx, rejection.safetensors when the run has one, README.md). The folder is
built beside its target and renamed into place, so a reader never sees a half-written one; an
existing folder is replaced only when it is a digitlab hub folder.
"""

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from digitlab import __version__
from digitlab.core.rundir import RunDir, check_output
from digitlab.export.errors import ExportError
from digitlab.export.onnx import (
    DEFAULT_OPSET,
    EXPORT_DIR,
    export_onnx,
    exports_detector,
    load_torch_predictor,
    run_info,
)
from digitlab.inference.formats import (
    HUB_CARD,
    HUB_CONFIG,
    HUB_ONNX,
    HUB_WEIGHTS,
    ONNX_INPUT,
    ONNX_LOG_PROBS,
    ONNX_OUTPUT,
    ONNX_SCORE,
    READING_FILE,
    ModelInfo,
)
from digitlab.inference.predictor import Predictor
from digitlab.inference.rejection import REJECTION_FILE
from digitlab.models import get_entry

HUB_DIR = "hub"
EVAL_METRICS = Path("eval") / "metrics.json"  # written by `digitlab evaluate`
# Hub dataset ids of the registered datasets (the card's `datasets:` links to them).
HUB_DATASETS = {"mnist": "mnist", "fashion-mnist": "fashion_mnist"}
DATASET_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


def default_hub_path(run: str | os.PathLike[str]) -> Path:
    """Where ``export_hub`` writes when given no ``out``: ``RUN/export/hub/``."""
    return Path(run) / EXPORT_DIR / HUB_DIR


def is_hub_folder(path: str | os.PathLike[str]) -> bool:
    """A folder ``export_hub`` wrote (its config.json names a digitlab version)."""
    try:
        config = json.loads((Path(path) / HUB_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "digitlab_version" in config


def export_hub(run: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
               opset: int = DEFAULT_OPSET, log: Callable[[str], None] | None = None) -> Path:
    """Write the hub folder of a torch run (a digit classifier or a string model).

    Args:
        run: a run directory written by ``digitlab train`` (evaluated or not: the card says which).
        out: the folder (default ``RUN/export/hub``); an existing one must be a digitlab hub folder.
        opset: the ONNX opset of model.onnx.
        log: a callable taking one progress line, or None.

    Returns:
        The folder.

    Raises:
        ExportError: a classical run, a failed ONNX export, an ``out`` that exists and is something else.
    """
    say = log or (lambda _msg: None)
    rundir = RunDir.open(run)
    info = run_info(rundir)
    predictor = load_torch_predictor(rundir.path) if info.kind != "sequence" else None
    target = Path(out) if out is not None else default_hub_path(rundir.path)
    if out is not None:  # never one of a run's own folders; an existing hub folder is replaced (below)
        check_output(target, force=True)
    if target.exists() and not (target.is_dir() and (is_hub_folder(target) or not any(target.iterdir()))):
        raise ExportError(f"{target}: exists and is not a digitlab hub folder; choose another --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        os.chmod(work, 0o777 & ~_umask())  # mkdtemp makes it private; the folder is meant to be shared
        onnx_result = export_onnx(rundir.path, work / HUB_ONNX, opset=opset, log=say)
        shutil.copyfile(rundir.file(RunDir.WEIGHTS), work / HUB_WEIGHTS)
        config = {**info.model_dump(mode="json"), "digitlab_version": __version__}
        (work / HUB_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if predictor is None:  # a string model: its reading policy, and a card that says it reads strings
            if (rundir.path / READING_FILE).is_file():
                shutil.copyfile(rundir.path / READING_FILE, work / READING_FILE)
            sequence_card(rundir, info, onnx_result).save(work / HUB_CARD)
        else:
            if predictor.rejection is not None:  # its detector is the one model.onnx carries, for the torch backend
                shutil.copyfile(rundir.file(REJECTION_FILE), work / REJECTION_FILE)
            metrics = read_eval_metrics(rundir, predictor, say)
            model_card(rundir, predictor, metrics, onnx_result).save(work / HUB_CARD)
        _swap_into_place(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # gone already when it was renamed into place
    say(f"wrote {target}/ ({', '.join(sorted(p.name for p in target.iterdir()))})")
    return target


def read_eval_metrics(run: RunDir, predictor: Predictor, say: Callable[[str], None]) -> dict[str, Any] | None:
    """``RUN/eval/metrics.json`` when it measured this model on its own dataset's test split, else None."""
    path = run.path / EVAL_METRICS
    if not path.is_file():
        say(f"{run.path}: not evaluated (`digitlab evaluate RUN` first to put metrics in the card)")
        return None
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
        needed = (m["accuracy"], m["macro_avg"]["f1"], m["ece"], m["calibration"]["ece_after"],
                  m["calibration"]["temperature"])
        split, dataset = m["split"], m["dataset"]
    except (OSError, ValueError, KeyError, TypeError):
        needed, split, dataset = (), None, None
    if not needed or not all(isinstance(v, int | float) for v in needed):
        say(f"{path}: unreadable or from another digitlab: the card reports no metrics")
        return None
    own = predictor.info.dataset
    if split != "test" or (own and dataset != own):
        say(f"{path}: measured on {dataset} {split}, not the {own} test split: the card reports no metrics")
        return None
    return m


def model_card(run: RunDir, predictor: Predictor, metrics: dict[str, Any] | None,
               onnx_result: dict[str, Any]) -> ModelCard:
    """The README.md of the hub folder: YAML metadata (model-index when evaluated) and the sections."""
    cfg = _read_yaml(run.file(RunDir.CONFIG))
    cfg_text = _read_text(run.file(RunDir.CONFIG))
    results = _read_json(run.file(RunDir.RESULTS))
    dataset = str(predictor.info.dataset or (cfg.get("data") or {}).get("dataset") or "mnist")
    title = DATASET_TITLES.get(dataset, dataset)
    recipe = str(cfg.get("recipe") or "custom")
    model_name = f"digitlab-{predictor.name}-{recipe}"
    calibrated = predictor.rejection is not None
    eval_results = None
    if metrics is not None:
        ece = metrics["calibration"]["ece_after"] if calibrated else metrics["ece"]
        common = {"task_type": "image-classification", "dataset_type": HUB_DATASETS.get(dataset, dataset),
                  "dataset_name": title, "dataset_split": "test"}
        eval_results = [
            EvalResult(**common, metric_type="accuracy", metric_value=round(metrics["accuracy"], 6),
                       metric_name="Accuracy"),
            EvalResult(**common, metric_type="f1", metric_value=round(metrics["macro_avg"]["f1"], 6),
                       metric_name="Macro F1", metric_args={"average": "macro"}),
            EvalResult(**common, metric_type="ece", metric_value=round(ece, 6),
                       metric_name=f"ECE ({'temperature-scaled' if calibrated else 'uncalibrated'}, "
                                   f"{metrics['calibration'].get('bins', 15)} bins)"),
        ]
    data = ModelCardData(
        license="mit",
        library_name="digitlab",
        datasets=[HUB_DATASETS.get(dataset, dataset)],
        pipeline_tag="image-classification",
        tags=["digitlab", "image-classification", "handwritten-digits", dataset, predictor.name, "onnx",
              "safetensors"],
        model_name=model_name,
        metrics=["accuracy", "f1", "ece"] if metrics is not None else None,
        eval_results=eval_results,
    )
    body = _card_body(model_name, title, recipe, cfg, cfg_text, results, predictor, metrics, onnx_result)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _card_body(model_name: str, title: str, recipe: str, cfg: dict[str, Any], cfg_text: str, results: dict[str, Any],
               predictor: Predictor, metrics: dict[str, Any] | None, onnx_result: dict[str, Any]) -> str:
    spec = predictor.spec
    n_params = predictor.info.n_params or sum(p.numel() for p in predictor.model.parameters())
    h, w = spec.input_size
    train, optim, schedule = cfg.get("train") or {}, cfg.get("optim") or {}, cfg.get("schedule") or {}
    data_cfg, augment = cfg.get("data") or {}, cfg.get("augment") or {}
    seconds, device = results.get("train_seconds"), results.get("device")
    trained = (f"{seconds:.0f} s on {device}" if isinstance(seconds, int | float) else "not recorded")
    cal = predictor.rejection.policy if predictor.rejection is not None else None
    parity = onnx_result["parity"]
    n_train = data_cfg.get("train_subset")

    lines = [
        f"# {model_name}",
        "",
        f"A handwritten digit classifier ({predictor.name}, {n_params:,} parameters) trained on {title} with "
        f"digitlab's recipe `{recipe}`. It reads one {h}x{w} grayscale digit and returns "
        f"{predictor.n_classes} class scores ({', '.join(predictor.class_names)}).",
        "",
        "## Model description",
        "",
        f"- **Architecture**: `{predictor.name}`: {get_entry(predictor.name).summary} "
        f"{n_params:,} trainable parameters.",
        f"- **Training recipe**: `{recipe}`" + (f": {cfg['description']}" if cfg.get("description") else "") + ".",
        f"- **Optimisation**: {optim.get('name', '?')} (lr {optim.get('lr', '?')}, weight decay "
        f"{optim.get('weight_decay', 0)}), schedule {schedule.get('name', 'none')}, {train.get('epochs', '?')} "
        f"epochs at batch {train.get('batch_size', '?')}, label smoothing {train.get('label_smoothing', 0)}, "
        f"EMA {train.get('ema_decay') or 'off'}, seed {cfg.get('seed', '?')}.",
        f"- **Augmentation**: {_augment_summary(augment)}.",
        f"- **Data**: the {title} training split"
        + (f" (first {n_train:,} images)" if n_train else "")
        + f", less {data_cfg.get('n_val', 0):,} images held out (stratified, seed {data_cfg.get('split_seed', 0)}) "
        "for model selection and temperature scaling; the test split was used only to measure.",
        f"- **Training time**: {trained}.",
        "",
        "Architecture arguments (`config.json`):",
        "",
        "```json",
        json.dumps(predictor.info.args, indent=2),
        "```",
        "",
        "Files: `model.safetensors` (PyTorch weights), `model.onnx` (opset "
        f"{onnx_result['opset']}, dynamic batch axis; its logits match PyTorch's to {parity['max_abs_diff']:.1e} "
        f"at most on {parity['n']:,} {parity['inputs']}), `config.json` (architecture, classes, and under "
        "`preprocess` the input convention and normalisation)"
        + (", `rejection.safetensors` (temperature, thresholds" + (" and the non-digit detector, which "
           f"`model.onnx` carries as its second output `{ONNX_SCORE}`" if exports_detector(predictor) else "")
           + "; the same policy is in `model.onnx`'s metadata)" if cal else "") + ".",
        "",
        "## Evaluation",
        "",
    ]
    if metrics is not None:
        lo, hi = metrics.get("accuracy_ci95") or (None, None)
        c = metrics["calibration"]
        interval = f" (95% interval {lo:.4f}-{hi:.4f})" if lo is not None and hi is not None else ""
        lines += [
            f"Measured by `digitlab evaluate` on the {title} test split ({metrics.get('n', 0):,} images):",
            "",
            "| metric | value |",
            "|---|---|",
            f"| accuracy | {metrics['accuracy']:.4f}{interval} |",
            f"| errors | {metrics.get('errors', '?')} |",
            f"| macro F1 | {metrics['macro_avg']['f1']:.4f} |",
            f"| ECE, raw softmax | {metrics['ece']:.4f} |",
            f"| ECE, temperature {c['temperature']:.3f} | {c['ece_after']:.4f} |",
        ]
        r = metrics.get("rejection") or {}
        if r.get("threshold") is not None and r.get("coverage") is not None:
            where = (f"the rejection thresholds (confidence {r['threshold']:.3f}, non-digit score "
                     f"{r['detector_threshold']:.3f})" if r.get("detector_threshold") is not None else
                     f"the rejection threshold {r['threshold']:.3f}")
            lines.append(f"| at {where}: answered / error among answered | "
                         f"{r['coverage']:.2%} / {r.get('error_kept', 0):.2%} |")
        lines.append("")
    else:
        lines += ["Not evaluated: this run was exported before `digitlab evaluate` measured it, so this card reports "
                  "no metrics. Run `digitlab evaluate RUN` and export again.", ""]
    lines += [
        "## Intended use",
        "",
        "Reading single handwritten digits (0-9) that have been cut out and prepared like MNIST: fields of forms, "
        "cheque amounts and postal codes after segmentation, coursework and teaching. A baseline to measure "
        "against, not a component to trust unmeasured on your own data.",
        "",
        "## How the input must be prepared",
        "",
        f"The MNIST convention, described by `config.json`'s `preprocess`: a {h}x{w} grayscale image with "
        f"{'light ink on a dark background' if spec.polarity == 'light-on-dark' else 'dark ink on a light background'}"
        f" (invert scans of dark ink on paper), the digit's ink resized to fit a {spec.fit_box}x{spec.fit_box} box "
        f"with its aspect ratio kept and placed in the frame by its "
        f"{'centre of mass' if spec.center == 'mass' else 'bounding box centre'}. Pixels (0-255) are then scaled by "
        f"1/255 and normalised with mean {spec.mean:.4f} and standard deviation {spec.std:.4f}; the networks (both "
        f"files) take that float32 tensor of shape (N, 1, {h}, {w}). `digitlab predict` does all of it from a photo "
        "or scan; a model fed differently from its training is the most common failure of digit recognisers.",
        "",
        "## Limitations",
        "",
        f"- **{title}-style digits only.** Letters, other scripts, printed fonts, colour photos or noisy scans that "
        "were not prepared as above are out of distribution, and the model still answers one of its classes.",
        "- **Single digits.** One digit per image; a number must be segmented into digits first "
        "(`digitlab predict --multi`).",
    ]
    threshold = cal.confidence_threshold if cal is not None else None
    if cal is not None and threshold is not None and exports_detector(predictor):
        lines.append(f"- **Confidence and non-digits.** Probabilities are calibrated by temperature scaling (T = "
                     f"{cal.temperature:.3f}, fitted on {cal.n_val:,} validation images). A "
                     f"prediction is rejected by default when its calibrated confidence is below {threshold:.3f} "
                     f"or when the non-digit detector (a small network on the model's features, trained on the "
                     f"training digits against synthetic letters, scribbles and blobs) scores it above "
                     f"{predictor.detector_threshold:.3f} (both chosen on validation digits: {cal.rule}). Inputs "
                     "unlike both the digits and "
                     "those non-digits can still pass; measure on data like yours.")
    elif cal is not None and threshold is not None:
        lines.append(f"- **Confidence.** Probabilities are calibrated by temperature scaling (T = "
                     f"{cal.temperature:.3f}, fitted on {cal.n_val:,} validation images), and a "
                     f"prediction whose calibrated confidence is below {threshold:.3f} is rejected by default "
                     f"({cal.rule}). Raise it where a wrong digit costs more "
                     "than a rejected one, after measuring on data like yours.")
    elif cal is not None and cal.n_val > 0:
        lines.append(f"- **Confidence.** Probabilities are calibrated by temperature scaling (T = "
                     f"{cal.temperature:.3f}, fitted on {cal.n_val:,} validation images); reject "
                     "answers below a confidence threshold chosen on data like yours rather than trusting every "
                     "prediction.")
    else:
        lines.append("- **Confidence.** No temperature was fitted (`digitlab calibrate` fits one on a run with a "
                     "validation split): raw softmax "
                     "probabilities of networks are usually over-confident, so do not threshold them as they are.")
    lines += [
        f"- **Measured on {title}'s test split.** Accuracy on other handwriting (other writers, pens, scanners) "
        "is lower; measure it on your own data.",
        "",
        "## Usage",
        "",
        "With digitlab (it prepares the input and applies the rejection policy itself):",
        "",
        "```python",
        "from digitlab import Predictor",
        "",
        'predictor = Predictor.from_path("<folder>")        # this folder (or its model.onnx)',
        f"out = predictor.predict(images)                    # images: (N, {h}, {w}) uint8, prepared as above",
        "out.labels, out.confidence, out.rejected",
        'results = predictor.predict_images(["digit.png"])  # real images: prepared by digitlab first',
        "```",
        "",
        "With onnxruntime alone:",
        "",
        "```python",
        "import json",
        "import numpy as np",
        "import onnxruntime as ort",
        "",
        'spec = json.load(open("<folder>/config.json"))["preprocess"]',
        'session = ort.InferenceSession("<folder>/model.onnx")',
        'x = (images.astype(np.float32) * spec["scale"] - spec["mean"]) / spec["std"]   '
        f"# (N, {h}, {w}) uint8 -> float32",
        f'logits = session.run(["{ONNX_OUTPUT}"], {{"{ONNX_INPUT}": x[:, None]}})[0]       '
        f"# (N, {predictor.n_classes})",
        "labels = logits.argmax(axis=1)",
    ]
    if exports_detector(predictor):
        lines += [
            f'score = session.run(["{ONNX_SCORE}"], {{"{ONNX_INPUT}": x[:, None]}})[0]   '
            "# (N,): not digit-like above the policy's detector_threshold",
        ]
    if cal is not None:
        lines += [
            'policy = json.loads(session.get_modelmeta().custom_metadata_map["digitlab.rejection"])',
            'temperature = policy["temperature"]   # and policy["confidence_threshold"], policy["detector_threshold"]',
            "z = logits / temperature",
            "proba = np.exp(z - z.max(axis=1, keepdims=True))",
            "proba /= proba.sum(axis=1, keepdims=True)",
        ]
    lines += [
        "```",
        "",
        "## Training configuration",
        "",
        "<details><summary>config.yaml (the resolved recipe: <code>digitlab train --recipe config.yaml</code> "
        "reproduces the run)</summary>",
        "",
        "```yaml",
        cfg_text.rstrip() or "# not available",
        "```",
        "",
        "</details>",
        "",
        f"Exported by digitlab {__version__}.",
        "",
    ]
    return "\n".join(lines)


def sequence_card(run: RunDir, info: ModelInfo, onnx_result: dict[str, Any]) -> ModelCard:
    """The README.md of a string model's hub folder: it reads whole lines of handwritten digits."""
    cfg, cfg_text, results = _read_yaml(run.file(RunDir.CONFIG)), _read_text(run.file(RunDir.CONFIG)), \
        _read_json(run.file(RunDir.RESULTS))
    recipe = str(cfg.get("recipe") or "custom")
    model_name = f"digitlab-{info.name}-{recipe}"
    spec, args, parity = info.preprocess, info.args, onnx_result["parity"]
    alphabet = str(args.get("alphabet", ""))
    h = int((args.get("input_size") or (32,))[0])
    n_params = info.n_params
    policy = _read_json(run.path / READING_FILE)
    threshold = policy.get("min_confidence")
    test_acc = results.get("test_acc")
    data = ModelCardData(license="mit", library_name="digitlab", pipeline_tag="image-to-text",
                         datasets=[HUB_DATASETS.get(str(info.dataset or "mnist"), str(info.dataset or "mnist"))],
                         tags=["digitlab", "ocr", "handwritten-digits", "digit-strings", "ctc", info.name, "onnx",
                               "safetensors"], model_name=model_name)
    lines = [
        f"# {model_name}",
        "",
        f"A reader of handwritten digit strings ({info.name}"
        + (f", {n_params:,} parameters" if n_params else "") + "): amounts, dates and codes as they are written, "
        f"one line per image, read whole (no segmentation into digits). It reads the digits and the separators "
        f"`{' '.join(c for c in alphabet if not c.isdigit())}` (alphabet `{alphabet}`) and gives each character a "
        "confidence. Trained with digitlab's recipe "
        f"`{recipe}` on synthetic strings drawn from MNIST training digits (touching and overlapping digits, "
        "separators, underlines, ruled lines, cheque-like paper, blur, noise).",
        "",
        "## Model description",
        "",
        f"- **Architecture**: `{info.name}`: {get_entry(info.name).summary}",
        f"- **Input**: a line {h} px tall and any width (a multiple of 4): light ink on a dark background, the digits' "
        f"body about 0.72 of the height with its bottom at 0.8 of it, pixels in [0, 1] standardised with mean "
        f"{spec.mean:.4f} and standard deviation {spec.std:.4f}: float32 `(N, 1, {h}, W)`.",
        f"- **Output**: `{ONNX_LOG_PROBS}`, CTC log-probabilities `(N, W / 4, {1 + len(alphabet)})`: class 0 is "
        "the blank, class k + 1 the alphabet's k-th character; decode by best path (collapse repeats, drop blanks) "
        "or prefix beam search.",
        "- **Test strings read whole**: " + (f"{test_acc:.2%} of synthetic test strings (MNIST test digits)."
                                             if isinstance(test_acc, int | float) else "not recorded."),
        "",
        "Files: `model.safetensors` (PyTorch weights), `model.onnx` (opset "
        f"{onnx_result['opset']}, dynamic batch and width; its log-probabilities match PyTorch's to "
        f"{parity['max_abs_diff']:.1e} at most on {parity['inputs']}), `config.json` (architecture, alphabet, "
        "preprocessing)" + (", `reading.json` (the reading policy, also in `model.onnx`'s metadata)"
                            if threshold is not None else "") + ".",
        "",
        "## Intended use and limitations",
        "",
        "- Reading short handwritten numbers written on one line: cheque amounts, dates, postal codes, form fields. "
        "Crop the line first (a region of a form); several lines in one image are not read.",
        "- Digits and the separators above only: letters, currency signs and other symbols are read as the nearest "
        "character or dropped.",
        "- Trained on synthetic strings: accuracy on real handwriting (other writers, pens, scanners) is lower; "
        "measure it on data like yours, and fine-tune on your labelled strings (`digitlab train --init RUN "
        "--strings DIR`).",
        ("- **Confidence.** A string's confidence is the product of its characters' confidences; the reader "
         f"rejects strings below {threshold:.3f} by default (chosen on validation strings)."
         if isinstance(threshold, int | float) else
         "- **Confidence.** A string's confidence is the product of its characters' confidences; no threshold was "
         "fitted, so every string is answered."),
        "",
        "## Usage",
        "",
        "```python",
        "from digitlab.inference import StringReader",
        "",
        'reader = StringReader.from_path("<folder>")     # this folder (or its model.onnx)',
        'reading = reader.read_one("amount.png")       # any scan or photo of one line',
        "reading.text, reading.digits, reading.confidence, reading.rejected",
        "```",
        "",
        "## Training configuration",
        "",
        "```yaml",
        cfg_text.rstrip() or "# not available",
        "```",
        "",
        f"Exported by digitlab {__version__}.",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _augment_summary(augment: dict[str, Any]) -> str:
    """The augmentation settings that are on, in words."""
    parts = []
    if augment.get("rotation"):
        parts.append(f"rotation +-{augment['rotation']} deg")
    if augment.get("translate"):
        parts.append(f"translation +-{augment['translate']:.0%}")
    scale = augment.get("scale") or [1.0, 1.0]
    if tuple(scale) != (1.0, 1.0):
        parts.append(f"scale {scale[0]}-{scale[1]}")
    for key, words in (("shear", "shear +-{} deg"), ("elastic_alpha", "elastic distortion (alpha {})"),
                       ("contrast", "contrast +-{}"), ("noise_std", "noise (std {})"), ("erasing", "erasing (p {})")):
        if augment.get(key):
            parts.append(words.format(augment[key]))
    return ", ".join(parts) if parts else "none"


def _swap_into_place(work: Path, target: Path) -> None:
    """Rename the finished ``work`` folder onto ``target``; an old folder there is moved aside first and
    removed after (a directory cannot be renamed over a non-empty one)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, old)
    try:
        os.rename(work, target)
    except OSError:
        if old is not None:
            os.rename(old, target)  # put the previous folder back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
