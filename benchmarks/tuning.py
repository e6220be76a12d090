"""What was tried to make the paths faster, each measured in the same run as the baseline.

- onnxruntime in-process: graph optimisation level, intra-op threads, execution mode, spinning.
- Triton: the family's serving configs regenerated with a changed ``Target`` (threads per instance,
  dynamic batching delay, preferred batch sizes, instance count, the stages fused into one Python
  model or not) into a *copy* of the repository in the run's temp folder; the exporter's own
  ``write_serving_configs`` writes them, so only the setting differs. ``previous`` is the layout
  shipped before the fused chain (three Python stages, one thread each, 2 ms queue delay).
  Which settings to adopt is a decision for ``export/triton_config.py``'s owner, made from these rows.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, replace
from pathlib import Path

from langcolor.client.runtime import VERSION
from langcolor.client.spec import MANIFEST_FILE, ModelManifest
from langcolor.export.triton_config import Target
from langcolor.export.triton_repo import write_serving_configs

from .models import BenchModel
from .paths import E2E, OrtOptions, ort_variant_runner
from .stats import measure

log = logging.getLogger(__name__)

ORT_VARIANTS = (
    OrtOptions(),  # what the client's session_options() does (opt=all, default threads, sequential, no spin)
    OrtOptions(opt_level="disable"),
    OrtOptions(opt_level="basic"),
    OrtOptions(opt_level="extended"),
    OrtOptions(intra_op_threads=1),
    OrtOptions(intra_op_threads=2),
    OrtOptions(parallel=True),
    OrtOptions(spinning=True),
)

BASE_TARGET = Target(backend="python")
TRITON_VARIANTS: dict[str, Target] = {
    "base": BASE_TARGET,
    "previous": replace(BASE_TARGET, fused=False, intra_op_threads=1, max_queue_delay_us=2000),
    "unfused": replace(BASE_TARGET, fused=False),
    "threads=1": replace(BASE_TARGET, intra_op_threads=1),
    "threads=2": replace(BASE_TARGET, intra_op_threads=2),
    "delay=2ms": replace(BASE_TARGET, max_queue_delay_us=2000),
    "delay=10ms": replace(BASE_TARGET, max_queue_delay_us=10_000),
    "preferred=8": replace(BASE_TARGET, preferred_batch_sizes=(8,)),
    "instances=2": replace(BASE_TARGET, instance_count=2),
    "instances=2,threads=2": replace(BASE_TARGET, instance_count=2, intra_op_threads=2),
}
QUICK_TRITON_VARIANTS = ("base", "previous", "unfused")  # base: the current defaults regenerated (the measured repository may predate them)


def run_ort_variants(ctx, bm: BenchModel, batches: tuple[int, ...] = (1, 8),
                     variants: tuple[OrtOptions, ...] = ORT_VARIANTS) -> None:
    for options in variants:
        runner = ort_variant_runner(bm, options)
        for batch in batches:
            stats = measure(runner.stage_calls(bm.inputs(batch))[E2E], batch, ctx.options.budget)
            ctx.add("onnxruntime", bm.config, E2E, "cpu", "fp32", stats, variant=f"ort:{options.label}",
                    note="raw sessions, no input checks")


def run_pytorch_threads(ctx, bm: BenchModel, threads: int = 1, batches: tuple[int, ...] = (1,)) -> None:
    """PyTorch eager with ``threads`` intra-op threads: on a CPU shared with other jobs, torch's OpenMP
    barriers wait for a descheduled thread at every small op (an LSTM's steps, a transformer's many
    small products)."""
    import torch

    from .paths import pytorch_runner

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runner = pytorch_runner(bm)
        for batch in batches:
            calls = runner.stage_calls(bm.inputs(batch))
            for stage in ("fusion", E2E):
                stats = measure(calls[stage], batch, ctx.options.budget)
                ctx.add("pytorch", bm.config, stage, "cpu", "fp32", stats, variant=f"torch:threads={threads}")
    finally:
        torch.set_num_threads(before)


def write_variant(repository: Path, out: Path, target: Target, family: str) -> Path:
    """Copy ``repository`` to ``out`` with ``family``'s serving configs regenerated for ``target``
    (threads left unset: the count the export chose for the family)."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(repository, out)
    manifest = ModelManifest.load(Path(repository) / family / VERSION / MANIFEST_FILE)
    if target.intra_op_threads is None:
        target = replace(target, intra_op_threads=manifest.extra.get("serving", {}).get("intra_op_threads", 1))
    write_serving_configs(out, manifest.geometry, target, manifest.assets, manifest.weights_sha256)
    return out


def run_triton_variants(ctx, bm: BenchModel, names: tuple[str, ...], concurrencies: tuple[int, ...]) -> None:
    from .server_bench import run_server_paths

    for name in names:
        target = TRITON_VARIANTS[name]
        folder = f"variant_{bm.family}_{bm.config}_{name.replace('=', '').replace(',', '_')}"
        repo = write_variant(bm.repository, ctx.workdir / folder, target, bm.family)
        ctx.doc.setdefault("triton_variants", {})[name] = asdict(target)
        try:
            run_server_paths(ctx, bm, repository=repo, variant=f"triton:{name}", protocols=("grpc",), batches=(1,),
                             per_stage=False, perf=False, colorize=False, concurrencies=concurrencies)
        except Exception as e:  # one variant failing to load must not lose the run
            log.warning("triton variant %s failed: %s", name, e)
            ctx.doc.setdefault("skipped", []).append(f"triton variant {name}: {e}")
        finally:
            shutil.rmtree(repo, ignore_errors=True)


def run_tuning(ctx, bm: BenchModel) -> None:
    o = ctx.options
    if o.quick:
        # The shipped serving configuration against the one it replaced and against the same
        # settings without the fused chain, side by side in one run.
        if bm.config == "full":
            run_ort_variants(ctx, bm, batches=(1,), variants=(OrtOptions(intra_op_threads=1),))
        run_triton_variants(ctx, bm, QUICK_TRITON_VARIANTS, (1, 8))
        return
    run_pytorch_threads(ctx, bm)
    run_ort_variants(ctx, bm)
    run_triton_variants(ctx, bm, tuple(n for n in TRITON_VARIANTS if n != "base"), (1, 8))
