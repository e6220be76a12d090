"""Paths through a real tritonserver: the family's ensemble (``<family>``) over gRPC and HTTP, each
stage model (``<family>_encoder`` ...), many callers at once, and the ``colorize`` bytes endpoint when
it serves that family.

The server is the bundled tritonserver started by ``langcolor.server.launcher.TritonServer`` on
free loopback ports. End-to-end calls go through the project's own client (``RemoteStages``, with
its checks), so the figure is what a user of ``Colorizer(server=..., via="ensemble")`` pays;
per-stage calls use ``tritonclient`` directly on the stage models. Tensor names come from the
family's stage specs.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np

from langcolor.client import families, names, photo
from langcolor.client.colorizer import stack_feeds
from langcolor.client.remote import RemoteStages
from langcolor.client.spec import STAGES, stage_specs
from langcolor.server.launcher import TritonServer, free_ports

from .stats import Budget, LatencyStats, summarize

if TYPE_CHECKING:  # models imports torch; this module is also used by the torch-free soak
    from .models import BenchModel

log = logging.getLogger(__name__)

PROTOCOLS = ("grpc", "http")


@contextmanager
def running_server(repository: Path, log_path: Path | None = None) -> Iterator[TritonServer]:
    http, grpc, metrics = free_ports(3)
    server = TritonServer(repository, http_port=http, grpc_port=grpc, metrics_port=metrics, log_path=log_path)
    server.start()
    log.info("tritonserver up in %.1f s on %s (grpc %d, http %d)", server.startup_s, repository, grpc, http)
    try:
        yield server
    finally:
        server.stop()


def url_for(server: TritonServer, protocol: str) -> str:
    return server.endpoints.grpc_url if protocol == "grpc" else server.endpoints.http_url


def remote(server: TritonServer, protocol: str, bm: "BenchModel", max_in_flight: int = 16) -> RemoteStages:
    """The client on ``bm``'s ensemble; it refuses a served model whose conditioner files or geometry differ."""
    return RemoteStages(url_for(server, protocol), protocol=protocol, family=bm.family,
                        assets=bm.bundle.manifest.assets, max_in_flight=max_in_flight, geometry=bm.geometry)


def colorize_families(repository: Path) -> tuple[str, ...]:
    """Families the repository's ``colorize`` endpoint serves, its default (``ensemble``) first; () if none.

    An endpoint with a ``families`` parameter takes the others through its ``MODEL`` input; an older
    one serves only its ``ensemble`` (the default family when even that is absent)."""
    from google.protobuf import text_format

    from langcolor.export.triton_config import CONFIG_FILE, parse, read_parameters

    config = Path(repository) / names.COLORIZE_MODEL / CONFIG_FILE
    if not config.is_file():
        return ()
    try:
        params = read_parameters(parse(config.read_text()))
    except text_format.ParseError as e:
        log.warning("%s: unreadable (%s)", config, e)
        return ()
    default = params.get(names.PARAM_ENSEMBLE) or families.DEFAULT_FAMILY
    others = [f.strip() for f in params.get(names.PARAM_FAMILIES, "").split(",") if f.strip()]
    return (default, *[f for f in others if f != default])


class StageClient:
    """One stage model called directly (no ensemble), same tensors as the in-process stage."""

    def __init__(self, server: TritonServer, protocol: str, bm: "BenchModel"):
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self.module, self.protocol = module, protocol
        self.client = module.InferenceServerClient(url_for(server, protocol))
        self.specs = stage_specs(bm.geometry)

    def call(self, stage: str, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The stage's inputs by name -> its outputs by name."""
        spec = self.specs[stage]
        http = {"binary_data": True} if self.protocol == "http" else {}
        inputs = []
        for t in spec.inputs:
            a = tensors[t.name]
            i = self.module.InferInput(t.name, list(a.shape), t.client_dtype)
            i.set_data_from_numpy(a, **http)
            inputs.append(i)
        requested = [self.module.InferRequestedOutput(n, **http) for n in spec.output_names]
        result = self.client.infer(spec.model_name, inputs, outputs=requested)
        return {n: result.as_numpy(n) for n in spec.output_names}

    def stage_calls(self, feeds: Mapping[str, np.ndarray]) -> dict[str, Callable[[], object]]:
        from .models import stage_feeds

        per_stage = stage_feeds(self.call, self.specs, feeds)
        return {stage: (lambda s=stage: self.call(s, per_stage[s])) for stage in STAGES}

    def close(self) -> None:
        self.client.close()


def closed_loop(call: Callable[[], object], batch: int, concurrency: int, budget: Budget) -> LatencyStats:
    """``concurrency`` callers, each sending its next request as soon as the last returns.

    Every caller warms up first; then all start together and run for the budget's time (at least
    ``min_repeats`` requests in all). Throughput = images answered / wall-clock time of the window.
    """
    per_caller = max(2, -(-budget.min_repeats // concurrency))
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[BaseException] = []
    window = [0.0, 0.0]  # start, planned end: set by the barrier as every caller is released

    def open_window() -> None:
        window[0] = time.perf_counter()
        window[1] = window[0] + budget.max_seconds

    start = threading.Barrier(concurrency + 1, action=open_window)

    def caller(k: int) -> None:
        try:
            for _ in range(min(budget.warmup, 2)):
                call()
            start.wait()
            done = 0
            while done < per_caller or time.perf_counter() < window[1]:
                t0 = time.perf_counter()
                call()
                latencies[k].append(time.perf_counter() - t0)
                done += 1
                if done >= budget.max_repeats:
                    break
        except BaseException as e:  # reported below, with the other callers' results discarded
            errors.append(e)
            try:
                start.abort()
            except threading.BrokenBarrierError:
                pass

    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    for t in threads:
        t.join()
    wall = time.perf_counter() - window[0]
    if errors:
        raise errors[0]
    flat = [x for per in latencies for x in per]
    return summarize(flat, batch, concurrency, wall_s=wall)


def wire_values(record: families.Family, values: Mapping[str, Any]) -> dict[str, bytes | str]:
    """A family's user inputs as the ``colorize`` endpoint takes them: text as is, an image as its bytes."""
    kinds = {f.name: f.kind for f in record.inputs}
    return {k: (v if kinds[k] == families.TEXT else bytes(v)) for k, v in values.items() if v is not None}


def colorize_calls(rs: RemoteStages, bm: "BenchModel", image: bytes, values: Mapping[str, Any],
                   model: str | None = None) -> dict[str, Callable[[], object]]:
    """The bytes endpoint against the same work done by the client around the ensemble (both -> PNG):
    prepare, condition, the ensemble, finish, encode: what ``Colorizer(via="ensemble")`` does.
    ``values``: the family's user inputs; ``model``: the endpoint's ``MODEL`` input (None: its
    default family, which must be ``bm.family``)."""
    geometry = bm.geometry
    wire = wire_values(bm.record, values)

    codec = bm.record.image_codec

    def client_side() -> bytes:
        prepared = codec.prepare(image, values, geometry)  # a Lab family: L [H,W] and [1,S,S]
        conditioned = bm.conditioner.condition(values)
        outputs = rs.infer(stack_feeds(geometry, [{**codec.feeds(prepared, geometry), **conditioned.tensors}]))
        rgb, _ = codec.finish(prepared, {n: v[0] for n, v in outputs.items()})
        return codec.encode(prepared, rgb, "PNG")

    def endpoint() -> bytes:
        return rs.colorize_bytes(image, model=model, **wire).data

    return {"colorize": endpoint, "client+ensemble": client_side}
