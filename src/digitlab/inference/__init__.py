"""Inference: trained runs turned into predictions (the Predictor), one preprocessing path.

Usage: ``from digitlab.inference import Predictor``.
"""

from digitlab.inference.predictor import (
    Calibration,
    ImagePrediction,
    Predictions,
    Predictor,
    PredictorError,
    softmax,
)
from digitlab.inference.prepare import ImageError, Prepared, prepare_image

__all__ = [
    "Calibration",
    "ImageError",
    "ImagePrediction",
    "Predictions",
    "Predictor",
    "PredictorError",
    "Prepared",
    "prepare_image",
    "softmax",
]
