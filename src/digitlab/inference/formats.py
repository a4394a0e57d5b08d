"""File formats a model travels in outside its run directory: ONNX files and hub folders.

The export layer writes these; ``Predictor.from_path`` reads them. One place for the names, so the
writer and the reader cannot drift apart.

ONNX file
    input ``ONNX_INPUT``: float32 ``(N, C, H, W)``, already normalised by the preprocessing spec
    (``PreprocessSpec.normalize``: the same code path as the torch backend); dynamic batch axis.
    output ``ONNX_OUTPUT``: float32 ``(N, n_classes)`` logits (uncalibrated).
    output ``ONNX_SCORE`` (only when the run has a non-digit detector): float32 ``(N,)``, the detector's
    non-digit score (a logit: higher is less digit-like).
    metadata_props (strings): ``META_PREPROCESS`` the spec as JSON, ``META_CLASS_NAMES`` a JSON list,
    ``META_MODEL`` ``{"name", "kind", "args"}`` as JSON, ``META_CALIBRATION`` the calibration JSON
    (absent when the run has none), ``META_DETECTOR`` ``{"output", "threshold", "softmax_threshold",
    "rule"}`` as JSON (only with ``ONNX_SCORE``: reject when the calibrated confidence is below
    ``softmax_threshold`` or the score above ``threshold``), ``META_VERSION`` the digitlab version
    that wrote it.

Hub folder (what ``huggingface_hub`` uploads)
    ``HUB_CONFIG`` (config.json): ``{"name", "kind", "args", "class_names", "digitlab_version"}``,
    ``HUB_WEIGHTS`` (model.safetensors), ``HUB_ONNX`` (model.onnx, as above),
    ``HUB_PREPROCESS`` (preprocessing.json: ``PreprocessSpec.to_json()``),
    ``HUB_CALIBRATION`` (calibration.json, when the run has one), ``HUB_DETECTOR`` (detector.safetensors,
    the non-digit detector, when the run has one: the same file as in the run directory), ``README.md``
    (the model card).
"""

ONNX_INPUT = "input"
ONNX_OUTPUT = "logits"
ONNX_SCORE = "nondigit_score"

META_PREPROCESS = "digitlab.preprocess"
META_CLASS_NAMES = "digitlab.class_names"
META_MODEL = "digitlab.model"
META_CALIBRATION = "digitlab.calibration"
META_DETECTOR = "digitlab.detector"
META_VERSION = "digitlab.version"

HUB_CONFIG = "config.json"
HUB_WEIGHTS = "model.safetensors"
HUB_ONNX = "model.onnx"
HUB_ONNX_INT8 = "model.int8.onnx"
HUB_PREPROCESS = "preprocessing.json"
HUB_CALIBRATION = "calibration.json"
HUB_DETECTOR = "detector.safetensors"
HUB_CARD = "README.md"
