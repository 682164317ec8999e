"""Evaluation harnesses: they load data, fit, time and score (the pure metrics live in core)."""
