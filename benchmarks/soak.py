"""Load and soak against a real Triton server on loopback: many concurrent clients, a fixed number of
requests, over gRPC and HTTP, to a family's ensemble (tensors) and to the ``colorize`` endpoint (bytes).

    python -m langcolor.benchmarks.soak --requests 2000 --concurrency 16 [--output soak.json]
    python -m langcolor.benchmarks.soak --endpoint FAMILY --requests 1000

The endpoints are every registered family's ensemble and ``colorize``; ``--endpoint both`` (the
default) is the default family's ensemble and ``colorize``. Without ``--server`` it starts its own
tritonserver on free 127.0.0.1 ports from the shipped model repository and stops it at the end.
Figures per (protocol, endpoint): errors (must be 0), p50/p99 latency, throughput, and the resident
memory of the server's whole process tree (tritonserver plus its Python-backend stubs) after warm-up
and at the end, sampled along the way: a leak shows as steady growth. The run stops by itself: after
``--requests`` or ``--max-seconds``, whichever first. ``tests/test_load.py`` runs a short version of
the same ``run_load``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from langcolor.client import families, names
from langcolor.client.errors import LangcolorError
from langcolor.client.provenance import git_revision
from langcolor.client.spec import ModelGeometry, ensemble_spec

log = logging.getLogger(__name__)

COLORIZE = names.COLORIZE_MODEL  # the bytes endpoint; every other endpoint is a family's ensemble
PROTOCOLS = ("grpc", "http")
REQUEST_TIMEOUT_S = 120.0
MB = 1 << 20
CAPTIONS = ("a red circle on a blue background", "a green square", "the yellow triangle and a purple diamond",
            "a brown circle", "an orange square on a gray background")


def endpoints() -> tuple[str, ...]:
    """Every registered family's ensemble (the default first), then ``colorize``."""
    return (*families.names(), COLORIZE)


def both() -> tuple[str, ...]:
    """``--endpoint both``: the default family's ensemble and the bytes endpoint."""
    return (families.DEFAULT_FAMILY, COLORIZE)


@dataclass(frozen=True)
class LoadResult:
    protocol: str
    endpoint: str
    requests: int  # answered, good or bad
    concurrency: int
    errors: int
    error_samples: tuple[str, ...]  # the first few messages
    p50_ms: float
    p99_ms: float
    throughput_rps: float
    seconds: float
    rss_start_mb: float  # server process tree, after warm-up
    rss_end_mb: float
    rss_max_mb: float
    rss_samples_mb: tuple[float, ...]  # about ten, evenly spread over the run

    @property
    def rss_growth_mb(self) -> float:
        return self.rss_end_mb - self.rss_start_mb


def server_rss_mb(pid: int | None) -> float:
    """Resident memory of ``pid`` and all its descendants (the Python-backend stubs), in MiB."""
    if pid is None:
        return float("nan")
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:  # a stub that just exited
            pass
    return total / MB


# ------------------------------------------------------------------------------ requests
@dataclass(frozen=True)
class Workload:
    """Inputs cycled through by every client: real photographs at several sizes, several user inputs."""

    family: str
    geometry: ModelGeometry
    feeds: tuple[dict[str, np.ndarray], ...]  # the ensemble's inputs, each batch 1 (image + conditions)
    images: tuple[bytes, ...]  # encoded PNG/JPEG
    values: tuple[dict[str, bytes], ...]  # the family's user inputs as the endpoint takes them (tensor name -> bytes)


def _user_values(record: families.Family, i: int, images: list[bytes]) -> dict[str, Any]:
    """The ``i``-th user input of every field: the field's own examples (else a caption) for text,
    another photo for an image."""
    def text(f: families.InputField) -> str:
        pool = f.examples or CAPTIONS
        return pool[i % len(pool)]

    return {f.name: text(f) if f.kind == families.TEXT else images[(i + 1) % len(images)] for f in record.inputs}


def _accepted(record: families.Family, read: Any, given: dict[str, Any]) -> tuple[dict | None, Any]:
    """(values, read(values)) for ``given``, or with fewer of its optional inputs (inputs that exclude
    each other: a reference or a palette; a canvas of another size than the image); (None, None) if
    ``read`` refuses them all."""
    from itertools import combinations

    optional = [f.name for f in record.inputs if not f.required and f.name in given]
    for n in range(len(optional) + 1):
        for dropped in combinations(optional, n):
            values = {k: v for k, v in given.items() if k not in dropped}
            try:
                return values, read(values)
            except LangcolorError as e:
                log.info("%s: inputs %s refused (%s)", record.name, sorted(values), e)
    return None, None


def default_workload(model_repository: Path, family: str | None = None) -> Workload:
    """Photos and user inputs for ``family`` (None: the family the repository's ``colorize`` endpoint
    colours by default); the ensemble's tensors made by its own conditioner and sized for it."""
    from PIL import Image
    from skimage import data as skdata

    from langcolor.client.runtime import ModelBundle

    from .server_paths import colorize_families

    if family is None:
        family = next(iter(colorize_families(model_repository)), families.DEFAULT_FAMILY)
    bundle = ModelBundle.load(model_repository, family=family, stages=False)
    geometry = bundle.geometry
    photos = [skdata.astronaut()[::4, ::4], skdata.coffee()[::3, ::3], skdata.chelsea()[::2, ::2],
              np.repeat(skdata.camera()[::4, ::4, None], 3, axis=2)]
    images = []
    for i, rgb in enumerate(photos):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG" if i % 2 else "PNG", quality=90)
        images.append(buf.getvalue())
    codec, fields = bundle.family.image_codec, {f.name: f for f in bundle.family.inputs}
    feeds, values = [], []
    for i in range(max(len(CAPTIONS), len(images))):
        image = images[i % len(images)]

        def read(values: dict[str, Any]) -> dict[str, Any]:  # the image's tensors and the conditions
            return {**codec.feeds(codec.prepare(image, values, geometry), geometry),
                    **bundle.conditioner.condition(values).tensors}

        given, per_image = _accepted(bundle.family, read, _user_values(bundle.family, i, images))
        if given is None:  # this family does not read this input; the others still load it
            continue
        feeds.append({t.name: np.asarray(per_image[t.name])[None] for t in ensemble_spec(geometry).inputs})  # [1, ...]
        values.append({fields[k].tensor_name: (v.encode() if isinstance(v, str) else v) for k, v in given.items()})
    if not feeds:
        raise LangcolorError(f"model '{family}' accepts none of the soak's inputs")
    return Workload(family, geometry, tuple(feeds), tuple(images), tuple(values))


class _Client:
    """One simulated client: its own tritonclient connection (the HTTP client is not thread-safe)."""

    def __init__(self, url: str, protocol: str, endpoint: str, work: Workload):
        if protocol == "grpc":
            import tritonclient.grpc as module

            self.client = module.InferenceServerClient(url)
            self.kwargs = {"client_timeout": REQUEST_TIMEOUT_S}
        else:
            import tritonclient.http as module

            self.client = module.InferenceServerClient(url, connection_timeout=REQUEST_TIMEOUT_S,
                                                       network_timeout=REQUEST_TIMEOUT_S)
            self.kwargs = {}
        self.module, self.endpoint, self.work = module, endpoint, work
        self.spec = ensemble_spec(work.geometry)

    def _input(self, name: str, array: np.ndarray, dtype: str):
        t = self.module.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        return t

    def request(self, i: int) -> None:
        w = self.work
        if self.endpoint != COLORIZE:
            feeds = w.feeds[i % len(w.feeds)]
            out_spec = w.geometry.request_outputs[0]  # AB: the colour every caller wants
            inputs = [self._input(t.name, feeds[t.name], t.client_dtype) for t in self.spec.inputs]
            out = self.client.infer(self.endpoint, inputs, **self.kwargs).as_numpy(out_spec.name)
            if out is None or out.shape != (1, *out_spec.dims) or not np.isfinite(out).all():
                raise ValueError(f"bad {out_spec.name} answer: {None if out is None else out.shape}")
        else:
            def one(data: bytes) -> np.ndarray:
                return np.array([[data]], dtype=np.object_)  # [1, 1]

            values: Mapping[str, bytes] = w.values[i % len(w.values)]
            inputs = [self._input(names.IMAGE, one(w.images[i % len(w.images)]), "BYTES")]
            inputs += [self._input(name, one(data), "BYTES") for name, data in values.items()]
            out = self.client.infer(COLORIZE, inputs, **self.kwargs)
            png = out.as_numpy(names.COLORIZED)
            if png is None or not bytes(png.reshape(-1)[0]).startswith(b"\x89PNG"):
                raise ValueError(f"{names.COLORIZED} is not a PNG")

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing must not hide the run's figures
            pass


def run_load(
    url: str,
    protocol: str,
    endpoint: str,
    work: Workload,
    requests: int,
    concurrency: int,
    server_pid: int | None = None,
    warmup: int | None = None,
    max_seconds: float = 600.0,
) -> LoadResult:
    """``concurrency`` client threads share ``requests`` requests; every answer is checked.

    Each thread makes its own connection and warms it up (``warmup`` requests in all); the start
    memory is read once every thread is warm, then all are released together.
    """
    assert protocol in PROTOCOLS and requests >= 1 and concurrency >= 1
    assert endpoint in (COLORIZE, work.family), f"a workload for {work.family} cannot feed {endpoint}"
    warm_each = max(1, (warmup if warmup is not None else 2 * concurrency) // concurrency)
    latencies: list[float] = []
    errors: list[str] = []
    samples: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    sample_every = max(1, requests // 10)
    warm = threading.Barrier(concurrency + 1, timeout=REQUEST_TIMEOUT_S * (warm_each + 1))
    go = threading.Event()
    deadline = [math.inf]

    def worker(index: int) -> None:
        # geventhttpclient binds a connection to the thread that made it: make it here.
        client = None
        try:
            client = _Client(url, protocol, endpoint, work)
            for k in range(warm_each):
                client.request(index + k)
        except Exception as e:
            with lock:
                errors.append(f"warm-up: {type(e).__name__}: {e}"[:300])
        try:
            warm.wait()
        except threading.BrokenBarrierError:
            pass
        go.wait()
        try:
            while client is not None and time.monotonic() < deadline[0]:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    client.request(i)
                except Exception as e:  # every failure counts, whatever its type
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}"[:300])
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    if (len(latencies) + len(errors)) % sample_every == 0:
                        samples.append(server_rss_mb(server_pid))
        finally:
            if client is not None:
                client.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    try:
        warm.wait()
    except threading.BrokenBarrierError:
        log.warning("a client did not finish its warm-up in time")
    rss_start = server_rss_mb(server_pid)
    samples.append(rss_start)
    started = time.perf_counter()
    deadline[0] = time.monotonic() + max_seconds
    go.set()
    for t in threads:
        t.join(max_seconds + REQUEST_TIMEOUT_S)
    seconds = time.perf_counter() - started
    rss_end = server_rss_mb(server_pid)
    samples.append(rss_end)
    ms = np.asarray(latencies) * 1e3
    answered = len(latencies) + len(errors)
    return LoadResult(
        protocol=protocol,
        endpoint=endpoint,
        requests=answered,
        concurrency=concurrency,
        errors=len(errors) + (requests - answered),  # not answered in time counts as an error
        error_samples=tuple(errors[:5]),
        p50_ms=float(np.percentile(ms, 50)) if ms.size else float("nan"),
        p99_ms=float(np.percentile(ms, 99)) if ms.size else float("nan"),
        throughput_rps=len(latencies) / seconds if seconds > 0 else 0.0,
        seconds=seconds,
        rss_start_mb=rss_start,
        rss_end_mb=rss_end,
        rss_max_mb=float(np.nanmax(samples)) if samples else float("nan"),
        rss_samples_mb=tuple(round(s, 1) for s in samples),
    )


def summary_line(r: LoadResult) -> str:
    return (f"{r.protocol:4s} {r.endpoint:9s} {r.requests} requests x{r.concurrency}: errors {r.errors}, "
            f"p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, {r.throughput_rps:.1f} req/s, "
            f"server RSS {r.rss_start_mb:.0f} -> {r.rss_end_mb:.0f} MiB (max {r.rss_max_mb:.0f})")


# ------------------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m langcolor.benchmarks.soak", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--requests", type=int, default=1000, help="requests per protocol and endpoint")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    p.add_argument("--protocol", choices=(*PROTOCOLS, "both"), default="both")
    p.add_argument("--endpoint", choices=(*endpoints(), "both"), default="both",
                   help=f"a family's ensemble or {COLORIZE}; both: {' and '.join(both())}")
    p.add_argument("--max-seconds", type=float, default=600.0, help="stop each run after this long")
    p.add_argument("--server", metavar="HOST", help="use a running server on HOST (with --grpc-port/--http-port)")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--server-pid", type=int, help="pid of that server, for its memory figures")
    p.add_argument("--model-repository", type=Path, default=None, help="default: the shipped one")
    p.add_argument("--output", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1:
        p.error("--requests and --concurrency must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from langcolor.client.paths import default_model_repository
    from langcolor.server.launcher import LOOPBACK, TritonServer, free_ports

    repo = args.model_repository or default_model_repository()
    chosen = both() if args.endpoint == "both" else (args.endpoint,)
    # each ensemble gets its own family's tensors; colorize the inputs of the family it colours by default
    works = {e: default_workload(repo, None if e == COLORIZE else e) for e in chosen}
    server = None
    if args.server:
        host, grpc_port, http_port, pid = args.server, args.grpc_port, args.http_port, args.server_pid
    else:
        http_port, grpc_port, metrics_port = free_ports(3)
        server = TritonServer(repo, host=LOOPBACK, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
        server.start()
        host, pid = LOOPBACK, server.process.pid
    results = []
    try:
        for protocol in PROTOCOLS if args.protocol == "both" else (args.protocol,):
            url = f"{host}:{grpc_port if protocol == 'grpc' else http_port}"
            for endpoint in chosen:
                r = run_load(url, protocol, endpoint, works[endpoint], args.requests, args.concurrency, pid,
                             max_seconds=args.max_seconds)
                print(summary_line(r), file=sys.stderr)
                results.append(r)
    finally:
        if server is not None:
            server.stop()
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": __import__("os").cpu_count()},
        "git_revision": git_revision(short=True),
        "model_repository": str(repo),
        "runs": [asdict(r) | {"rss_growth_mb": r.rss_growth_mb} for r in results],
        "errors": sum(r.errors for r in results),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
