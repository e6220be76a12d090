"""Export each stage module (encoder, fusion, decoder) to its own ONNX file.

Tensor names and the dynamic batch axis come from ``stage_specs(geometry)``; every other axis
(the caption length T among them) is fixed. After export every file's graph signature is read back and compared with its spec, so an
exporter-invented name (``input.1``, ``308``) or a batch axis frozen to the trace size fails here
rather than in a Triton config.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from langcolor.client.errors import ExportParityError
from langcolor.client.spec import BATCH, PAD_ID, TOKENS_KIND, StageSpec, TensorSpec

log = logging.getLogger(__name__)

OPSET = 17
TRACE_BATCH = 2  # traced at 2, validated at 1, 3 and 8: a batch axis frozen at trace time shows up

_ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
}


@dataclass(frozen=True)
class OnnxSignature:
    """A graph's declared inputs and outputs, in the spec's own terms (named axes are strings)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def token_ids(lengths: list[int], spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    """Token ids [B, T] for a tokens-kind spec: ``lengths[b]`` real ids in [1, vocab), then PAD_ID."""
    T, top = spec.dims[0], int(spec.value_range[1])
    assert all(1 <= n <= T for n in lengths), lengths
    tokens = np.full((len(lengths), T), PAD_ID, dtype=np.int64)  # (B, T)
    for row, n in enumerate(lengths):
        tokens[row, :n] = rng.integers(1, top + 1, size=n)
    return tokens


def sample_input(t: TensorSpec, batch: int, rng: np.random.Generator) -> np.ndarray:
    """A plausible value for one declared input: within its value range, padded ids for tokens, and
    non-negative values of order one for features (they come after a ReLU)."""
    shape = (batch, *t.dims)
    if t.kind == TOKENS_KIND:
        lengths = [int(n) for n in rng.integers(1, t.dims[0] + 1, size=batch)]
        return token_ids(lengths, t, rng)  # (B, T)
    if t.value_range is not None:
        lo, hi = t.value_range
        if np.dtype(t.dtype).kind == "f":
            return rng.uniform(lo, hi, size=shape).astype(np.dtype(t.dtype))
        return rng.integers(int(lo), int(hi) + 1, size=shape).astype(np.dtype(t.dtype))
    return np.abs(rng.standard_normal(shape)).astype(np.dtype(t.dtype))


def read_signature(path: Path) -> OnnxSignature:
    """The graph inputs (initializers excluded) and outputs of an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def spec_of(value: onnx.ValueInfoProto) -> TensorSpec:
        ttype = value.type.tensor_type
        dims = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in ttype.shape.dim)
        return TensorSpec(value.name, _ONNX_TO_NUMPY.get(ttype.elem_type, f"onnx:{ttype.elem_type}"), dims)

    inputs = tuple(spec_of(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(spec_of(v) for v in model.graph.output)
    return OnnxSignature(inputs, outputs)


def signature_problems(path: Path, spec: StageSpec) -> list[str]:
    """Every way the file's declared inputs/outputs differ from ``spec`` (empty when they agree)."""
    sig = read_signature(path)
    problems = []
    for kind, declared, found in (("input", spec.inputs, sig.inputs), ("output", spec.outputs, sig.outputs)):
        want = [t.name for t in declared]
        got = [t.name for t in found]
        if want != got:
            problems.append(f"{spec.model_name}: {kind} names {got}, expected {want}")
            continue
        for d, f in zip(declared, found):
            if d.dtype != f.dtype:
                problems.append(f"{spec.model_name}.{d.name}: dtype {f.dtype}, expected {d.dtype}")
            if tuple(d.shape) != tuple(f.shape):
                problems.append(f"{spec.model_name}.{d.name}: shape {f.shape}, expected {d.shape}")
    return problems


def _declare_static_dims(path: Path, spec: StageSpec) -> None:
    """Write the spec's fixed dims where the tracer could only name them symbolically.

    Shapes computed at run time (``x.reshape(B, C, H, W)`` with ``H, W`` read from a tensor) leave
    outputs such as ``MODULATED`` with dims like ``AddMODULATED_dim_2``. Only such symbolic non-batch
    dims are replaced; a concrete dim that disagrees with the spec is left for the signature check to
    report, and parity then checks the real output shapes at run time.
    """
    model = onnx.load(str(path))
    declared = {t.name: t for t in (*spec.inputs, *spec.outputs)}
    changed = False
    for value in (*model.graph.input, *model.graph.output):
        t = declared.get(value.name)
        dims = value.type.tensor_type.shape.dim
        if t is None or len(dims) != len(t.shape):
            continue
        for dim, want in zip(dims, t.shape):
            if isinstance(want, int) and dim.dim_param and not dim.dim_value:
                dim.Clear()
                dim.dim_value = want
                changed = True
    if changed:
        onnx.save(model, str(path))


def export_stage(module: nn.Module, spec: StageSpec, path: Path, *, seed: int = 0) -> Path:
    """Trace ``module`` (its forward takes ``spec.inputs`` in order) into ``path`` with the spec's names."""
    rng = np.random.default_rng(seed)
    inputs = tuple(torch.from_numpy(sample_input(t, TRACE_BATCH, rng)) for t in spec.inputs)
    dynamic_axes = {t.name: t.dynamic_axes for t in (*spec.inputs, *spec.outputs)}
    assert all(axes == {0: BATCH} for axes in dynamic_axes.values()), dynamic_axes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns that an LSTM traced at batch != 1 may not run at other batch sizes; the
        # stages pass explicit initial states sized from the input, and parity runs 1, 3 and 8.
        warnings.filterwarnings("ignore", message=".*with a variable length with LSTM.*")
        # The legacy exporter is chosen on purpose (stable names, LSTM); no need to say it is legacy.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        # torch's own modules' shape asserts; warnings from the project's code still show.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.")
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,  # the legacy TorchScript exporter: stable names, LSTM support
        )
    module.eval()  # the legacy exporter can leave modules in training mode
    _declare_static_dims(path, spec)
    onnx.checker.check_model(str(path))
    problems = signature_problems(path, spec)
    if problems:
        raise ExportParityError("exported graph does not match its spec: " + "; ".join(problems))
    log.info("exported %s -> %s (%.1f kB)", spec.model_name, path, path.stat().st_size / 1024)
    return path


def export_stages(
    modules: dict[str, nn.Module], specs: dict[str, StageSpec], out_paths: dict[str, Path]
) -> dict[str, Path]:
    """Export every stage of ``specs`` (keys: stage names) to ``out_paths[stage]``."""
    assert set(modules) == set(specs) == set(out_paths), (set(modules), set(specs), set(out_paths))
    return {stage: export_stage(modules[stage], specs[stage], out_paths[stage]) for stage in specs}
