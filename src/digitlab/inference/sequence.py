"""The string reader: a trained string model (kind ``sequence``, e.g. ``crnn``) reading whole handwritten lines.

Usage::

    reader = StringReader.from_path("runs/20261203-101500-crnn-strings")   # a run, a hub folder or a .onnx file
    reading = reader.read_one("amount.png")
    reading.text, reading.digits, reading.confidence, reading.rejected     # "1.480", "1480", 0.97, None
    readings = reader.read(["a.png", "b.png"], beam=8)                     # batched by width
    readings = reader.read_prepared(lines)                                 # (32, W) float lines in [0, 1]

Each image is prepared by ``inference.lines.prepare_line`` (light ink on dark, the synthetic strings' geometry),
standardised by the model's preprocessing spec exactly as training fed its synthetic lines
(``PreprocessSpec.standardize``: ``(x - mean) / std`` on [0, 1] pixels), run through the model in batches of
lines of similar width, and decoded by CTC (best path, or prefix beam search with ``beam``). A reading's
confidence is the product of its characters' confidences: the chance that every character is right if each
is right with its own confidence, the measure the training loop fits the reading policy's ``min_confidence``
on (``reading.json``: strings below it are rejected; none are when the model has no policy).

Two backends behind one small interface (``SequenceBackend``): torch (a run directory, a hub folder's
safetensors) and ONNX Runtime (an exported file, which carries the model description and the policy in its
metadata).
"""

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from digitlab.core.errors import DigitlabError, first_line
from digitlab.core.rundir import RunDir
from digitlab.data.preprocess import PreprocessSpec
from digitlab.inference.formats import (
    HUB_CONFIG,
    HUB_ONNX,
    HUB_WEIGHTS,
    META_MODEL,
    META_READING,
    ONNX_INPUT,
    ONNX_LOG_PROBS,
    READING_FILE,
    ModelInfo,
    ModelInfoError,
    read_model_info,
)
from digitlab.inference.lines import LINE_HEIGHT, PreparedLine, batch_lines, prepare_line
from digitlab.inference.prepare import Polarity
from digitlab.models.crnn import frame_lengths
from digitlab.models.ctc import ALPHABET, CTCDecoding, ctc_beam_decode, ctc_greedy_decode

REASON_NO_DIGITS = "no digits found"
REASON_UNSURE = "not sure of this string"
DEFAULT_BATCH = 64


class StringReaderError(DigitlabError):
    """A string model that cannot be loaded, or inputs it cannot read."""


@dataclass(frozen=True)
class StringReading:
    """What was read on one line: the text as written (separators kept), per-character confidences, the
    string's confidence, and why it is rejected (None: accepted). ``text`` is the best guess even when rejected."""

    source: str
    text: str
    confidences: tuple[float, ...]  # one per character of ``text``
    confidence: float  # product of the characters' confidences; 0.0 when nothing was read
    rejected: str | None  # the reason in plain words, or None
    found: bool  # False: the image held no ink
    line: PreparedLine | None = None  # how the image was prepared (None for read_prepared's bare arrays)

    @property
    def digits(self) -> str:
        """The digits only: "1.480" -> "1480"."""
        return "".join(c for c in self.text if c.isdigit())

    def __repr__(self) -> str:
        if self.rejected:
            return f"StringReading({self.source!r}: not read, {self.rejected}; best guess {self.text!r})"
        return f"StringReading({self.source!r}: {self.text!r}, confidence {self.confidence:.3f})"

    def record(self) -> dict[str, Any]:
        """As JSON-ready data."""
        line = self.line
        return {"source": self.source, "text": self.text, "digits": self.digits,
                "confidence": round(self.confidence, 6),
                "characters": [{"char": c, "confidence": round(p, 6)}
                               for c, p in zip(self.text, self.confidences, strict=True)],
                "rejected": self.rejected is not None, "reason": self.rejected, "found": self.found,
                "inverted": line.inverted if line is not None else None,
                "box": list(line.box) if line is not None and line.box is not None else None}


class SequenceBackend(Protocol):
    """What the reader needs of a runtime: log-probabilities of a standardised batch."""

    name: str  # "torch" or "onnx"
    device: torch.device

    def log_probs(self, x: np.ndarray) -> np.ndarray:
        """``(N, 1, H, W)`` standardised float32 -> ``(N, W / 4, C)`` float32 CTC log-probabilities."""
        ...


class TorchSequenceBackend:
    name = "torch"

    def __init__(self, model: torch.nn.Module, *, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.device = device

    def log_probs(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()


class OnnxSequenceBackend:
    name = "onnx"

    def __init__(self, session: Any) -> None:
        self.session = session
        self.device = torch.device("cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu")

    def log_probs(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([ONNX_LOG_PROBS], {ONNX_INPUT: x})[0]


def standardize_lines(batch: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Prepared lines in [0, 1] -> the model's input: ``(x - mean) / std``, as ``PreprocessSpec.standardize`` does
    for the synthetic lines in training (in NumPy: the ONNX backend's inputs never become torch tensors)."""
    out = batch.astype(np.float32, copy=True)
    out -= np.float32(spec.mean)
    out /= np.float32(spec.std)
    return out


class StringReader:
    """Whole handwritten lines (amounts, dates, codes) read by a string model, with its reading policy."""

    def __init__(self, info: ModelInfo, backend: SequenceBackend, *, min_confidence: float | None = None,
                 source: Path | None = None) -> None:
        if info.kind != "sequence":
            raise StringReaderError(f"{source or info.name}: {info.name} is a digit classifier, not a string model")
        self.info = info
        self.backend = backend
        self.min_confidence = min_confidence
        self.source = source
        self.alphabet = str(info.args.get("alphabet", ALPHABET))
        self.height = int((info.args.get("input_size") or (LINE_HEIGHT,))[0])

    def __repr__(self) -> str:
        return (f"StringReader({self.info.name}, {self.backend.name} on {self.backend.device}, "
                f"min_confidence={self.min_confidence}, source={str(self.source)!r})")

    @property
    def spec(self) -> PreprocessSpec:
        return self.info.preprocess

    # ------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], *, backend: str = "auto", device: str = "auto") -> "StringReader":
        """Load a string model from a run directory, a hub folder or an ONNX file.

        Args:
            backend: "auto" (torch where weights exist, else ONNX Runtime), "torch" or "onnx".
            device: "auto" (CUDA when present), "cpu" or "cuda".

        Raises:
            StringReaderError: nothing loadable at ``path``, a digit classifier, or corrupt weights (one line).
        """
        p = Path(path)
        if backend not in ("auto", "torch", "onnx"):
            raise StringReaderError(f"backend {backend!r}: choose from auto, torch, onnx")
        if p.is_file() and p.suffix == ".onnx":
            if backend == "torch":
                raise StringReaderError(f"{p}: an ONNX file runs on ONNX Runtime (backend auto or onnx)")
            return cls._from_onnx(p, device=device)
        if not p.is_dir():
            raise StringReaderError(f"{p}: no such model (want a run directory, a .onnx file or a hub folder)")
        if (p / RunDir.MODEL_JSON).is_file():
            if backend == "onnx":
                raise StringReaderError(f"{p}: a run directory loads with torch; export it first (digitlab export)")
            return cls._from_weights(p, p / RunDir.MODEL_JSON, p / RunDir.WEIGHTS, device=device)
        if (p / HUB_CONFIG).is_file():
            if backend != "onnx" and (p / HUB_WEIGHTS).is_file():
                return cls._from_weights(p, p / HUB_CONFIG, p / HUB_WEIGHTS, device=device)
            if backend != "torch" and (p / HUB_ONNX).is_file():
                return cls._from_onnx(p / HUB_ONNX, device=device)
            raise StringReaderError(f"{p}: a hub folder without {HUB_WEIGHTS if backend == 'torch' else HUB_ONNX}")
        raise StringReaderError(f"{p}: neither a run directory ({RunDir.MODEL_JSON}) nor a hub folder ({HUB_CONFIG})")

    @classmethod
    def _from_weights(cls, folder: Path, info_file: Path, weights: Path, *, device: str) -> "StringReader":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from digitlab.core.config import ConfigError
        from digitlab.models.registry import ModelError, create_model
        from digitlab.models.runtime import resolve_device

        info = _sequence_info(_read_text(info_file), source=str(info_file))
        if not weights.is_file():
            raise StringReaderError(f"{folder}: no {weights.name} (not a finished run directory or hub folder)")
        try:
            model = create_model(info.name, **info.args)
            state = load_file(str(weights))
            model.load_state_dict(state)
            dev = resolve_device(device)
        except (ModelError, ConfigError) as e:
            raise StringReaderError(str(e)) from None
        except (RuntimeError, OSError, SafetensorError) as e:
            raise StringReaderError(f"{weights}: cannot load the {info.name} weights its description names: "
                                    f"{first_line(e)}") from None
        bad = next((k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
        if bad is not None:
            raise StringReaderError(f"{weights}: {bad} holds NaN or infinite values: the weights are corrupt")
        policy = folder / READING_FILE
        min_conf = _min_confidence(_read_text(policy), source=str(policy)) if policy.is_file() else None
        return cls(info, TorchSequenceBackend(model, device=dev), min_confidence=min_conf, source=folder)

    @classmethod
    def _from_onnx(cls, path: Path, *, device: str) -> "StringReader":
        import onnxruntime as ort

        from digitlab.inference.predictor import _onnx_providers

        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.intra_op_num_threads = torch.get_num_threads()
            session = ort.InferenceSession(str(path), options, providers=_onnx_providers(ort, device))
            meta = session.get_modelmeta().custom_metadata_map
        except Exception as e:  # onnxruntime raises its own kinds for a corrupt or foreign file
            raise StringReaderError(f"{path}: not a loadable ONNX model ({first_line(e)})") from None
        if META_MODEL not in meta:
            raise StringReaderError(f"{path}: an ONNX file without digitlab's metadata ({META_MODEL}); export it "
                                    "with `digitlab export`")
        info = _sequence_info(meta[META_MODEL], source=f"{path} metadata")
        outputs = [o.name for o in session.get_outputs()]
        if [i.name for i in session.get_inputs()] != [ONNX_INPUT] or ONNX_LOG_PROBS not in outputs:
            raise StringReaderError(f"{path}: the graph does not take {ONNX_INPUT!r} and give {ONNX_LOG_PROBS!r}; "
                                    "export it with `digitlab export`")
        min_conf = _min_confidence(meta[META_READING], source=f"{path} metadata") if META_READING in meta else None
        return cls(info, OnnxSequenceBackend(session), min_confidence=min_conf, source=path)

    # ------------------------------------------------------------------------------------------ reading

    def prepare(self, source: Any, *, polarity: Polarity = "auto",
                box: tuple[int, int, int, int] | None = None) -> PreparedLine:
        """One image prepared for this model (``inference.lines.prepare_line`` at its height)."""
        return prepare_line(source, height=self.height, polarity=polarity, box=box)

    def read(self, sources: Any, *, names: Sequence[str] | None = None, polarity: Polarity = "auto",
             beam: int = 0, min_confidence: float | None = None, batch_size: int = DEFAULT_BATCH,
             box: tuple[int, int, int, int] | None = None) -> list[StringReading]:
        """Images of handwritten lines -> one ``StringReading`` each, in their order.

        Args:
            sources: one image or several: paths, bytes, PIL images or arrays (as ``Predictor.predict_images``).
            names: what to call each in the results (default: its path, else ``#i``).
            beam: 0 for best-path decoding, else the prefix beam search's width.
            min_confidence: reject strings below this confidence instead of the model's policy.
            batch_size: lines per model call.
            box: ``(x, y, width, height)``: read only this region of each image.

        Raises:
            ImageError: an input that is not a readable image (the first one met).
            StringReaderError: as many names as images are needed.
        """
        from digitlab.inference.predictor import as_image_list

        items = as_image_list(sources)
        labels = list(names) if names is not None else [str(s) if isinstance(s, str | os.PathLike) else f"#{i}"
                                                        for i, s in enumerate(items)]
        if len(labels) != len(items):
            raise StringReaderError(f"{len(labels)} names for {len(items)} images")
        prepared = [self.prepare(s, polarity=polarity, box=box) for s in items]
        return self.read_prepared(prepared, names=labels, beam=beam, min_confidence=min_confidence,
                                  batch_size=batch_size)

    def read_one(self, source: Any, **options: Any) -> StringReading:
        """``read`` for one image: its one ``StringReading``."""
        return self.read([source], **options)[0]

    def read_prepared(self, lines: Sequence[PreparedLine | np.ndarray], *, names: Sequence[str] | None = None,
                      beam: int = 0, min_confidence: float | None = None,
                      batch_size: int = DEFAULT_BATCH) -> list[StringReading]:
        """Prepared lines (``PreparedLine`` or ``(H, W)`` float arrays in [0, 1], light ink on dark) -> readings.

        Raises:
            StringReaderError: a line of another height than the model reads, or a bad ``beam``/``batch_size``.
        """
        if beam < 0 or batch_size < 1:
            raise StringReaderError(f"beam must be 0 or more and batch_size 1 or more, got {beam} and {batch_size}")
        labels = list(names) if names is not None else [f"#{i}" for i in range(len(lines))]
        if len(labels) != len(lines):
            raise StringReaderError(f"{len(labels)} names for {len(lines)} lines")
        images = [ln.image if isinstance(ln, PreparedLine) else np.asarray(ln, np.float32) for ln in lines]
        for i, img in enumerate(images):
            if img.ndim != 2 or img.shape[0] != self.height:
                raise StringReaderError(f"{labels[i]}: a line of shape {img.shape}; this model reads "
                                        f"({self.height}, W) lines (prepare_line makes them)")
        found = [i for i, img in enumerate(images)
                 if img.shape[1] > 0 and not (isinstance(lines[i], PreparedLine) and not lines[i].found)]
        decoded: dict[int, CTCDecoding] = {}
        for group in _width_groups([images[i].shape[1] for i in found], batch_size):
            ids = [found[j] for j in group]
            log_probs, lengths = self.log_probs(*batch_lines([images[i] for i in ids]))
            decode = ctc_beam_decode if beam > 0 else ctc_greedy_decode
            kw = {"beam": beam} if beam > 0 else {}
            for i, d in zip(ids, decode(log_probs, lengths, alphabet=self.alphabet, **kw), strict=True):
                decoded[i] = d
        threshold = self.min_confidence if min_confidence is None else min_confidence
        out = []
        for i, line in enumerate(lines):
            prep = line if isinstance(line, PreparedLine) else None
            d = decoded.get(i)
            if d is None:
                out.append(StringReading(labels[i], "", (), 0.0, REASON_NO_DIGITS, False, prep))
                continue
            conf = math.prod(d.confidences) if d.text else 0.0
            digits = any(c.isdigit() for c in d.text)
            reason = REASON_NO_DIGITS if not digits else (
                REASON_UNSURE if threshold is not None and conf < threshold else None)
            out.append(StringReading(labels[i], d.text, d.confidences, conf, reason, True, prep))
        return out

    def log_probs(self, batch: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A zero-padded batch of prepared lines ``(N, 1, H, W)`` in [0, 1] and their widths ``(N,)`` ->
        CTC log-probabilities ``(N, T, C)`` and the frames ``(N,)`` each line spans."""
        lp = self.backend.log_probs(standardize_lines(batch, self.spec))
        lengths = np.minimum(frame_lengths(torch.as_tensor(widths)).numpy(), lp.shape[1])
        return lp, lengths


def _width_groups(widths: list[int], batch_size: int) -> list[list[int]]:
    """Indices of ``widths`` in batches of lines of the same width (widths are multiples of 4, so real lines
    share a few dozen): nothing is padded, so a line reads exactly as it does alone. The recurrent layer reads
    every frame of the batch, and padding read after a line's end changes its backward pass."""
    order = np.argsort(widths, kind="stable")
    groups: list[list[int]] = []
    for j in order.tolist():
        if not groups or len(groups[-1]) >= batch_size or widths[j] != widths[groups[-1][0]]:
            groups.append([])
        groups[-1].append(j)
    return groups


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise StringReaderError(f"{path}: unreadable ({e.strerror})") from None


def _sequence_info(text: str, *, source: str) -> ModelInfo:
    """The model description, which must be a string model's.

    Raises:
        StringReaderError: not a model description, or a digit classifier's.
    """
    try:
        info = read_model_info(text, source=source)
    except ModelInfoError as e:
        raise StringReaderError(str(e)) from None
    if info.kind != "sequence":
        where = source.removesuffix(" metadata")
        raise StringReaderError(f"{where}: {info.name} is a digit classifier, not a string model (use Predictor, or "
                                "train a string model: digitlab train --recipe strings)")
    return info


def _min_confidence(text: str, *, source: str) -> float | None:
    """``min_confidence`` of a reading policy (reading.json); None when it names none.

    Raises:
        StringReaderError: not JSON, or a threshold outside [0, 1].
    """
    try:
        policy = json.loads(text)
    except ValueError as e:
        raise StringReaderError(f"{source}: not a reading policy ({first_line(e)})") from None
    value = policy.get("min_confidence") if isinstance(policy, dict) else None
    if value is None:
        return None
    if not isinstance(value, int | float) or not 0 <= value <= 1:
        raise StringReaderError(f"{source}: min_confidence must be a number in [0, 1], got {value!r}")
    return float(value)
