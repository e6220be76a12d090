"""Work per image counted from layer shapes, and the machine's measured float32 peak.

FLOPs of one forward pass are counted in two parts, with one multiply-add = 2 FLOPs:
- the layers that carry most of the arithmetic, by forward hooks and a formula per layer type:
  ``Conv2d``, ``ConvTranspose2d``, ``Linear`` and ``LSTM`` (torch's own counter does not see an LSTM
  on the CPU: it runs as one oneDNN kernel);
- every product outside those layers (attention scores and weighted values, ``@`` or ``einsum`` on
  activations, a functional convolution) by ``torch.utils.flop_counter.FlopCounterMode``, which counts
  ``mm``, ``bmm``, ``addmm``, ``convolution`` and attention kernels at the dispatcher. What it counts
  inside a hooked layer is subtracted, so no product is counted twice.
Biases, normalisation, softmax and activations are not counted (they are memory-bound, a few percent
at most). Nothing here knows a family: a new network's attention is counted because it runs.
``tests/test_bench.py`` checks the hooks against a hand count and the whole count of every registered
family's ``tiny`` network against ``FlopCounterMode`` alone (with oneDNN off, so it sees the LSTM too).

The peak is a large float32 matrix product timed on the same machine in the same run with every
core, with torch, numpy and onnxruntime (their BLAS kernels differ by up to 2x here); the best of
them is the peak, and "fraction of peak" = achieved FLOP/s / that figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn


def _conv_flops(m: nn.Conv2d, x: torch.Tensor, y: torch.Tensor) -> int:
    # every output element: C_in/groups * kh * kw multiply-adds
    kh, kw = m.kernel_size
    return 2 * y.numel() * (m.in_channels // m.groups) * kh * kw


def _deconv_flops(m: nn.ConvTranspose2d, x: torch.Tensor, y: torch.Tensor) -> int:
    # every INPUT element is scattered to C_out/groups * kh * kw outputs
    kh, kw = m.kernel_size
    return 2 * x.numel() * (m.out_channels // m.groups) * kh * kw


def _linear_flops(m: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> int:
    return 2 * (x.numel() // m.in_features) * m.in_features * m.out_features


def _lstm_flops(m: nn.LSTM, x: torch.Tensor, y: torch.Tensor) -> int:
    # per step, per layer and direction: 4 gates of (input + hidden) x hidden multiply-adds
    assert m.batch_first and x.dim() == 3, "count for batch_first [B, T, E] inputs"
    steps = x.shape[0] * x.shape[1]  # B * T
    dirs = 2 if m.bidirectional else 1
    total, in_size = 0, m.input_size
    for _ in range(m.num_layers):
        total += dirs * steps * 4 * (in_size + m.hidden_size) * m.hidden_size
        in_size = m.hidden_size * dirs
    return 2 * total


_COUNTERS = {
    nn.Conv2d: _conv_flops,
    nn.ConvTranspose2d: _deconv_flops,
    nn.Linear: _linear_flops,
    nn.LSTM: _lstm_flops,
}


def count_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``module`` on ``inputs`` (the whole batch): hooked layers by their
    formula, every other product by torch's ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    layers = 0  # FLOPs of the hooked layers, by formula
    seen_inside = 0  # what FlopCounterMode counted inside them (replaced by the formula)
    depth, start = 0, 0

    def pre(m, args):
        nonlocal depth, start
        if depth == 0:
            start = counter.get_total_flops()
        depth += 1

    def post(m, args, output):
        nonlocal depth, layers, seen_inside
        depth -= 1
        if depth == 0:  # a hooked layer inside another (none so far) is the outer one's work
            seen_inside += counter.get_total_flops() - start
            y = output[0] if isinstance(output, tuple) else output
            layers += _COUNTERS[type(m)](m, args[0], y)

    hooked = [m for m in module.modules() if type(m) in _COUNTERS]
    handles = [m.register_forward_pre_hook(pre) for m in hooked] + [m.register_forward_hook(post) for m in hooked]
    try:
        with torch.no_grad(), counter:
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return layers + counter.get_total_flops() - seen_inside


def stage_gflops_per_image(stages: dict[str, nn.Module], stage_inputs: dict[str, tuple], batch: int) -> dict[str, float]:
    """GFLOPs per image for each stage (counted at ``batch``, divided by it) and their sum as ``e2e``."""
    out = {s: count_flops(stages[s], *stage_inputs[s]) / batch / 1e9 for s in stages}
    out["e2e"] = sum(out.values())
    return out


def network_gflops_per_image(model: nn.Module, feeds: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-stage and ``e2e`` GFLOPs per image of a family's network (``.encoder/.fusion/.decoder``,
    ``.geometry``) on its ensemble inputs ``feeds`` (image and conditions, batched). ``e2e`` is one
    request: each stage once, or as many times as the family's driver runs it (a sampler's decoder
    once per step)."""
    from langcolor.client.spec import STAGES, stage_specs

    from .models import stage_calls_per_request, stage_feeds, torch_stage

    specs = stage_specs(model.geometry)
    with torch.no_grad():
        per_stage = stage_feeds(lambda s, t: torch_stage(model, specs[s], t), specs, feeds)
    stages = {s: getattr(model, s) for s in STAGES}
    inputs = {s: tuple(per_stage[s][n] for n in specs[s].input_names) for s in STAGES}
    batch = next(iter(feeds.values())).shape[0]
    out = stage_gflops_per_image(stages, inputs, batch)
    calls = stage_calls_per_request(model, {k: v[:1].numpy() for k, v in feeds.items()})
    out["e2e"] = sum(out[s] * calls[s] for s in STAGES)
    return out


@dataclass(frozen=True)
class Peak:
    gflops: float  # the best library on this machine, best of the repeats
    n: int  # square matrix side
    threads: int
    seconds: float  # one product at the best
    by_library: dict  # library -> GFLOP/s (torch, numpy, onnxruntime: each BLAS differs)


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up: thread pool and caches
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _ort_matmul(n: int):
    """An onnxruntime session computing one n x n MatMul (MLAS, the kernels the ONNX paths use)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])], "peak",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n]), helper.make_tensor_value_info("B", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx.shape_inference.infer_shapes(model).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


MATRIX_FLAGS = ("avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")


def matrix_isa() -> list[str]:
    """The matrix-related instruction sets this CPU reports (/proc/cpuinfo flags), found at run time."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return [f for f in MATRIX_FLAGS if f in flags]


def measure_peak_bf16(n: int = 2048, repeats: int = 5) -> Peak:
    """Bfloat16 GFLOP/s of an ``n x n`` matrix product on every core with torch (oneDNN uses
    AVX512-BF16 or AMX where the CPU has them; elsewhere this measures its fallback)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(torch.bfloat16)
    b = torch.randn(n, n, generator=g).to(torch.bfloat16)
    best = _best_time(lambda: torch.mm(a, b), repeats)
    gflops = 2 * n**3 / best / 1e9
    return Peak(gflops=gflops, n=n, threads=torch.get_num_threads(), seconds=best, by_library={"torch": round(gflops, 2)})


def measure_peak(n: int = 2048, repeats: int = 5) -> Peak:
    """Float32 GFLOP/s of an ``n x n`` matrix product on every core, with torch, numpy and onnxruntime;
    the peak is the best of them (the machine can do at least that much)."""
    import numpy as np

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    a_np, b_np = a.numpy(), b.numpy()
    times = {"torch": _best_time(lambda: torch.mm(a, b), repeats), "numpy": _best_time(lambda: np.matmul(a_np, b_np), repeats)}
    try:
        sess = _ort_matmul(n)
        times["onnxruntime"] = _best_time(lambda: sess.run(None, {"A": a_np, "B": b_np}), repeats)
    except Exception:  # onnx missing or a broken build: the other two still give a peak
        pass
    by = {k: round(2 * n**3 / t / 1e9, 2) for k, t in times.items()}
    best = min(times.values())
    return Peak(gflops=2 * n**3 / best / 1e9, n=n, threads=torch.get_num_threads(), seconds=best, by_library=by)
