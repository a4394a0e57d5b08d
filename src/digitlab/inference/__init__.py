"""Inference: trained models turned into predictions (the Predictor), real-image preparation, rejection
and digit strings; one preprocessing path.

Usage: ``from digitlab.inference import Predictor`` (or ``from digitlab import Predictor``).

Names load on first use (PEP 562), so importing one part does not import the others (the string reader's
SciPy and scikit-image, say, for a caller that only classifies).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

_WHERE = {
    "ImagePrediction": "predictor",
    "Predictions": "predictor",
    "Predictor": "predictor",
    "PredictorError": "predictor",
    "ImageError": "prepare",
    "Prepared": "prepare",
    "prepare_image": "prepare",
    "Rejection": "rejection",
    "RejectionError": "rejection",
    "RejectionPolicy": "rejection",
    "calibrate_run": "rejection",
    "softmax": "rejection",
    "Digit": "strings",
    "DigitString": "strings",
    "read_digits": "strings",
    "PreparedLine": "lines",
    "batch_lines": "lines",
    "prepare_line": "lines",
    "StringReader": "sequence",
    "StringReaderError": "sequence",
    "StringReading": "sequence",
}
__all__ = [
    "Digit",
    "DigitString",
    "ImageError",
    "ImagePrediction",
    "Predictions",
    "Predictor",
    "PredictorError",
    "Prepared",
    "PreparedLine",
    "Rejection",
    "RejectionError",
    "RejectionPolicy",
    "StringReader",
    "StringReaderError",
    "StringReading",
    "batch_lines",
    "calibrate_run",
    "prepare_image",
    "prepare_line",
    "read_digits",
    "softmax",
]

if TYPE_CHECKING:
    from digitlab.inference.lines import PreparedLine, batch_lines, prepare_line
    from digitlab.inference.predictor import ImagePrediction, Predictions, Predictor, PredictorError
    from digitlab.inference.prepare import ImageError, Prepared, prepare_image
    from digitlab.inference.rejection import Rejection, RejectionError, RejectionPolicy, calibrate_run, softmax
    from digitlab.inference.sequence import StringReader, StringReaderError, StringReading
    from digitlab.inference.strings import Digit, DigitString, read_digits


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
