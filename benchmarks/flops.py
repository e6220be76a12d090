"""Work per image counted from layer shapes, and the machine's measured float32 peak.

FLOPs are counted by forward hooks on the layers that carry the arithmetic: ``Conv2d``,
``ConvTranspose2d``, ``Linear`` and ``LSTM``; one multiply-add counts as 2 FLOPs, biases,
normalisation and activations are not counted (they are memory-bound and a few percent at most).

Attention products (``@`` on activations, no module) are counted from the token counts:
- L-CoDe: left out. Its fusion's attention is ~0.01 GFLOP against ~20 GFLOP of convolutions (``full``).
- L-CoIns: counted, because attention is a real share of a transformer's work. ``P`` = image tokens,
  ``T`` = caption tokens (padding included: the graph computes them), ``G`` = group tokens, ``D`` =
  width. Per attention of ``Nq`` queries over ``Nk`` keys, ``q k^T`` and ``softmax(.) v`` cost
  ``2 * Nq * Nk * D`` multiply-adds, summed over heads. The encoder has one P x P attention per ViT
  layer. The fusion has one T x T per language layer. Each grouping block has G x P, G x T, P x P,
  P x G, T x T and T x G. The hooks count the QKV, projection and MLP matmuls, the patch embedding
  and the decoder's (transposed) convolutions. ``tests/test_bench.py`` checks the whole count
  against ``torch.utils.flop_counter.FlopCounterMode`` for the ``tiny`` and ``small`` configs.

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
    """FLOPs of one forward pass of ``module`` on ``inputs`` (the whole batch)."""
    total = 0

    def hook(m, args, output):
        nonlocal total
        x = args[0]
        y = output[0] if isinstance(output, tuple) else output
        total += _COUNTERS[type(m)](m, x, y)

    handles = [m.register_forward_hook(hook) for m in module.modules() if type(m) in _COUNTERS]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total


def lcoins_attention_flops(cfg, batch: int) -> dict[str, int]:
    """FLOPs of the L-CoIns attention products (scores and weighted values) per stage, for ``batch`` images."""
    P, T, G, D = cfg.patches, cfg.max_tokens, cfg.group_tokens, cfg.dim

    def att(nq: int, nk: int) -> int:  # q k^T and softmax(.) v, every head: 2 products of Nq*Nk*D/H*H MACs
        return 2 * (2 * nq * nk * D)

    grouping = att(G, P) + att(G, T) + att(P, P) + att(P, G) + att(T, T) + att(T, G)  # eqs. 6-8
    return {
        "encoder": batch * cfg.vit_layers * att(P, P),
        "fusion": batch * (cfg.text_layers * att(T, T) + cfg.grouping_blocks * grouping),
        "decoder": 0,
    }


def stage_gflops_per_image(stages: dict[str, nn.Module], stage_inputs: dict[str, tuple], batch: int,
                           extra_flops: dict[str, int] | None = None) -> dict[str, float]:
    """GFLOPs per image for each stage (counted at ``batch``, divided by it) and their sum as ``e2e``;
    ``extra_flops`` (stage -> FLOPs for the whole batch) adds work no hooked layer carries."""
    extra = extra_flops or {}
    out = {s: (count_flops(stages[s], *stage_inputs[s]) + extra.get(s, 0)) / batch / 1e9 for s in stages}
    out["e2e"] = sum(out.values())
    return out


def network_gflops_per_image(model: nn.Module, L: torch.Tensor, tokens: torch.Tensor) -> dict[str, float]:
    """Per-stage and ``e2e`` GFLOPs per image of an LCoDe or LCoIns network on L [B,1,S,S], tokens [B,T]."""
    from langcolor.export.config import LCOINS_FAMILY

    with torch.no_grad():
        feats = model.encoder(L)  # [B,*f]
        modulated = model.fusion(feats, tokens)  # [B,*f]
    stages = {"encoder": model.encoder, "fusion": model.fusion, "decoder": model.decoder}
    inputs = {"encoder": (L,), "fusion": (feats, tokens), "decoder": (modulated,)}
    batch = L.shape[0]
    extra = lcoins_attention_flops(model.cfg, batch) if model.geometry.family == LCOINS_FAMILY else None
    return stage_gflops_per_image(stages, inputs, batch, extra)


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
