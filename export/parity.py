"""Validate every exported stage against PyTorch (in the manner of optimum's ``_run_validation``).

For each stage and each batch size (1, 3 and 8 by default; the export was traced at 2) the ONNX file
runs in onnxruntime on the same inputs as the PyTorch module, and we check the output names, the
output shapes and the maximum absolute difference per output against a stated tolerance. The fusion
stage runs once per caption length 1..T (real token ids first, padding after), and the three ONNX
files are also chained end to end against the whole PyTorch network. Every failing tensor is
collected before raising one ``ExportParityError`` that lists them all.

Inputs to the fusion and decoder stages are what the PyTorch stages before them produce, so they
have the distributions the stages see in service rather than arbitrary noise.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from langcolor.client.errors import ExportParityError
from langcolor.client.spec import STAGES, TOKENS_KIND, ModelGeometry, StageSpec, TensorSpec

from .onnx_export import sample_input, token_ids

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 3, 8)
# Maximum absolute difference allowed per output, in the tensor's own units. FP32 onnxruntime and
# PyTorch differ by summation order only: ~1e-6 relative. Features are O(1-10); AB is in Lab units
# (|ab| <= 110), where 1e-3 is far below one 8-bit RGB step (~0.4 Lab units).
DEFAULT_ATOL = 1e-3
# Plus this fraction of the tensor's largest magnitude: a deep trained decoder whose ab reach ~100
# differs by ~1e-5 relative through summation order alone (1.2e-3 Lab units measured), still 300x
# under one 8-bit step; a traced shortcut or a wrong weight is off by whole units.
RTOL = 2e-5
PIPELINE = "pipeline"  # pseudo-stage: encoder -> fusion -> decoder chained in onnxruntime
DRIVER = "driver"  # pseudo-stage: a driven family's loop over the ONNX stages vs over the PyTorch ones


@dataclass(frozen=True)
class TensorCheck:
    stage: str
    tensor: str
    batch: int
    caption_lengths: tuple[int, ...]  # real tokens per row; () for stages without tokens
    shape: tuple[int, ...]
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(self.max_abs_diff <= self.tolerance)  # NaN fails


@dataclass(frozen=True)
class ParityReport:
    family: str
    tolerance: float
    batch_sizes: tuple[int, ...]
    max_tokens: int
    checks: tuple[TensorCheck, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def worst(self) -> dict[str, float]:
        """Largest difference seen per ``stage.tensor``."""
        out: dict[str, float] = {}
        for c in self.checks:
            key = f"{c.stage}.{c.tensor}"
            out[key] = max(out.get(key, 0.0), c.max_abs_diff)
        return out

    def tolerances(self) -> dict[str, float]:
        """The tightest tolerance applied per ``stage.tensor`` (atol + RTOL x the tensor's scale)."""
        out: dict[str, float] = {}
        for c in self.checks:
            key = f"{c.stage}.{c.tensor}"
            out[key] = min(out.get(key, float("inf")), c.tolerance)
        return out

    def summary_lines(self) -> list[str]:
        runs: dict[str, int] = {}
        with_tokens: set[str] = set()
        for c in self.checks:
            key = f"{c.stage}.{c.tensor}"
            runs[key] = runs.get(key, 0) + 1
            if c.caption_lengths:
                with_tokens.add(key)
        lines, tolerances = [], self.tolerances()
        for key, diff in self.worst().items():
            lengths = f", caption lengths 1..{self.max_tokens}" if key in with_tokens else ""
            lines.append(
                f"{key:<20} max |onnx - torch| = {diff:.3e}  (tolerance {tolerances[key]:.1e}, {runs[key]} runs, "
                f"batches {list(self.batch_sizes)}{lengths})"
            )
        return lines

    def to_json(self) -> str:
        """Summary fields indented, one line per check (a few hundred lines, diff-friendly)."""
        head = {
            "family": self.family,
            "ok": self.ok,
            "tolerance": self.tolerance,
            "batch_sizes": list(self.batch_sizes),
            "max_tokens": self.max_tokens,
            "worst": self.worst(),
        }
        body = json.dumps(head, indent=1)[:-2]  # drop the closing "\n}"
        checks = ",\n  ".join(json.dumps(asdict(c)) for c in self.checks)
        return f"{body},\n \"checks\": [\n  {checks}\n ]\n}}"

    def save(self, path: Path) -> Path:
        Path(path).write_text(self.to_json() + "\n")
        return Path(path)


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # a shared machine; parity does not care about speed
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _torch_run(module: nn.Module, spec: StageSpec, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*(torch.from_numpy(feeds[n]) for n in spec.input_names))
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().cpu().numpy() for o in out]


class _Checker:
    """Runs one stage in both runtimes and records a TensorCheck per output (or a problem)."""

    def __init__(self, specs: dict[str, StageSpec], paths: dict[str, Path], atol: float) -> None:
        self.specs = specs
        self.sessions = {stage: _session(paths[stage]) for stage in specs}
        self.atol = atol
        self.checks: list[TensorCheck] = []
        self.problems: list[str] = []

    def onnx_run(self, stage: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec, sess = self.specs[stage], self.sessions[stage]
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(None, {n: feeds[n] for n in spec.input_names})))

    def compare(
        self, stage: str, tensor: str, ref: np.ndarray, got: np.ndarray | None, lengths: tuple[int, ...], batch: int
    ) -> None:
        if got is None:
            self.problems.append(f"{stage}.{tensor}: missing from the ONNX outputs")
            return
        if got.shape != ref.shape:
            self.problems.append(f"{stage}.{tensor} (batch {batch}): shape {got.shape}, PyTorch gives {ref.shape}")
            return
        diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
        if not np.isfinite(got).all():
            diff = float("nan")
        scale = float(np.max(np.abs(ref))) if ref.size and np.isfinite(ref).all() else 0.0
        tolerance = self.atol + RTOL * scale
        check = TensorCheck(stage, tensor, batch, lengths, tuple(got.shape), diff, tolerance)
        self.checks.append(check)
        if not check.ok:
            self.problems.append(
                f"{stage}.{tensor} (batch {batch}, caption lengths {list(lengths)}): "
                f"max abs diff {diff:.3e} > {tolerance:.2e} ({self.atol:.0e} + {RTOL:.0e} x max |PyTorch| {scale:.3g})"
            )

    def check_stage(self, stage: str, module: nn.Module, feeds: dict[str, np.ndarray], lengths: tuple[int, ...]):
        """Compare one stage; returns PyTorch's outputs by name (the next stage's inputs)."""
        spec = self.specs[stage]
        ref = dict(zip(spec.output_names, _torch_run(module, spec, feeds)))
        got = self.onnx_run(stage, feeds)
        if list(got) != spec.output_names:
            self.problems.append(f"{stage}: ONNX output names {list(got)}, expected {spec.output_names}")
        batch = next(iter(feeds.values())).shape[0]
        for name in spec.output_names:
            want_shape = (batch, *spec.outputs[spec.output_names.index(name)].dims)
            if ref[name].shape != want_shape:
                self.problems.append(f"{stage}.{name}: PyTorch gives {ref[name].shape}, the spec says {want_shape}")
            self.compare(stage, name, ref[name], got.get(name), lengths, batch)
        return ref


def _sample_image(t: TensorSpec, batch: int, rng: np.random.Generator) -> np.ndarray:
    """The image input: a smooth gradient plus noise covering its whole value range."""
    lo, hi = t.value_range if t.value_range is not None else (0.0, 1.0)
    side = t.dims[-1]
    ramp = np.linspace(lo, hi, side, dtype=np.float32).reshape((1,) * len(t.shape[:-1]) + (side,))
    noise = rng.uniform(-0.2 * (hi - lo), 0.2 * (hi - lo), size=(batch, *t.dims))
    return np.clip(ramp + noise, lo, hi).astype(np.dtype(t.dtype))  # (B, *dims)


def validate_export(
    modules: dict[str, nn.Module],
    specs: dict[str, StageSpec],
    paths: dict[str, Path],
    geom: ModelGeometry,
    *,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
    driver=None,
) -> ParityReport:
    """Check every stage file against its module; raise ``ExportParityError`` listing every failure.

    For a driven family (``driver``), the driver also runs once per batch size on the PyTorch stages
    and once on the ONNX files, from the same request inputs, and its outputs are compared (stage
    name ``driver``).

    Conditions are sampled from their specs once per batch size; a tokens-kind condition is run at
    every caption length 1..T (rows of one batch mixing lengths), in the stage that takes it."""
    for m in modules.values():
        m.eval()
    rng = np.random.default_rng(seed)
    checker = _Checker(specs, paths, atol)
    tokens = geom.tokens
    T = tokens.dims[0] if tokens is not None else 0
    for batch in batch_sizes:
        given = {geom.image.name: _sample_image(geom.image, batch, rng)}
        for c in geom.condition_specs:
            if c.kind != TOKENS_KIND:
                given[c.name] = sample_input(c, batch, rng)
        feeds: dict[str, np.ndarray] = dict(given)
        last_lengths: tuple[int, ...] = ()
        for stage in STAGES:
            spec = specs[stage]
            takes_tokens = tokens is not None and tokens.name in spec.input_names
            out = None
            for length in range(1, T + 1) if takes_tokens else (None,):
                lengths: tuple[int, ...] = ()
                if length is not None:
                    # Row r has length+r real tokens (cycling through 1..T): every batch mixes lengths,
                    # and row 0 walks through every length 1..T.
                    lengths = tuple(((length - 1 + r) % T) + 1 for r in range(batch))
                    feeds[tokens.name] = token_ids(list(lengths), tokens, rng)  # (B, T)
                out = checker.check_stage(stage, modules[stage], feeds, lengths)
                last_lengths = lengths or last_lengths
            feeds.update(out)
        # End to end through onnxruntime only, against the PyTorch chain above (last caption lengths).
        chained = {n: feeds[n] for n in given} | ({tokens.name: feeds[tokens.name]} if tokens is not None else {})
        for stage in STAGES:
            chained.update(checker.onnx_run(stage, chained))
        for name in specs["decoder"].output_names:
            checker.compare(PIPELINE, name, feeds[name], chained.get(name), last_lengths, batch)
        if driver is not None:
            request = {geom.image.name: given[geom.image.name]}
            request.update({t.name: sample_input(t, batch, rng) for t in geom.request_inputs})
            ref = driver.run(lambda stage, f: dict(zip(specs[stage].output_names, _torch_run(
                modules[stage], specs[stage], f))), dict(request), geom)
            got = driver.run(lambda stage, f: checker.onnx_run(stage, f), dict(request), geom)
            for t in geom.request_outputs:
                checker.compare(DRIVER, t.name, ref[t.name], got.get(t.name), (), batch)
    report = ParityReport(geom.family, atol, tuple(batch_sizes), T, tuple(checker.checks))
    log.info(
        "parity vs PyTorch (atol %.0e + rtol %.0e x max |PyTorch|): %s",
        atol,
        RTOL,
        ", ".join(f"{k} {v:.2e}" for k, v in report.worst().items()),
    )
    if checker.problems:
        err = ExportParityError(f"{len(checker.problems)} tensor check(s) failed: " + "; ".join(checker.problems))
        err.report = report  # the figures, for whoever wants to print them anyway
        raise err
    return report
