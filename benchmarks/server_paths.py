"""Paths through a real tritonserver: the family's ensemble (``lcode`` or ``lcoins``) over gRPC and
HTTP, each stage model (``<family>_encoder`` ...), many callers at once, and the ``colorize`` bytes
endpoint when it serves that family.

The server is the bundled tritonserver started by ``langcolor.server.launcher.TritonServer`` on
free loopback ports. End-to-end calls go through the project's own client (``RemoteStages``, with
its checks), so the figure is what a user of ``Colorizer(server=...)`` pays; per-stage calls use
``tritonclient`` directly on the stage models.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from langcolor.client.remote import RemoteStages
from langcolor.client.spec import stage_specs
from langcolor.server.launcher import TritonServer, free_ports

from .models import BenchModel
from .stats import Budget, LatencyStats, summarize

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


def remote(server: TritonServer, protocol: str, bm: BenchModel, max_in_flight: int = 16) -> RemoteStages:
    """The client on ``bm``'s ensemble; it refuses a served model whose tokenizer or geometry differs."""
    return RemoteStages(url_for(server, protocol), protocol=protocol, family=bm.family,
                        tokenizer_sha256=bm.tokenizer.sha256, max_in_flight=max_in_flight, geometry=bm.geometry)


def _colorize_param(text: str, key: str) -> str | None:
    m = re.search(r'key:\s*"' + key + r'"\s*value:\s*\{\s*string_value:\s*"([^"]*)"', text)
    return m.group(1) if m else None


def colorize_families(repository: Path) -> tuple[str, ...]:
    """Families the repository's ``colorize`` endpoint serves, its default (``ensemble``) first; () if none.

    An endpoint with a ``families`` parameter takes the others through its ``MODEL`` input; an older
    one serves only its ``ensemble``."""
    config = Path(repository) / "colorize" / "config.pbtxt"
    if not config.is_file():
        return ()
    text = config.read_text()
    default = _colorize_param(text, "ensemble") or "lcode"  # the endpoint's default when the parameter is absent
    others = [f.strip() for f in (_colorize_param(text, "families") or "").split(",") if f.strip()]
    return (default, *[f for f in others if f != default])


class StageClient:
    """One stage model called directly (no ensemble), same tensors as the in-process stage."""

    def __init__(self, server: TritonServer, protocol: str, bm: BenchModel):
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self.module, self.protocol = module, protocol
        self.client = module.InferenceServerClient(url_for(server, protocol))
        self.specs = stage_specs(bm.geometry)

    def call(self, stage: str, *arrays: np.ndarray) -> np.ndarray:
        spec = self.specs[stage]
        inputs = []
        for t, a in zip(spec.inputs, arrays, strict=True):
            i = self.module.InferInput(t.name, list(a.shape), t.client_dtype)
            if self.protocol == "http":
                i.set_data_from_numpy(a, binary_data=True)
            else:
                i.set_data_from_numpy(a)
            inputs.append(i)
        out = spec.output_names[0]
        requested = [self.module.InferRequestedOutput(out, **({"binary_data": True} if self.protocol == "http" else {}))]
        return self.client.infer(spec.model_name, inputs, outputs=requested).as_numpy(out)

    def stage_calls(self, L: np.ndarray, tokens: np.ndarray) -> dict[str, Callable[[], object]]:
        feats = self.call("encoder", L)
        modulated = self.call("fusion", feats, tokens)
        return {
            "encoder": lambda: self.call("encoder", L),
            "fusion": lambda: self.call("fusion", feats, tokens),
            "decoder": lambda: self.call("decoder", modulated),
        }

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


def colorize_calls(rs: RemoteStages, bm: BenchModel, image: bytes, caption: str,
                   model: str | None = None) -> dict[str, Callable[[], object]]:
    """The bytes endpoint against the same work done by the client around the ensemble (both -> PNG).
    ``model``: the endpoint's ``MODEL`` input (None: its default family, which must be ``bm.family``)."""
    from langcolor.client.imageio import encode_image, load_image
    from langcolor.client.reconstruct import prepare_l, reconstruct

    def client_side() -> bytes:
        loaded = load_image(image)
        l_full, l_small = prepare_l(loaded.rgb, bm.geometry.image_size)  # [H,W], [1,S,S]
        tokens = bm.tokenizer.encode(caption).ids[None]  # [1,T]
        ab = rs.infer_ab(l_small[None], tokens)  # [1,2,S,S]
        return encode_image(reconstruct(l_full, ab[0]), "PNG")

    def endpoint() -> bytes:
        return rs.colorize_bytes(image, caption) if model is None else rs.colorize_bytes(image, caption, model=model)

    return {"colorize": endpoint, "client+ensemble": client_side}
