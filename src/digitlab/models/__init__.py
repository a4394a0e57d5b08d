"""Models: one registry for every family (neural and classical).

Usage: ``from digitlab.models import create_model, list_models``.
"""

from digitlab.models.registry import (
    ModelConfig,
    ModelError,
    count_parameters,
    create_model,
    get_entry,
    list_models,
    make_config,
    register_model,
)

__all__ = [
    "ModelConfig",
    "ModelError",
    "count_parameters",
    "create_model",
    "get_entry",
    "list_models",
    "make_config",
    "register_model",
]
