"""Inference: trained runs turned into predictions (the Predictor), one preprocessing path.

Usage: ``from digitlab.inference import Predictor``.
"""

from digitlab.inference.predictor import Calibration, Predictor, PredictorError, softmax

__all__ = ["Calibration", "Predictor", "PredictorError", "softmax"]
