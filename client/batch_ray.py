"""``langcolor batch --ray ADDRESS``: the same job as ``langcolor batch``, on a Ray cluster.

Who does what:

    driver (this process):  plan and check every path; read each input, hash it, skip finished work;
                            send batches to the actors; write each returned image atomically and
                            append its record; failures to failures.jsonl
    actors (one per ``cpus_per_actor`` CPUs of the cluster, spread over the nodes):
                            condition, decode, prepare, infer, finish, encode: every CPU-heavy step,
                            with one in-process model each, or the Triton on their own node (--server)

The actor itself is in ``batch_ray_actor``. Ray's actors and tasks, not Ray Data's ``map_batches``: the guarantees hang on the driver seeing
every result once, in its own hands. It writes each output and its record as the result returns
(the only writer, so nothing is written twice and records need no coordination), and it decides
what a lost worker means. A SIGKILLed actor process is restarted by Ray (``max_restarts``) and its
batch resubmitted by the driver; a lost node takes ~13 s to be declared dead, during which calls to
its actor fail (``ActorUnavailableError``), so the driver resubmits those batches to the live actors
and pings the lost actor until it is back. An image whose batch keeps killing its worker (a
decompression bomb that runs a worker out of memory) is isolated and fails alone after
``MAX_LOSSES`` deaths. Ray Data would retry inside its executor and fail the whole dataset on a node
loss, with no hook to record as results land; its streaming blocks also cost more per image than a
list of bytes (measured in docs/scale-out.md).

The workers need no shared filesystem: the driver ships each input's bytes (and reference images)
and receives encoded images. Sources and outputs may be ``s3://`` prefixes (``batch_locations``).
Every node needs langcolor installed; ``--model-repository`` and ``--server`` are read on each node
(``grpc://127.0.0.1:8001`` is the Triton on the actor's own node).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from . import families
from .batch import BatchOptions, BatchSummary, _reason
from .batch_locations import Item, destination, item_bytes, plan, read_location
from .batch_ray_actor import Colorist, Job, Result, WorkerSettings
from .batch_state import JobKey, condition_key
from .errors import LangcolorError
from .families import IMAGE
from .storage import S3Store, is_s3

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'langcolor[scale]'"
ADDRESSES = ("auto", "local")  # or HOST:PORT of a running cluster's head
BATCHES_PER_ACTOR = 2  # in flight per actor: one running, one waiting, so it never idles on the driver
MAX_RESTARTS = 4  # Ray restarts a killed actor this many times; then the driver starts a new one
MAX_LOSSES = 3  # a single image whose worker died this many times under it fails alone
ACTOR_START_TIMEOUT_S = 300.0  # actors placed and their model loaded (minutes on a busy node)
WORKER_WAIT_S = 120.0  # with no live actor for this long (a lost node, nothing to restart on), the run stops
LOCAL_OBJECT_STORE_BYTES = 512 * 2**20  # --ray local: batches in flight need little; Ray's default is 30% of memory
LOCAL_NODE_IP = "127.0.0.1"
# Ray 2.60 replaces 127.0.0.1 by the default route's interface address unless told that this is a
# single-machine cluster; read when ray is imported, so set before that.
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass(frozen=True)
class RayOptions:
    address: str  # "auto" (the cluster `ray start` made here), "local" (start one in this process), HOST:PORT
    actors: int | None = None  # None: the cluster's CPUs // cpus_per_actor
    cpus_per_actor: float = 1.0
    node_ip: str | None = None  # this driver's node address, when Ray cannot tell (several loopback nodes)
    api_key_file: str | None = None  # read on each node; the key itself never goes through Ray
    worker_wait_s: float = WORKER_WAIT_S

    def __post_init__(self) -> None:
        if self.address not in ADDRESSES and ":" not in self.address:
            raise LangcolorError(f"--ray takes auto, local or HOST:PORT of the head node, got {self.address!r}")
        if self.actors is not None and self.actors < 1:
            raise LangcolorError(f"--ray-actors must be at least 1, got {self.actors}")
        if self.cpus_per_actor <= 0:
            raise LangcolorError(f"--ray-cpus-per-actor must be more than 0, got {self.cpus_per_actor:g}")


# --------------------------------------------------------------------------- the driver


def connect(options: RayOptions):
    """``ray`` initialised for ``options.address``; the caller calls ``ray.shutdown()``."""
    if options.address == "local":
        os.environ.setdefault(_LOCAL_ONLY_ENV, "0")  # every socket on 127.0.0.1 (a one-machine cluster)
    try:
        import ray
    except ImportError as e:
        raise LangcolorError(f"--ray needs Ray: {INSTALL_HINT}") from e
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if options.address == "local":
        ray.init(address="local", _node_ip_address=options.node_ip or LOCAL_NODE_IP, include_dashboard=False,
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=False)
    else:
        kwargs = {"_node_ip_address": options.node_ip} if options.node_ip else {}
        try:
            ray.init(address=options.address, log_to_driver=False, **kwargs)
        except ConnectionError as e:
            raise LangcolorError(f"no Ray cluster at {options.address}: {e}") from e
    return ray


@dataclass
class _Batch:
    items: list[tuple[Item, str, JobKey, Job]]  # (item, input sha256, key, job)
    losses: int = 0  # workers that died with this batch in hand


@dataclass
class _Actor:
    handle: Any
    busy: int = 0
    up: bool = True
    ping: Any = None  # an outstanding ping while it is down
    down_since: float = 0.0


class _Pool:
    """The actors, which of them are up, and their replacement when Ray gives up restarting one."""

    def __init__(self, ray, settings: WorkerSettings, options: RayOptions):
        self.ray, self.settings, self.options = ray, settings, options
        cpus = ray.cluster_resources().get("CPU", 0)
        count = options.actors or max(1, int(cpus // options.cpus_per_actor))
        self.remote_class = ray.remote(Colorist).options(
            num_cpus=options.cpus_per_actor, max_restarts=MAX_RESTARTS, max_task_retries=0, scheduling_strategy="SPREAD")
        self.actors = [_Actor(self.remote_class.remote(settings)) for _ in range(count)]
        self.replacements_left = 2 * count
        try:
            identities = ray.get([a.handle.identity.remote() for a in self.actors], timeout=ACTOR_START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as e:
            raise LangcolorError(f"{count} Ray actor(s) of {options.cpus_per_actor:g} CPU did not start within "
                                 f"{ACTOR_START_TIMEOUT_S:.0f} s on a cluster of {cpus:g} CPU(s); "
                                 "lower --ray-actors or --ray-cpus-per-actor") from e
        except ray.exceptions.RayError as e:  # the model or the server refused: the actor's own error
            cause = getattr(e, "cause", None) or e
            raise LangcolorError(f"a Ray actor could not load the model: {str(cause).strip().splitlines()[-1]}") from e
        weights = {w for w, _ in identities}
        if len(weights) != 1:
            raise LangcolorError(f"the nodes colour with different weights ({', '.join(sorted(weights))}); "
                                 "install the same model repository (or serve the same model) on every node")
        self.weights = weights.pop()
        self.nodes = sorted({ip for _, ip in identities})
        log.info("%d Ray actor(s) on %d node(s) (%s), weights %s", count, len(self.nodes), ", ".join(self.nodes),
                 self.weights[:12])

    def free(self) -> _Actor | None:
        up = [a for a in self.actors if a.up and a.busy < BATCHES_PER_ACTOR]
        return min(up, key=lambda a: a.busy) if up else None

    def any_up(self) -> bool:
        return any(a.up for a in self.actors)

    def lost(self, actor: _Actor) -> None:
        actor.busy = max(0, actor.busy - 1)
        if actor.up:
            actor.up, actor.down_since = False, time.monotonic()
            actor.ping = actor.handle.ping.remote()  # answers when Ray has restarted it

    def ping_answered(self, actor: _Actor, ref) -> None:
        try:
            answer = self.ray.get(ref)  # a pid, or a replacement's identity
            if isinstance(answer, tuple) and answer[0] != self.weights:
                actor.ping = None  # left down: it would record other weights under this run's key
                log.error("a replacement Ray actor on %s colours with other weights (%s); not used", answer[1],
                          answer[0][:12])
                return
            actor.up, actor.ping, actor.busy = True, None, 0
            log.info("a Ray actor is back after %.1f s", time.monotonic() - actor.down_since)
        except self.ray.exceptions.RayError as e:
            actor.ping = None
            if isinstance(e, self.ray.exceptions.ActorDiedError) and self.replacements_left > 0:
                self.replacements_left -= 1  # Ray gave up restarting it: a new one, wherever there is room
                actor.handle = self.remote_class.remote(self.settings)
                actor.ping = actor.handle.identity.remote()
                log.warning("a Ray actor died for good; starting a replacement")
            elif not isinstance(e, self.ray.exceptions.ActorDiedError):
                actor.ping = actor.handle.ping.remote()  # still unavailable: ask again

    def pings(self) -> dict:
        return {a.ping: a for a in self.actors if a.ping is not None}


class _Driver:
    def __init__(self, ray, pool: _Pool, dest, store: S3Store | None, options: BatchOptions, weights: str,
                 worker_wait_s: float):
        self.ray, self.pool, self.dest, self.store, self.options = ray, pool, dest, store, options
        self.weights, self.worker_wait_s = weights, worker_wait_s
        self.family = families.get(options.model)
        self.kinds = {f.name: f.kind for f in self.family.inputs}
        self.done = self.already = self.failed = 0
        self.notes: dict[str, int] = {}
        self.aborted: str | None = None
        self._image_inputs: dict[str, tuple[bytes, str]] = {}  # location -> (bytes, sha256)
        self._finished: set[str] = set()  # outputs handed to a writer: never a second time

    # --- I/O threads
    def _image_input(self, location: str) -> tuple[bytes, str]:
        cached = self._image_inputs.get(location)
        if cached is None:
            data = read_location(self.store, location)
            cached = self._image_inputs[location] = (data, hashlib.sha256(data).hexdigest())
        return cached

    def _read(self, item: Item, index: int):
        """(item, sha, key, job), or None when a record says it is done with the same everything."""
        data = item_bytes(self.store, item)
        sha = hashlib.sha256(data).hexdigest()
        inputs = item.inputs or {}
        key_values, wire = {}, {}
        for name, value in inputs.items():
            if self.kinds.get(name) == IMAGE:
                blob, digest = self._image_input(value)
                key_values[name], wire[name] = "sha256:" + digest, blob
            else:
                key_values[name] = wire[name] = value
        key = JobKey(self.options.model, self.weights, condition_key(key_values), item.out_format)
        if self.dest.records.is_done(item.out_rel, sha, key):
            return None
        return item, sha, key, Job(index, data, wire, item.out_format)

    def _write(self, item: Item, sha: str, key: JobKey, result: Result) -> tuple[dict, ...]:
        self.dest.write(item.out_rel, result.data)
        self.dest.records.add(item.out_rel, item.rel, sha, key, len(result.data), result.notes)
        return result.notes

    # --- the loop, on the calling thread
    def _fail(self, rel: str, reason: str, bar) -> None:
        log.warning("%s: %s", rel, reason)
        self.dest.report.add(rel, reason)
        self.failed += 1
        bar.update(1)

    def run(self, work: list[Item]) -> None:
        opts, ray = self.options, self.ray
        batch_size = opts.batch_size
        cap = len(self.pool.actors) * BATCHES_PER_ACTOR * batch_size + 2 * batch_size  # images read, not yet written
        io_pool = ThreadPoolExecutor(opts.workers or 4, thread_name_prefix="langcolor-ray-io")
        bar = tqdm(total=len(work), unit="img", disable=not opts.progress, dynamic_ncols=True, smoothing=0.05)
        todo = iter(enumerate(work))
        exhausted = False
        reads: dict[Future, Item] = {}
        writes: dict[Future, Item] = {}
        ready: list = []
        queue: deque[_Batch] = deque()
        inflight: dict[Any, tuple[_Batch, _Actor]] = {}
        outstanding = 0
        no_actor_since: float | None = None
        try:
            while True:
                while not exhausted and self.aborted is None and outstanding < cap:
                    nxt = next(todo, None)
                    if nxt is None:
                        exhausted = True
                        break
                    index, item = nxt
                    reads[io_pool.submit(self._read, item, index)] = item
                    outstanding += 1
                for future in [f for f in reads if f.done()]:
                    item = reads.pop(future)
                    error = future.exception()
                    if error is not None:
                        outstanding -= 1
                        self._fail(item.rel, _reason(error), bar)
                    elif future.result() is None:
                        outstanding -= 1
                        self.already += 1
                        bar.update(1)
                    else:
                        ready.append(future.result())
                if self.aborted is not None:
                    outstanding -= len(ready) + sum(len(b.items) for b in queue)  # not started: the rerun does them
                    ready.clear()
                    queue.clear()
                while len(ready) >= batch_size or (ready and exhausted and not reads):
                    queue.append(_Batch(ready[:batch_size]))
                    ready = ready[batch_size:]
                while queue:
                    actor = self.pool.free()
                    if actor is None:
                        break
                    batch = queue.popleft()
                    ref = actor.handle.colorize.remote([job for *_, job in batch.items])
                    actor.busy += 1
                    inflight[ref] = (batch, actor)
                for future in [f for f in writes if f.done()]:
                    item = writes.pop(future)
                    outstanding -= 1
                    error = future.exception()
                    if error is not None:
                        self._fail(item.rel, _reason(error), bar)
                    else:
                        self.done += 1
                        for note in future.result():
                            self.notes[note["kind"]] = self.notes.get(note["kind"], 0) + 1
                        bar.update(1)
                if not (reads or writes or ready or queue or inflight) and (exhausted or self.aborted is not None):
                    break
                if queue and not self.pool.any_up():
                    no_actor_since = no_actor_since or time.monotonic()
                    if time.monotonic() - no_actor_since > self.worker_wait_s:
                        self.aborted = f"no Ray worker has been available for {self.worker_wait_s:.0f} s"
                        continue
                else:
                    no_actor_since = None
                pings = self.pool.pings()
                refs = list(inflight) + list(pings)
                if not refs:
                    time.sleep(0.02)
                    continue
                # Short waits while files are being read or written, so those are picked up promptly.
                finished, _ = ray.wait(refs, num_returns=1, timeout=0.02 if (reads or writes) else 1.0)
                for ref in finished:
                    if ref in pings:
                        self.pool.ping_answered(pings[ref], ref)
                        continue
                    batch, actor = inflight.pop(ref)
                    try:
                        results = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:  # our code raised in the actor: these images fail
                        actor.busy -= 1
                        for item, *_ in batch.items:
                            outstanding -= 1
                            self._fail(item.rel, f"worker error: {_reason(e)}", bar)
                        continue
                    except ray.exceptions.RayError as e:  # the worker or its node is gone: resubmit
                        self.pool.lost(actor)
                        outstanding -= self._requeue(batch, e, queue, bar)
                        continue
                    actor.busy -= 1
                    by_index = {job.index: (item, sha, key) for item, sha, key, job in batch.items}
                    for result in results:
                        item, sha, key = by_index[result.index]
                        if result.error is not None:
                            outstanding -= 1
                            if result.stops:  # not the image's fault: not a failure, the rerun does it
                                self.aborted = self.aborted or result.error
                            else:
                                self._fail(item.rel, result.error, bar)
                        elif item.out_rel in self._finished:
                            log.error("%s: a second result for this output was dropped", item.rel)
                            outstanding -= 1
                        else:
                            self._finished.add(item.out_rel)
                            writes[io_pool.submit(self._write, item, sha, key, result)] = item
                bar.set_postfix(failed=self.failed, refresh=False)
        finally:
            for future in list(reads) + list(writes):
                future.cancel()
            io_pool.shutdown(wait=True, cancel_futures=True)  # writes under way complete (each is atomic)
            bar.close()

    def _requeue(self, batch: _Batch, error: Exception, queue: deque, bar) -> int:
        """Put a lost batch back at the front of the queue; returns the images given up on (0 or 1)."""
        kind = type(error).__name__
        log.warning("a Ray worker was lost (%s) with %d image(s) in hand; resubmitting them", kind, len(batch.items))
        if len(batch.items) > 1:  # one at a time from now, so an image that kills its worker fails alone
            for entry in reversed(batch.items):
                queue.appendleft(_Batch([entry]))
            return 0
        batch.losses += 1
        item = batch.items[0][0]
        if batch.losses >= MAX_LOSSES:
            self._fail(item.rel, f"its Ray worker died {batch.losses} times on it (last: {kind}); out of memory?", bar)
            return 1
        queue.appendleft(batch)
        return 0


def run_ray_batch(options: BatchOptions, ray_options: RayOptions) -> BatchSummary:
    """``run_batch``'s job on a Ray cluster, with its guarantees; see the module docstring.

    ``options.source``, ``options.output`` and ``options.manifest`` may be ``s3://`` locations (str).
    Raises ``LangcolorError`` when the job is refused (unsafe paths, collisions, a locked folder, no
    cluster, actors that cannot load the model or colour with different weights)."""
    record = families.get(options.model)
    uses_s3 = any(is_s3(x) for x in (options.source, options.output, options.manifest))
    store = S3Store() if uses_s3 else None
    planned = plan(options.source, options.output, options.manifest, options.inputs, options.format, record.inputs,
                   store)
    work = [item for item in planned.items if item.inputs is not None]
    skipped = tuple(item.rel for item in planned.items if item.inputs is None)
    for item in planned.items:
        if item.inputs is None:
            log.warning("%s: skipped, no %s (give it in the manifest or for the whole run with --%s)",
                        item.rel, item.missing_input, item.missing_input)
    settings = WorkerSettings(
        model=options.model, server=options.server, protocol=options.protocol, via=options.via,
        model_repository=str(options.model_repository) if options.model_repository else None,
        max_pixels=options.max_pixels, api_key_file=ray_options.api_key_file, tls=options.tls,
        server_wait_s=options.server_wait_s, threads=max(1, int(ray_options.cpus_per_actor)),
    )
    ray = connect(ray_options)
    try:
        # The actors (the model, the server) first: a refused model leaves no empty output folder.
        pool = _Pool(ray, settings, ray_options)
        dest = destination(options.output, store)
        dest.open()
        started = time.perf_counter()
        try:
            for rel, reason in planned.missing:
                dest.report.add(rel, reason)
            log.info("%d image(s) to consider, %d skipped, %d already recorded", len(work), len(skipped),
                     len(dest.records))
            driver = _Driver(ray, pool, dest, store, options, pool.weights, ray_options.worker_wait_s)
            driver.run(work)
            failures = tuple(dest.report.failures)
        finally:
            dest.close()
    finally:
        ray.shutdown()
    if driver.aborted:
        log.error("run stopped: %s", driver.aborted)
    return BatchSummary(
        total=len(planned.items) + len(planned.missing),
        done=driver.done,
        already_done=driver.already,
        skipped=len(skipped),
        failed=len(failures),
        seconds=time.perf_counter() - started,
        report=getattr(dest, "report_location", None) or dest.report.path,
        failures=failures,
        skipped_inputs=skipped,
        aborted=driver.aborted,
        notes=dict(driver.notes),
    )
