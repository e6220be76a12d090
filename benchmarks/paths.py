"""In-process paths: PyTorch eager and onnxruntime, per stage and end to end, on the same inputs.

Each path is a ``Runner``: one callable per stage and one for the whole network, all fed from the
same ``BenchModel.inputs``. Intermediate tensors for the per-stage timings are computed once with
the same path (so fusion is timed on that path's own FEATURES, not on a neighbour's).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from langcolor.client.runtime import ModelBundle, OnnxStages, session_options, stage_path
from langcolor.client.spec import STAGES, stage_specs

from .models import BenchModel

log = logging.getLogger(__name__)

E2E = "e2e"


@dataclass(frozen=True)
class Runner:
    path: str  # "pytorch", "onnxruntime", ...
    device: str
    precision: str
    stage_calls: Callable[[np.ndarray, np.ndarray], dict[str, Callable[[], object]]]  # (L, tokens) -> stage -> call
    note: str = ""


def pytorch_runner(bm: BenchModel) -> Runner:
    model = bm.model

    def calls(L: np.ndarray, tokens: np.ndarray) -> dict[str, Callable[[], object]]:
        l_t, t_t = torch.from_numpy(L), torch.from_numpy(tokens)  # [B,1,S,S], [B,T]
        with torch.inference_mode():
            feats = model.encoder(l_t)  # [B,*f]
            modulated = model.fusion(feats, t_t)  # [B,*f]

        def run(fn):
            def call():
                with torch.inference_mode():
                    return fn()
            return call

        return {
            "encoder": run(lambda: model.encoder(l_t)),
            "fusion": run(lambda: model.fusion(feats, t_t)),
            "decoder": run(lambda: model.decoder(modulated)),
            E2E: run(lambda: model.decoder(model.fusion(model.encoder(l_t), t_t))),
        }

    return Runner("pytorch", "cpu", "fp32", calls, note=f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def onnxruntime_runner(bm: BenchModel, device: str = "cpu", intra_op_threads: int | None = None, path: str = "onnxruntime") -> Runner:
    """The client's own ``OnnxStages`` (its session options, its input checks) on the repository's ONNX files."""
    stages = OnnxStages(ModelBundle.load(bm.repository, family=bm.family), intra_op_threads=intra_op_threads, device=device)

    def calls(L: np.ndarray, tokens: np.ndarray) -> dict[str, Callable[[], object]]:
        feats = stages.encoder(L)
        modulated = stages.fusion(feats, tokens)
        return {
            "encoder": lambda: stages.encoder(L),
            "fusion": lambda: stages.fusion(feats, tokens),
            "decoder": lambda: stages.decoder(modulated),
            E2E: lambda: stages.infer_ab(L, tokens),
        }

    threads = intra_op_threads or "default"
    return Runner(path, device, "fp32", calls, note=f"onnxruntime {ort.__version__}, OnnxStages, intra_op_threads={threads}")


# --- raw sessions with chosen options, for the tuning sweep ----------------------------------------

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class OrtOptions:
    opt_level: str = "all"
    intra_op_threads: int = 0  # 0 = onnxruntime's default (one per core)
    parallel: bool = False  # ORT_PARALLEL execution mode (inter-op parallelism)
    spinning: bool = False

    @property
    def label(self) -> str:
        mode = "parallel" if self.parallel else "sequential"
        spin = "spin" if self.spinning else "nospin"
        return f"opt={self.opt_level},threads={self.intra_op_threads or 'default'},{mode},{spin}"

    def session_options(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = _OPT_LEVELS[self.opt_level]
        opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL if self.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        if self.intra_op_threads:
            opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = 2 if self.parallel else 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if self.spinning else "0")
        return opts


def ort_variant_runner(bm: BenchModel, options: OrtOptions, providers: list[str] | None = None) -> Runner:
    """Three raw sessions (no client-side checks) built with ``options``."""
    specs = stage_specs(bm.geometry)
    opts = options.session_options()
    providers = providers or ["CPUExecutionProvider"]
    sessions = {s: ort.InferenceSession(str(stage_path(bm.repository, bm.family, s)), opts, providers=providers) for s in STAGES}

    def run(stage: str, *arrays):
        spec = specs[stage]
        return sessions[stage].run(spec.output_names, dict(zip(spec.input_names, arrays)))[0]

    def calls(L: np.ndarray, tokens: np.ndarray) -> dict[str, Callable[[], object]]:
        feats = run("encoder", L)
        modulated = run("fusion", feats, tokens)
        return {
            "encoder": lambda: run("encoder", L),
            "fusion": lambda: run("fusion", feats, tokens),
            "decoder": lambda: run("decoder", modulated),
            E2E: lambda: run("decoder", run("fusion", run("encoder", L), tokens)),
        }

    return Runner("onnxruntime", "cpu", "fp32", calls, note=options.label)


def default_options_label() -> str:
    """What the client's ``session_options()`` sets, for the README's 'kept' column."""
    o = session_options()
    return f"opt={int(o.graph_optimization_level)},intra={o.intra_op_num_threads or 'default'},inter={o.inter_op_num_threads}"


# --- GPU execution providers (skipped cleanly on a machine without them) ---------------------------


def gpu_runners(bm: BenchModel, fp16: bool = True) -> list[Runner]:
    """CUDA and TensorRT (FP32, and FP16 when asked) onnxruntime paths, or none without a GPU build."""
    available = set(ort.get_available_providers())
    runners: list[Runner] = []
    if torch.cuda.is_available():
        runners.append(pytorch_cuda_runner(bm, half=False))
        if fp16:
            runners.append(pytorch_cuda_runner(bm, half=True))
    if "CUDAExecutionProvider" not in available:
        log.info("no CUDAExecutionProvider in this onnxruntime (%s): GPU paths skipped", sorted(available))
        return runners
    try:
        runners.append(onnxruntime_runner(bm, device="cuda", path="onnxruntime-cuda"))
    except Exception as e:  # a CUDA build without a usable device raises at session creation
        log.warning("CUDA execution provider unusable: %s", e)
        return runners
    if "TensorrtExecutionProvider" in available:
        for half in (False, True) if fp16 else (False,):
            runners.append(_tensorrt_runner(bm, half))
    return runners


def pytorch_cuda_runner(bm: BenchModel, half: bool) -> Runner:
    """PyTorch eager on the GPU (autocast to FP16 when ``half``), synchronised after every call."""
    import copy

    model = copy.deepcopy(bm.model).cuda().eval()

    def calls(L, tokens):
        l_t, t_t = torch.from_numpy(L).cuda(), torch.from_numpy(tokens).cuda()

        def run(fn):
            def call():
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
                    out = fn()
                torch.cuda.synchronize()
                return out
            return call

        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
            feats = model.encoder(l_t)
            modulated = model.fusion(feats, t_t)
        return {
            "encoder": run(lambda: model.encoder(l_t)),
            "fusion": run(lambda: model.fusion(feats, t_t)),
            "decoder": run(lambda: model.decoder(modulated)),
            E2E: run(lambda: model.decoder(model.fusion(model.encoder(l_t), t_t)).cpu()),
        }

    return Runner("pytorch-cuda", "cuda", "fp16" if half else "fp32", calls, note=torch.cuda.get_device_name(0))


def _tensorrt_runner(bm: BenchModel, fp16: bool) -> Runner:
    s, t = bm.geometry.image_size, bm.geometry.max_tokens
    f = "x".join(str(d) for d in bm.geometry.feature_shape)
    # min/opt/max batch profiles: 1 / 8 / 16, matching the batch sweep.
    profiles = {
        "encoder": (f"L:1x1x{s}x{s}", f"L:8x1x{s}x{s}", f"L:16x1x{s}x{s}"),
        "fusion": tuple(f"FEATURES:{b}x{f},TOKENS:{b}x{t}" for b in (1, 8, 16)),
        "decoder": tuple(f"MODULATED:{b}x{f}" for b in (1, 8, 16)),
    }
    specs = stage_specs(bm.geometry)
    sessions = {}
    for stage in STAGES:
        lo, opt, hi = profiles[stage]
        trt = {
            "trt_fp16_enable": fp16, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(bm.repository.parent / "trt_cache"),
            "trt_profile_min_shapes": lo, "trt_profile_opt_shapes": opt, "trt_profile_max_shapes": hi,
        }
        sessions[stage] = ort.InferenceSession(
            str(stage_path(bm.repository, bm.family, stage)),
            providers=[("TensorrtExecutionProvider", trt), "CUDAExecutionProvider"],
        )

    def run(stage: str, *arrays):
        spec = specs[stage]
        return sessions[stage].run(spec.output_names, dict(zip(spec.input_names, arrays)))[0]

    def calls(L, tokens):
        feats = run("encoder", L)
        modulated = run("fusion", feats, tokens)
        return {
            "encoder": lambda: run("encoder", L),
            "fusion": lambda: run("fusion", feats, tokens),
            "decoder": lambda: run("decoder", modulated),
            E2E: lambda: run("decoder", run("fusion", run("encoder", L), tokens)),
        }

    precision = "fp16" if fp16 else "fp32"
    return Runner("onnxruntime-tensorrt", "cuda", precision, calls, note="TensorRT EP, profiles 1/8/16")
