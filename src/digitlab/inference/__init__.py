"""Inference: trained models turned into predictions (the Predictor), real-image preparation, rejection
and digit strings; one preprocessing path.

Usage: ``from digitlab.inference import Predictor`` (or ``from digitlab import Predictor``).
"""

from digitlab.inference.predictor import (
    ImagePrediction,
    Predictions,
    Predictor,
    PredictorError,
)
from digitlab.inference.prepare import ImageError, Prepared, prepare_image
from digitlab.inference.rejection import Rejection, RejectionError, RejectionPolicy, calibrate_run, softmax
from digitlab.inference.strings import Digit, DigitString, read_digits

__all__ = [
    "Digit",
    "DigitString",
    "ImageError",
    "ImagePrediction",
    "Predictions",
    "Predictor",
    "PredictorError",
    "Prepared",
    "Rejection",
    "RejectionError",
    "RejectionPolicy",
    "calibrate_run",
    "prepare_image",
    "read_digits",
    "softmax",
]
