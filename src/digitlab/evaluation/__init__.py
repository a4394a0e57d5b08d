"""Evaluation: metrics, calibration, robustness sweeps, figures, run comparison and reports.

Usage: ``from digitlab.evaluation.evaluate import evaluate_run``.
"""
