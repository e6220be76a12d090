"""Evaluation on held-out synthetic scenes: the caption families' shared scorer."""

from langcolor.export.evaluate import evaluate

__all__ = ["evaluate"]
