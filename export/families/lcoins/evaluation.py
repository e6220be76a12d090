"""Evaluation: the caption families' shared scorer, plus L-CoIns' own diagnostics.

``langcolor evaluate`` prints the shared figures (caption following, swap, mismatch, instance
accuracy, PSNR/SSIM beside the caption-free baseline), then ``diagnostics``: how well the grouping
finds the instances and the groups read their colour words (``diagnostics.py``), and linear probes of
the language encoder (``probe.py``).
"""

from __future__ import annotations

import dataclasses

from langcolor.export.evaluate import EvalReport
from langcolor.export.evaluate import evaluate as evaluate_captions

from .diagnostics import grouping_figures
from .probe import probe_language


def evaluate(model, conditioner, scenes: int = 256, seed: int = 0) -> EvalReport:
    report = evaluate_captions(model, conditioner, scenes=scenes, seed=seed)
    tokenizer = conditioner.tokenizer
    diagnostics = {**grouping_figures(model, tokenizer, scenes, seed), **probe_language(model, tokenizer, seed)}
    return dataclasses.replace(report, diagnostics={**report.diagnostics, **diagnostics})
