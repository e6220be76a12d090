"""TensorRT engines built by ``trtexec`` (when it is on PATH), FP32 and FP16, min/opt/max batch 1/8/16.

Each stage's ONNX file is built into an engine with an optimisation profile over the batch axis and
timed by trtexec itself at batch 1 and 8 (``--exportTimes`` gives every iteration's GPU latency,
summarised with the same statistics as every other path). Skipped, and said so, without trtexec or
without a GPU.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess

from langcolor.client.runtime import stage_path
from langcolor.client.spec import STAGES, stage_specs

from .models import BenchModel
from .stats import summarize

log = logging.getLogger(__name__)

PROFILE = (1, 8, 16)  # min / opt / max batch


def _shapes(bm: BenchModel, stage: str, batch: int) -> str:
    spec = stage_specs(bm.geometry)[stage]
    return ",".join(f"{t.name}:" + "x".join(str(d) for d in (batch, *t.dims)) for t in spec.inputs)


def run_trtexec_paths(ctx, bm: BenchModel, batches: tuple[int, ...] = (1, 8)) -> None:
    exe = shutil.which("trtexec")
    if exe is None or not ctx.doc["machine"].get("gpus"):
        ctx.doc.setdefault("skipped", []).append("trtexec: not on PATH or no GPU")
        log.info("trtexec paths skipped (no trtexec on PATH or no GPU)")
        return
    for fp16 in (False, True):
        precision = "fp16" if fp16 else "fp32"
        for stage in STAGES:
            onnx = stage_path(bm.repository, bm.family, stage)
            engine = ctx.workdir / f"{bm.family}_{bm.config}_{stage}_{precision}.plan"
            lo, opt, hi = (_shapes(bm, stage, b) for b in PROFILE)
            for batch in batches:
                times = ctx.workdir / f"trt_{bm.family}_{bm.config}_{stage}_{precision}_b{batch}.json"
                cmd = [exe, f"--onnx={onnx}", f"--minShapes={lo}", f"--optShapes={opt}", f"--maxShapes={hi}",
                       f"--shapes={_shapes(bm, stage, batch)}", f"--exportTimes={times}", "--iterations=200",
                       "--warmUp=500", "--duration=0"]
                cmd += ["--fp16"] if fp16 else []
                cmd += [f"--loadEngine={engine}"] if engine.is_file() else [f"--saveEngine={engine}"]
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
                if done.returncode != 0 or not times.is_file():
                    ctx.doc.setdefault("skipped", []).append(f"trtexec {stage} {precision} b{batch}: {done.stdout[-300:]}")
                    continue
                lat = [t["latencyMs"] / 1e3 for t in json.loads(times.read_text()) if "latencyMs" in t]
                ctx.add("tensorrt-trtexec", bm.config, stage, "cuda", precision, summarize(lat, batch),
                        note="trtexec latencyMs: host-to-device copy + compute + device-to-host copy")
