"""In-process paths: PyTorch eager and onnxruntime, per stage and end to end, on the same inputs.

Each path is a ``Runner``: one callable per stage and one for the whole network, all fed from the
same ``BenchModel.inputs`` (the ensemble's inputs by name). Each stage's inputs are the previous
stages' outputs plus the conditions it takes, computed once with the same path (so the fusion is timed
on that path's own features, not on a neighbour's). Tensor names and their order come from the
family's stage specs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import onnxruntime as ort
import torch

from langcolor.client.runtime import OnnxStages, session_options, stage_path
from langcolor.client.spec import STAGES, stage_specs

from .models import BenchModel, RunStage, numpy_stage, run_request, stage_feeds, torch_stage

log = logging.getLogger(__name__)

E2E = "e2e"

Feeds = Mapping[str, np.ndarray]  # the ensemble's inputs by name, batched


@dataclass(frozen=True)
class Runner:
    path: str  # "pytorch", "onnxruntime", ...
    device: str
    precision: str
    stage_calls: Callable[[Feeds], dict[str, Callable[[], object]]]  # ensemble inputs -> stage -> call
    note: str = ""


def chained_calls(run_stage: RunStage, specs, feeds, e2e: Callable[[], object] | None = None,
                  wrap: Callable[[Callable[[], object]], Callable[[], object]] = lambda f: f,
                  bm: BenchModel | None = None, driver_stage: RunStage | None = None,
                  ) -> dict[str, Callable[[], object]]:
    """One call per stage on its own inputs (made once by ``run_stage``) and one end to end (``e2e``,
    default: one request as the family's model answers it: the three stages chained, or ``bm``'s
    driver looping over ``driver_stage``, the numpy face of ``run_stage``)."""
    per_stage = stage_feeds(run_stage, specs, feeds)
    calls = {stage: wrap(lambda s=stage: run_stage(s, per_stage[s])) for stage in STAGES}
    driver = bm.record.driver if bm is not None else None
    geometry = bm.geometry if bm is not None else None
    whole = lambda: run_request(driver_stage or run_stage, specs, feeds, geometry, driver)  # noqa: E731
    calls[E2E] = wrap(e2e or whole)
    return calls


def _torch_calls(model: torch.nn.Module, specs, feeds: dict, wrap, bm: BenchModel | None = None,
                 device: str = "cpu") -> dict[str, Callable[[], object]]:
    def run_stage(stage: str, tensors):
        return torch_stage(model, specs[stage], tensors)

    with torch.inference_mode():
        return chained_calls(run_stage, specs, feeds, wrap=wrap, bm=bm, driver_stage=numpy_stage(run_stage, specs, device))


def pytorch_runner(bm: BenchModel) -> Runner:
    model, specs = bm.model, bm.specs

    def timed(fn):
        def call():
            with torch.inference_mode():
                return fn()
        return call

    def calls(feeds: Feeds) -> dict[str, Callable[[], object]]:
        return _torch_calls(model, specs, {k: torch.from_numpy(v) for k, v in feeds.items()}, timed, bm)

    return Runner("pytorch", "cpu", "fp32", calls, note=f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def onnxruntime_runner(bm: BenchModel, device: str = "cpu", intra_op_threads: int | None = None, path: str = "onnxruntime") -> Runner:
    """The client's own ``OnnxStages`` (its session options, its input checks) on the repository's ONNX files."""
    stages = OnnxStages(bm.bundle, intra_op_threads=intra_op_threads, device=device)

    def calls(feeds: Feeds) -> dict[str, Callable[[], object]]:
        return chained_calls(stages.run_stage, stages.specs, feeds, e2e=lambda: stages.infer(feeds))

    threads = intra_op_threads or "default"
    return Runner(path, device, "fp32", calls, note=f"onnxruntime {ort.__version__}, OnnxStages, intra_op_threads={threads}")


def _session_stage(sessions: dict[str, ort.InferenceSession], specs) -> RunStage:
    """A stage on a raw session: no checks, every output asked for."""
    def run_stage(stage: str, tensors):
        spec = specs[stage]
        outs = sessions[stage].run(spec.output_names, {n: tensors[n] for n in spec.input_names})
        return dict(zip(spec.output_names, outs))

    return run_stage


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
    run_stage = _session_stage(sessions, specs)

    def calls(feeds: Feeds) -> dict[str, Callable[[], object]]:
        return chained_calls(run_stage, specs, feeds, bm=bm)

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
    specs = bm.specs

    def timed(fn):
        def call():
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
                out = fn()
            torch.cuda.synchronize()
            return out
        return call

    def calls(feeds: Feeds) -> dict[str, Callable[[], object]]:
        tensors = {k: torch.from_numpy(v).cuda() for k, v in feeds.items()}
        with torch.autocast("cuda", dtype=torch.float16, enabled=half):
            out = _torch_calls(model, specs, tensors, timed, bm, device="cuda")
        e2e = out[E2E]
        out[E2E] = lambda: {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in e2e().items()}  # the answer back on the host
        return out

    return Runner("pytorch-cuda", "cuda", "fp16" if half else "fp32", calls, note=torch.cuda.get_device_name(0))


def _profile_shapes(spec, batch: int) -> str:
    """TensorRT's shape string for a stage's inputs at ``batch``, e.g. ``L:8x1x224x224,TOKENS:8x32``."""
    return ",".join(f"{t.name}:" + "x".join(str(d) for d in (batch, *t.dims)) for t in spec.inputs)


def _tensorrt_runner(bm: BenchModel, fp16: bool) -> Runner:
    specs = stage_specs(bm.geometry)
    sessions = {}
    for stage in STAGES:
        # min/opt/max batch profiles: 1 / 8 / 16, matching the batch sweep.
        lo, opt, hi = (_profile_shapes(specs[stage], b) for b in (1, 8, 16))
        trt = {
            "trt_fp16_enable": fp16, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(bm.repository.parent / "trt_cache"),
            "trt_profile_min_shapes": lo, "trt_profile_opt_shapes": opt, "trt_profile_max_shapes": hi,
        }
        sessions[stage] = ort.InferenceSession(
            str(stage_path(bm.repository, bm.family, stage)),
            providers=[("TensorrtExecutionProvider", trt), "CUDAExecutionProvider"],
        )
    run_stage = _session_stage(sessions, specs)

    def calls(feeds: Feeds) -> dict[str, Callable[[], object]]:
        return chained_calls(run_stage, specs, feeds, bm=bm)

    precision = "fp16" if fp16 else "fp32"
    return Runner("onnxruntime-tensorrt", "cuda", precision, calls, note="TensorRT EP, profiles 1/8/16")
