"""The server half of a run: one tritonserver per config, every server path measured against the
family's ensemble (``bm.family``) and its stage models."""

from __future__ import annotations

import logging
from pathlib import Path

from langcolor.client.errors import LangcolorError

from .models import BenchModel
from .server_paths import StageClient, closed_loop, colorize_calls, colorize_families, remote, running_server
from .stats import measure

log = logging.getLogger(__name__)


def run_server_paths(ctx, bm: BenchModel, repository: Path | None = None, variant: str | None = None,
                     protocols: tuple[str, ...] | None = None, batches: tuple[int, ...] | None = None,
                     per_stage: bool = True, perf: bool = True, colorize: bool = True,
                     concurrencies: tuple[int, ...] | None = None) -> None:
    """Measure the ensemble (and, unless a tuning variant, the stages, perf_analyzer and colorize)."""
    o = ctx.options
    repository = repository or bm.repository
    if protocols is None:
        protocols = tuple(p for p in ("grpc", "http") if f"triton-{p}" in o.paths)
    batches = batches or o.batches
    concurrencies = concurrencies or o.concurrencies
    log_path = ctx.workdir / f"tritonserver-{bm.family}-{bm.config}-{variant or 'base'}.log"
    with running_server(repository, log_path=log_path) as server:
        ctx.doc.setdefault("server_startup_s", {})[f"{bm.family}/{bm.config}/{variant or 'base'}"] = round(server.startup_s, 1)
        for protocol in protocols:
            path = f"triton-{protocol}"
            rs = remote(server, protocol, bm)
            try:
                for batch in batches:
                    feeds = bm.inputs(batch)
                    stats = measure(lambda: rs.infer(feeds), batch, o.budget)
                    ctx.add(path, bm.config, "e2e", "cpu", "fp32", stats, variant=variant)
                if per_stage and 1 in o.stage_batches and (protocol == "grpc" or not o.quick):
                    _stages(ctx, bm, server, protocol, path, variant)
                feeds = bm.inputs(1)
                for c in concurrencies:
                    if c == 1 and 1 in batches:
                        continue  # the sequential batch-1 row above is this point
                    stats = closed_loop(lambda: rs.infer(feeds), 1, c, o.budget)
                    ctx.add(path, bm.config, "e2e", "cpu", "fp32", stats, variant=variant)
                if colorize and protocol == "grpc" and "colorize" in o.paths:
                    _colorize(ctx, bm, rs, repository)
            finally:
                rs.close()
        if perf and "perf_analyzer" in o.paths:
            _perf_analyzer(ctx, bm, server, variant)


def _stages(ctx, bm: BenchModel, server, protocol: str, path: str, variant: str | None) -> None:
    client = StageClient(server, protocol, bm)
    try:
        for batch in ctx.options.stage_batches:
            if batch > 8:
                continue  # a stage model takes at most max_batch_size (8) per request
            for stage, call in client.stage_calls(bm.inputs(batch)).items():
                stats = measure(call, batch, ctx.options.budget)
                ctx.add(path, bm.config, stage, "cpu", "fp32", stats, variant=variant)
    finally:
        client.close()


def _colorize(ctx, bm: BenchModel, rs, repository: Path) -> None:
    from .prepost import PHOTO_SIZES, photo_jpeg

    families = colorize_families(repository)
    if bm.family not in families:
        # Timing another family's endpoint against this family's client+ensemble would compare two networks.
        why = f"colorize: the endpoint in {repository} serves {', '.join(families) or 'nothing'}, not {bm.family!r}"
        log.info("%s; skipped", why)
        ctx.doc.setdefault("skipped", []).append(why)
        return
    if bm.user_values is None:
        # The endpoint takes user inputs (a caption, a photo), not tensors: with none that the family
        # accepts, there is nothing to send it.
        why = f"colorize: no representative user input that family {bm.family!r} accepts"
        log.info("%s; skipped", why)
        ctx.doc.setdefault("skipped", []).append(why)
        return
    model = None if bm.family == families[0] else bm.family  # the default family needs no MODEL input
    for size in ctx.options.colorize_sizes:
        w, h = PHOTO_SIZES[size]
        jpeg = photo_jpeg(w, h)
        for name, call in colorize_calls(rs, bm, jpeg, bm.user_values, model).items():
            stats = measure(call, 1, ctx.options.prepost_budget)
            ctx.add(name, bm.config, "e2e", "cpu", "fp32", stats, megapixels=round(w * h / 1e6, 2),
                    colorize_model=model if name == "colorize" else None,
                    note="bytes in, PNG out; client+ensemble = decode, Lab, resize, condition, gRPC ensemble, reconstruct, PNG")


def _perf_analyzer(ctx, bm: BenchModel, server, variant: str | None) -> None:
    from .perf_analyzer import ensure_perf_analyzer, run_perf_analyzer, version, write_input_data
    from .stats import LatencyStats

    try:
        binary = ensure_perf_analyzer()
    except LangcolorError as e:
        log.warning("perf_analyzer skipped: %s", e)
        ctx.doc.setdefault("skipped", []).append(f"perf_analyzer: {e}")
        return
    ctx.doc["versions"]["perf_analyzer"] = version(binary)
    data = write_input_data(ctx.workdir / f"pa_input_{bm.family}_{bm.config}.json", bm.inputs(1))
    for c in ctx.options.concurrencies:
        # A window must hold several requests: five of our own p50 at this concurrency, 1 to 15 s.
        ours = [r for r in ctx.doc["results"] if r["path"] == "triton-grpc" and r["config"] == bm.config
                and r["stage"] == "e2e" and r["batch"] == 1 and r["concurrency"] == c and r.get("variant") == variant]
        p50 = ours[0]["p50_ms"] if ours else 1000.0
        interval = int(min(15_000, max(1000 if ctx.options.quick else 3000, 5 * p50)))
        try:
            r = run_perf_analyzer(binary, server.endpoints.grpc_url, "grpc", bm.family, data, c, ctx.workdir,
                                  interval_ms=interval, max_trials=3 if ctx.options.quick else 8,
                                  timeout_s=60 + 12 * interval / 1000)
        except (LangcolorError, OSError) as e:
            log.warning("perf_analyzer at concurrency %d failed: %s", c, e)
            ctx.doc.setdefault("skipped", []).append(f"perf_analyzer c={c}: {e}")
            continue
        stats = LatencyStats(
            n=0, batch=1, concurrency=r.concurrency, p50_ms=r.p50_ms, p95_ms=r.p95_ms, p99_ms=r.p99_ms,
            mean_ms=r.avg_ms, min_ms=float("nan"), throughput=r.throughput, wall_s=float("nan"), stable=r.stable,
            cv=float("nan"), rel_iqr=float("nan"), half_drift=float("nan"),
            unstable_reason="" if r.stable else f"perf_analyzer: {r.note}",
        )
        ctx.add("perf_analyzer", bm.config, "e2e", "cpu", "fp32", stats, variant=variant, protocol="grpc",
                window_ms=interval,
                server_queue_ms=round(r.server_queue_ms, 3), server_compute_ms=round(r.server_compute_ms, 3))
