"""One benchmark run: every selected path on the same inputs, rows appended to one JSON document.

A run measures one model family (``BenchOptions.family``, any registered one); every row carries it,
and the latency targets are computed on that family's rows (``targets.py`` says whether they bind it).

Order per config: work per image (FLOP count) -> in-process paths (PyTorch, onnxruntime, GPU
providers when present) over the batch sweep -> a real tritonserver on the config's repository
(ensemble over gRPC and HTTP, per stage, concurrency sweep, perf_analyzer at the same
concurrencies, the colorize endpoint against the client doing the same work) -> client pre/post
for each photo size. The machine's peak is measured first, in the same process.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from langcolor.client.families import DEFAULT_FAMILY

from .flops import matrix_isa, measure_peak, measure_peak_bf16, network_gflops_per_image
from .models import BenchModel, load_model
from .paths import E2E, Runner, gpu_runners, onnxruntime_runner, pytorch_runner
from .report import make_row, new_document, write_document
from .stats import FULL, QUICK, Budget, measure
from .targets import evaluate_targets, targets_note

log = logging.getLogger(__name__)

ALL_PATHS = ("pytorch", "onnxruntime", "gpu", "triton-grpc", "triton-http", "perf_analyzer", "colorize", "prepost")
STAGES_E2E = ("encoder", "fusion", "decoder", E2E)


@dataclass(frozen=True)
class BenchOptions:
    quick: bool = True
    family: str = DEFAULT_FAMILY  # model family: which networks, ensemble and stage models are measured
    configs: tuple[str, ...] = ("full", "small")
    paths: tuple[str, ...] = ALL_PATHS
    batches: tuple[int, ...] = (1,)
    concurrencies: tuple[int, ...] = (1, 8)
    photo_sizes: tuple[str, ...] = ("0.3MP", "3MP")  # 12 MP: ~10 s per reconstruct + PNG here, full sweep only
    colorize_sizes: tuple[str, ...] = ("0.3MP",)
    tune: bool = False
    budget: Budget = QUICK
    prepost_budget: Budget = Budget(warmup=1, min_repeats=6, max_repeats=100, max_seconds=3.0, round_size=3)
    workdir: Path | None = None
    stage_batches: tuple[int, ...] = (1,)  # batches at which encoder/fusion/decoder are timed apart

    @classmethod
    def make(cls, quick: bool, **kw) -> "BenchOptions":
        if quick:
            return cls(quick=True, **{"tune": True, **kw})  # quick tuning: the two thread settings only
        full = dict(batches=(1, 2, 4, 8, 16), concurrencies=(1, 2, 4, 8, 16), colorize_sizes=("0.3MP", "3MP"),
                    photo_sizes=("0.3MP", "3MP", "12MP"),
                    tune=True, budget=FULL, stage_batches=(1, 8),
                    prepost_budget=Budget(warmup=1, min_repeats=10, max_repeats=200, max_seconds=8.0, round_size=5))
        full.update(kw)
        return cls(quick=False, **full)


@dataclass
class Context:
    options: BenchOptions
    doc: dict
    workdir: Path
    peak_gflops: float  # fp32
    peaks: dict[str, float] = field(default_factory=dict)  # precision -> measured matmul GFLOP/s
    flops: dict[str, dict[str, float]] = field(default_factory=dict)  # config -> stage -> GFLOPs/image
    output: Path | None = None  # rewritten after every row, so an interrupted run keeps what it measured

    def add(self, path: str, config: str, stage: str, device: str, precision: str, stats, **extra) -> dict:
        gf = self.flops.get(config, {}).get(stage)
        row = make_row(path, config, stage, device, precision, stats, gflops_per_image=gf,
                       peak_gflops=self.peaks.get(precision, self.peak_gflops if precision == "fp32" else None)
                       if device == "cpu" else None, family=self.options.family, **extra)
        self.doc["results"].append(row)
        if self.output is not None:
            write_document(self.doc, self.output)
        flag = "" if row["stable"] else f"  UNSTABLE: {row['unstable_reason']}"
        log.info("%-16s %-5s %-8s b=%-2d c=%-2d p50 %8.2f ms  p99 %8.2f ms  %8.2f img/s%s%s", path, config, stage,
                 row["batch"], row["concurrency"], row["p50_ms"], row["p99_ms"], row["throughput"],
                 f"  [{extra['variant']}]" if extra.get("variant") else "", flag)
        return row


def _count_flops(bm: BenchModel) -> dict[str, float]:
    feeds = {k: torch.from_numpy(v) for k, v in bm.inputs(1).items()}
    return network_gflops_per_image(bm.model, feeds)


def run_in_process(ctx: Context, bm: BenchModel, runner: Runner) -> None:
    o = ctx.options
    for batch in o.batches:
        calls = runner.stage_calls(bm.inputs(batch))
        stages = STAGES_E2E if batch in o.stage_batches else (E2E,)
        for stage in stages:
            stats = measure(calls[stage], batch, o.budget)
            ctx.add(runner.path, bm.config, stage, runner.device, runner.precision, stats, note=runner.note)


def run_config(ctx: Context, config: str) -> BenchModel:
    o = ctx.options
    bm = load_model(config, ctx.workdir, family=o.family)
    ctx.doc.setdefault("models", {})[config] = bm.describe()
    ctx.flops[config] = _count_flops(bm)
    ctx.doc.setdefault("flops", {})[config] = {k: float(f"{v:.6g}") for k, v in ctx.flops[config].items()}  # 6 significant digits: tiny nets are ~1e-4 GFLOP
    runners: list[Runner] = []
    if "pytorch" in o.paths:
        runners.append(pytorch_runner(bm))
    if "onnxruntime" in o.paths:
        runners.append(onnxruntime_runner(bm))
    if "gpu" in o.paths:
        runners += gpu_runners(bm)
    for runner in runners:
        run_in_process(ctx, bm, runner)
    if "gpu" in o.paths:
        from .trtexec import run_trtexec_paths

        run_trtexec_paths(ctx, bm)
    server_paths = {"triton-grpc", "triton-http", "perf_analyzer", "colorize"} & set(o.paths)
    if server_paths:
        from .server_bench import run_server_paths

        run_server_paths(ctx, bm)
    if o.tune:
        from .tuning import run_tuning

        run_tuning(ctx, bm)
    return bm


def run_prepost(ctx: Context, bm: BenchModel) -> None:
    from .prepost import PHOTO_SIZES, photo_jpeg, prepost_calls

    for size in ctx.options.photo_sizes:
        w, h = PHOTO_SIZES[size]
        jpeg = photo_jpeg(w, h)
        for step, call in prepost_calls(bm, jpeg).items():
            stats = measure(call, 1, ctx.options.prepost_budget)
            ctx.add("client-prepost", bm.config, step, "cpu", "fp32", stats, megapixels=round(w * h / 1e6, 2),
                    jpeg_bytes=len(jpeg))


def run_bench(options: BenchOptions, output: Path) -> dict:
    """Run every selected path, write the JSON to ``output`` (after each config, so a crash keeps
    what was measured) and return the document."""
    with tempfile.TemporaryDirectory(prefix="langcolor-bench-") as tmp:
        workdir = Path(options.workdir or tmp)
        doc = new_document({k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()
                            if k not in ("budget", "prepost_budget", "workdir")}
                           | {"budget": asdict(options.budget), "prepost_budget": asdict(options.prepost_budget)})
        peak = measure_peak()
        doc["peak"] = asdict(peak)
        log.info("peak: %.1f GFLOP/s (float32 %dx%d matmul, %d threads; %s)", peak.gflops, peak.n, peak.n, peak.threads, peak.by_library)
        # Each row's fraction_of_peak is against the peak of its own precision.
        doc["peaks"] = {"fp32": round(peak.gflops, 2)}
        doc["machine"]["matrix_isa"] = matrix_isa()
        try:
            doc["peaks"]["bf16"] = round(measure_peak_bf16().gflops, 2)
            log.info("bf16 peak: %.1f GFLOP/s (torch matmul; CPU matrix ISA: %s)", doc["peaks"]["bf16"],
                     ", ".join(doc["machine"]["matrix_isa"]) or "none reported")
        except RuntimeError as e:  # a torch build without CPU bfloat16 matmul
            doc.setdefault("skipped", []).append(f"bf16 peak: {e}")
        doc["family"] = options.family
        doc["targets_note"] = targets_note(options.family)
        ctx = Context(options, doc, workdir, peak.gflops, peaks=dict(doc["peaks"]), output=Path(output))
        models = {}
        for config in options.configs:
            models[config] = run_config(ctx, config)
            doc["targets"] = evaluate_targets(doc["results"], family=options.family)
            write_document(doc, output)
        if "prepost" in options.paths:
            config = "small" if "small" in options.configs else options.configs[0]
            run_prepost(ctx, models[config])
        doc["targets"] = evaluate_targets(doc["results"], family=options.family)
        doc["peak_after"] = asdict(measure_peak())  # a second look: did the machine's capacity move during the run?
        doc["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        write_document(doc, output)
    return doc
