"""File formats a model travels in: the run directory, ONNX files and hub folders, and the one
description of a model (``ModelInfo``) that all three carry.

The trainer and the export layer write these; ``Predictor.from_path`` reads them. One place for the
names and one reader (``read_model_info``), so the writers and the reader cannot drift apart.

Model description (``ModelInfo``, JSON): ``{"name", "kind", "args", "class_names", "preprocess",
"dataset", "n_params"}``. In a run directory it is ``model.json``; in a hub folder ``HUB_CONFIG``
(config.json); in an ONNX file the metadata property ``META_MODEL``.

Rejection (``inference.rejection``): the ``REJECTION_FILE`` in a run directory and a hub folder (the
policy and the detector's weights); in an ONNX file the policy JSON under ``META_REJECTION``, and the
detector inside the graph as the second output.

String models (kind ``"sequence"``, e.g. ``crnn``): the reading policy is ``READING_FILE`` (reading.json,
``{"min_confidence": float, ...}``: a string whose confidence is below it is rejected) in a run directory and a
hub folder, and the same JSON under ``META_READING`` in an ONNX file. Their ONNX file differs from a digit
model's: input ``ONNX_INPUT`` float32 ``(N, 1, H, W)``, lines prepared by ``inference.lines.prepare_line`` in
[0, 1] then standardised (``(x - mean) / std`` of the spec: ``PreprocessSpec.standardize``), dynamic batch and
width (W a multiple of 4); output ``ONNX_LOG_PROBS`` float32 ``(N, W / 4, 1 + len(alphabet))`` CTC
log-probabilities (class 0 the blank, class k + 1 ``alphabet[k]``).

ONNX file
    input ``ONNX_INPUT``: float32 ``(N, C, H, W)``, already normalised by the preprocessing spec
    (``PreprocessSpec.normalize``: the same code path as the torch backend); dynamic batch axis.
    output ``ONNX_OUTPUT``: float32 ``(N, n_classes)`` logits (uncalibrated).
    output ``ONNX_SCORE`` (only when the run has a non-digit detector): float32 ``(N,)``, the detector's
    non-digit score (a logit: higher is less digit-like).
    metadata_props (strings): ``META_MODEL``, ``META_REJECTION`` (absent when the run has none),
    ``META_VERSION`` the digitlab version that wrote it.

Hub folder (what ``huggingface_hub`` uploads)
    ``HUB_CONFIG`` (the model description), ``HUB_WEIGHTS`` (model.safetensors), ``HUB_ONNX``
    (model.onnx, as above), the rejection file (when the run has one), ``README.md`` (the model card).
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from digitlab.core.errors import DigitlabError, describe_validation_error
from digitlab.data.preprocess import PreprocessSpec

ONNX_INPUT = "input"
ONNX_OUTPUT = "logits"
ONNX_SCORE = "nondigit_score"
ONNX_LOG_PROBS = "log_probs"  # a string model's output

META_MODEL = "digitlab.model"
META_REJECTION = "digitlab.rejection"
META_VERSION = "digitlab.version"
META_READING = "digitlab.reading"  # a string model's reading policy (READING_FILE's JSON)
READING_FILE = "reading.json"

HUB_CONFIG = "config.json"
HUB_WEIGHTS = "model.safetensors"
HUB_ONNX = "model.onnx"
HUB_ONNX_INT8 = "model.int8.onnx"
HUB_CARD = "README.md"


class ModelInfo(BaseModel):
    """What a model is and how it is fed: enough to rebuild it and prepare its inputs."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    kind: Literal["torch", "classical", "sequence"]  # sequence: a string model (CTC over a line)
    args: dict[str, Any]
    class_names: list[str]
    preprocess: PreprocessSpec
    dataset: str | None = None
    n_params: int | None = None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


class ModelInfoError(DigitlabError):
    """A model description that cannot be read."""


def read_model_info(text: str | bytes, *, source: str) -> ModelInfo:
    """The model description in ``text`` (model.json, a hub config.json, or an ONNX file's metadata).

    Raises:
        ModelInfoError: not a digitlab model description (one line naming ``source``).
    """
    try:
        return ModelInfo.model_validate_json(text)
    except ValidationError as e:
        raise ModelInfoError(" ".join(f"{source}: not a digitlab model description: "
                                      f"{describe_validation_error(e)}".split())) from None
