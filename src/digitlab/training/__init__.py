"""Training: the one loop for every model, recipes, checkpoints and resume.

Usage: ``train_run(config_from_recipe("default"))``.
"""

from digitlab.training.recipes import config_from_recipe, list_recipes
from digitlab.training.trainer import TrainResult, resume_run, train_run

__all__ = ["TrainResult", "config_from_recipe", "list_recipes", "resume_run", "train_run"]
