"""Inference: trained runs turned into predictions (the Predictor), one preprocessing path.

Usage: ``from digitlab.inference import Predictor``.
"""

from digitlab.inference.detector import NonDigitDetector
from digitlab.inference.predictor import (
    Calibration,
    ImagePrediction,
    Predictions,
    Predictor,
    PredictorError,
    softmax,
)
from digitlab.inference.prepare import ImageError, Prepared, prepare_image
from digitlab.inference.strings import Digit, DigitString, read_digits

__all__ = [
    "Calibration",
    "Digit",
    "DigitString",
    "ImageError",
    "ImagePrediction",
    "NonDigitDetector",
    "Predictions",
    "Predictor",
    "PredictorError",
    "Prepared",
    "prepare_image",
    "read_digits",
    "softmax",
]
