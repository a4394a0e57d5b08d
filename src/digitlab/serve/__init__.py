"""The REST service and the drawing page: a FastAPI app that calls ``inference`` (no model logic here).

Usage: ``from digitlab.serve import create_app, ServeSettings``; ``digitlab serve RUN`` runs it.
"""

from digitlab.serve.app import app_from_env, create_app, get_predictor
from digitlab.serve.settings import ServeSettings

__all__ = ["ServeSettings", "app_from_env", "create_app", "get_predictor"]
