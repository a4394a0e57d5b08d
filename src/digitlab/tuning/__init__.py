"""Tuning: Optuna studies over recipes and search spaces (validation only, never the test split).

Usage: ``from digitlab.tuning.study import TuneOptions, tune``.
"""
