"""Colorize a folder or manifest of photographs: resumable, nothing lost, inference kept busy.

Three stages overlap, joined by one bound on images in flight so memory stays flat:

    thread pool:  read bytes -> sha256 -> (already done? stop) -> condition, decode, Lab, resize (prepare)
    inference:    batches of ``batch_size`` images + their conditions -> ab           (Colorizer.infer)
                  in-process one batch at a time; with a server ``in_flight`` requests at once, so
                  Triton's dynamic batcher has work to merge
    thread pool:  upsample ab, put the original L back, encode, write atomically, record   (finish)

In-process, a run of ``COMPILED_MIN_IMAGES`` or more loads the compiled reconstruct (``lab_fast``,
the ``fast`` extra; it releases the GIL, so the threads use every core); ``processes`` moves the
pixel work to worker processes instead (``batch_procs``, opt-in).

With ``--server`` the thin client skips the middle: each image's bytes and inputs go to the
``colorize`` endpoint, and the encoded image that comes back is written as it is.

A bad file fails alone and the run goes on. A server that goes away mid-run (a restart) is waited
for, up to ``server_wait_s``, with exponential backoff: the outage is logged when it starts and ends,
and the run carries on where it was, each image written once. A server that stays away longer stops
the run with an error saying so (the images not reached are simply not done; rerunning finishes
them). Paths are planned and checked in ``batch_sources``, records and atomic writes live in
``batch_state``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from . import families
from .batch_sources import STATE_DIR, BatchItem, plan_batch
from .batch_state import Failure, FailureReport, JobKey, RecordLog, condition_key, remove_stale_temporaries
from .connection import ApiKey, TlsFiles
from .errors import LangcolorError, ServerError, clip
from .families import IMAGE, Note
from .imageio import DEFAULT_MAX_PIXELS, encode_image, read_bytes
from .outputs import write_atomic
from .colorizer import stack_feeds
from . import lab_fast
from .batch_procs import PixelWork

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8
SERVER_IN_FLIGHT = 4  # concurrent requests to a server: enough for Triton's dynamic batcher to merge
DEFAULT_SERVER_WAIT_S = 300.0  # how long a run waits for a server that went away (a restart takes seconds)
SERVER_WAIT_ENV = "LANGCOLOR_SERVER_WAIT_S"  # the command line's default for it
MAX_REASON_CHARS = 300  # per failure in the log and the report
COMPILED_MIN_IMAGES = 32  # from this many images, loading the compiled reconstruct (~1.5 s) pays for itself


@dataclass(frozen=True)
class BatchOptions:
    source: Path  # a folder, or a CSV/JSONL manifest
    output: Path
    manifest: Path | None = None  # manifest of inputs for a folder source
    inputs: dict[str, str] = field(default_factory=dict)  # the model's inputs for the whole run (--caption, --reference)
    server: str | None = None  # URL of a Triton server; None: in-process ONNX Runtime
    protocol: str | None = None
    via: str = "endpoint"  # with a server: the colorize endpoint, or the family's ensemble
    workers: int | None = None  # decode/encode threads; None: the CPU count (at most 8)
    # In-process runs: worker processes for the pixel work; 0: the threads do it (measured faster, batch_procs).
    # Workers are spawned, so a script calling run_batch with processes needs the `if __name__ == "__main__":` guard.
    processes: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    in_flight: int | None = None  # inference batches at once; None: 1 in-process, SERVER_IN_FLIGHT with a server
    format: str = "png"  # png | jpeg | same
    max_pixels: int = DEFAULT_MAX_PIXELS  # used when run_batch builds the Colorizer itself
    model: str = families.DEFAULT_FAMILY
    model_repository: Path | None = None
    progress: bool = True
    api_key: ApiKey | None = None  # sent with every server call; a str is wrapped, so no repr shows it
    tls: TlsFiles | None = None  # for a grpcs:// or https:// server
    server_wait_s: float = DEFAULT_SERVER_WAIT_S  # after the first contact; 0: stop after the client's retries

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise LangcolorError(f"batch size must be at least 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 1:
            raise LangcolorError(f"workers must be at least 1, got {self.workers}")
        if self.processes < 0:
            raise LangcolorError(f"processes must be 0 or more, got {self.processes}")
        if self.in_flight is not None and self.in_flight < 1:
            raise LangcolorError(f"in_flight must be at least 1, got {self.in_flight}")
        object.__setattr__(self, "api_key", ApiKey.of(self.api_key))
        if self.server_wait_s < 0:
            raise LangcolorError(f"the server wait must be 0 or more seconds, got {self.server_wait_s:g}")


@dataclass(frozen=True)
class BatchSummary:
    total: int  # images planned (including skipped and failed)
    done: int  # colorized and written by this run
    already_done: int  # finished by an earlier run, same input, inputs and model
    skipped: int  # a required input missing (no caption)
    failed: int
    seconds: float  # from the loaded model to the last image written
    report: Path  # the JSONL failure report
    failures: tuple[Failure, ...]
    skipped_inputs: tuple[str, ...]
    aborted: str | None = None  # why the run stopped before the end, None if it did not
    notes: dict[str, int] = field(default_factory=dict)  # note kind -> images of this run that got it

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.aborted is None


@dataclass(frozen=True)
class _Ready:
    """An image read and keyed; prepared and conditioned for the network, or its bytes for the endpoint."""

    item: BatchItem
    input_sha256: str
    key: JobKey
    prepared: Any = None  # in-process / ensemble: the family's codec's prepared image
    feeds: dict[str, np.ndarray] | None = None  # per sample: the image and the conditions
    notes: tuple[Note, ...] = ()
    data: bytes | None = None  # endpoint: the file's bytes


def model_identity(colorizer: Any) -> str:
    """The weights hash that goes into every record: a different model redoes every image.

    With a server, the hash the server declares for the model it serves wins over the local manifest."""
    try:
        return colorizer.weights_sha256
    except AttributeError as e:
        raise LangcolorError("the colorizer does not expose its weights hash; cannot record outputs") from e


def _stops_the_run(e: BaseException | None) -> bool:
    """A server that stays away stops the run; a request it rejected fails only that batch."""
    if not isinstance(e, ServerError):
        return False
    from .remote import RequestRejectedError  # only a server raises ServerError

    return not isinstance(e, RequestRejectedError)


def _reason(e: BaseException) -> str:
    if isinstance(e, LangcolorError):
        # prepare() is given the file's bytes (hashed and decoded from one read); the report names the file.
        text = str(e).removeprefix("image bytes: ")
    else:
        log.debug("unexpected error", exc_info=e)
        text = f"{type(e).__name__}: {e}"
    # A message may quote its input (a 100 000-character caption); one report line stays readable.
    return clip(text, MAX_REASON_CHARS)


class _Pipeline:
    def __init__(self, colorizer: Any, records: RecordLog, report: FailureReport, options: BatchOptions, weights: str):
        self.colorizer, self.records, self.report, self.options = colorizer, records, report, options
        self.weights = weights
        self.family = families.get(options.model)
        self.codec = self.family.image_codec
        self.kinds = {f.name: f.kind for f in self.family.inputs}
        self.remote = colorizer.via == "endpoint"
        self.out_dir = Path(options.output).absolute()
        self.done = self.already = self.failed = 0
        self.aborted: str | None = None
        self.notes: dict[str, int] = {}
        self._conditions: dict[str, Any] = {}  # condition key -> Conditioned (in-process / ensemble)
        self._hashes: dict[str, str] = {}  # image input path -> sha256
        self.pixels: PixelWork | None = None  # in-process: where prepare and finish run (set by run)

    # --- work done in the threads -------------------------------------------------------------
    def _key_values(self, inputs: dict[str, str]) -> dict[str, str]:
        """The inputs as records key them: text as it is, an image input by its content hash."""
        out = {}
        for name, value in inputs.items():
            if self.kinds.get(name) == IMAGE:
                digest = self._hashes.get(value)
                if digest is None:
                    try:
                        data = read_bytes(value)
                    except LangcolorError as e:
                        raise type(e)(f"{name}: {e}") from e  # which input of the line: the photo's is its own
                    digest = self._hashes[value] = hashlib.sha256(data).hexdigest()
                out[name] = "sha256:" + digest
            else:
                out[name] = value
        return out

    def _condition(self, key: str, inputs: dict[str, str]):
        conditioned = self._conditions.get(key)
        if conditioned is None:
            conditioned = self._conditions[key] = self.colorizer.condition(inputs)
        return conditioned

    def _prepare(self, item: BatchItem) -> _Ready | None:
        try:
            data = item.path.read_bytes()
        except OSError as e:
            raise LangcolorError(f"cannot read ({e.strerror or e})") from e
        sha = hashlib.sha256(data).hexdigest()
        inputs = item.inputs or {}
        key = JobKey(self.options.model, self.weights, condition_key(self._key_values(inputs)), item.out_format)
        if self.records.is_done(item.out_rel, sha, key):
            return None
        if self.remote:
            return _Ready(item, sha, key, data=data)
        conditioned = self._condition(key.condition, inputs)  # CaptionError fails this image alone
        prepared = self.pixels.prepare(data, inputs) if self.pixels else self.colorizer.prepare(data, inputs)
        feeds = {**self.codec.feeds(prepared, self.colorizer.geometry), **conditioned.tensors}
        return _Ready(item, sha, key, prepared, feeds, conditioned.notes)

    def _infer(self, batch: list[_Ready]) -> list:
        if self.remote:  # each image to the endpoint, all in flight together
            fmt = {"PNG": "png", "JPEG": "jpeg"}
            futures = [self.colorizer.submit_encoded(r.data, r.item.inputs or {}, fmt.get(r.item.out_format, "png"))
                       for r in batch]
            return [f.exception() or f.result() for f in futures]  # an image the server refused fails alone
        outputs = self.colorizer.infer(stack_feeds(self.colorizer.geometry, [r.feeds for r in batch]))
        return [{name: value[k] for name, value in outputs.items()} for k in range(len(batch))]

    def _finish(self, ready: _Ready, result) -> tuple[Note, ...]:
        if self.remote:
            data, notes = result.data, result.notes
            if ready.item.out_format not in ("PNG", "JPEG"):  # TIFF: the endpoint answers PNG; re-encode here
                from PIL import Image

                with Image.open(io.BytesIO(data)) as im:
                    rgb, exif, icc = np.asarray(im.convert("RGB")), im.info.get("exif"), im.info.get("icc_profile")
                data = encode_image(rgb, ready.item.out_format, exif=exif, icc=icc)
        elif self.pixels:
            data, more = self.pixels.finish_encoded(ready.prepared, result, ready.item.out_format)
            notes = ready.notes + more
        else:
            rgb, more = self.codec.finish(ready.prepared, result)  # [H, W, 3] uint8 (a Lab family: the original L)
            data, notes = self.codec.encode(ready.prepared, rgb, ready.item.out_format), ready.notes + more
        write_atomic(self.out_dir / ready.item.out_rel, data, make_parents=True)
        self.records.add(ready.item.out_rel, ready.item.rel, ready.input_sha256, ready.key, len(data),
                         tuple(n.to_dict() for n in notes))
        return notes

    # --- the scheduler, on the calling thread -------------------------------------------------
    def _fail(self, item: BatchItem, e: BaseException, bar: tqdm) -> None:
        reason = _reason(e)
        log.warning("%s: %s", item.rel, reason)
        self.report.add(item.rel, reason)
        self.failed += 1
        bar.update(1)

    def run(self, work: list[BatchItem]) -> None:
        opts = self.options
        workers = opts.workers or min(8, os.cpu_count() or 2)
        in_flight = opts.in_flight or (SERVER_IN_FLIGHT if opts.server else 1)
        # At most this many images between "read" and "written": the memory bound.
        cap = 2 * workers + opts.batch_size * (in_flight + 1)
        if not self.remote and len(work) >= COMPILED_MIN_IMAGES and lab_fast.load():  # False without numba
            log.info("reconstruct: compiled kernel")
        if not self.remote and opts.processes > 0:
            self.pixels = PixelWork(self.codec, self.colorizer.geometry, self.colorizer.max_pixels, opts.processes)
            log.info("pixel work in %d worker processes", opts.processes)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="langcolor-io")
        infer_pool = ThreadPoolExecutor(in_flight, thread_name_prefix="langcolor-infer")
        bar = tqdm(total=len(work), unit="img", disable=not opts.progress, dynamic_ncols=True, smoothing=0.05)
        pending: dict[Future, tuple[str, Any]] = {}
        ready: list[_Ready] = []
        todo = iter(work)
        exhausted, outstanding, preparing = False, 0, 0
        try:
            while True:
                while not exhausted and self.aborted is None and outstanding < cap:
                    item = next(todo, None)
                    if item is None:
                        exhausted = True
                        break
                    pending[pool.submit(self._prepare, item)] = ("prepare", item)
                    outstanding += 1
                    preparing += 1
                if self.aborted is not None and ready:
                    outstanding -= len(ready)  # not started; the rerun does them
                    ready.clear()
                while len(ready) >= opts.batch_size or (ready and exhausted and preparing == 0):
                    batch, ready = ready[: opts.batch_size], ready[opts.batch_size :]
                    pending[infer_pool.submit(self._infer, batch)] = ("infer", batch)
                if not pending:
                    break
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for future in finished:
                    kind, payload = pending.pop(future)
                    if future.cancelled():  # only after an abort: not started, the rerun does it
                        preparing -= kind == "prepare"
                        outstanding -= len(payload) if kind == "infer" else 1
                        continue
                    error = future.exception()
                    if kind == "prepare":
                        preparing -= 1
                        if error is not None:
                            outstanding -= 1
                            self._fail(payload, error, bar)
                        elif future.result() is None:
                            outstanding -= 1
                            self.already += 1
                            bar.update(1)
                        else:
                            ready.append(future.result())
                    elif kind == "infer":
                        if _stops_the_run(error):
                            self.aborted = self.aborted or str(error)
                            outstanding -= len(payload)
                            for other, (other_kind, _) in pending.items():
                                if other_kind != "finish":
                                    other.cancel()
                        elif error is not None:
                            outstanding -= len(payload)
                            for r in payload:
                                self._fail(r.item, LangcolorError(f"inference failed: {_reason(error)}"), bar)
                        else:
                            for r, result in zip(payload, future.result()):
                                if _stops_the_run(result):
                                    self.aborted = self.aborted or str(result)
                                    outstanding -= 1
                                elif isinstance(result, BaseException):
                                    outstanding -= 1
                                    self._fail(r.item, LangcolorError(f"inference failed: {_reason(result)}"), bar)
                                else:
                                    pending[pool.submit(self._finish, r, result)] = ("finish", r)
                    else:
                        outstanding -= 1
                        if error is not None:
                            self._fail(payload.item, error, bar)
                        else:
                            self.done += 1
                            for note in future.result():
                                self.notes[note.kind] = self.notes.get(note.kind, 0) + 1
                            bar.update(1)
                    bar.set_postfix(failed=self.failed, refresh=False)
        finally:
            # On Ctrl-C: drop what has not started, let running writes complete (each is atomic).
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            infer_pool.shutdown(wait=True, cancel_futures=True)
            if self.pixels is not None:
                self.pixels.close()
            bar.close()


def _load_colorizer(options: BatchOptions) -> Any:
    from .colorizer import Colorizer

    return Colorizer(
        model=options.model,
        server=options.server,
        protocol=options.protocol,
        model_repository=options.model_repository,
        max_pixels=options.max_pixels,
        via=options.via,
        api_key=options.api_key,
        tls=options.tls,
        server_wait_s=options.server_wait_s,
    )


def run_batch(options: BatchOptions, colorizer: Any = None) -> BatchSummary:
    """Colorize every image of ``options.source`` into ``options.output``; see the module docstring.

    ``colorizer`` lets a caller reuse a loaded ``Colorizer`` (its own ``max_pixels`` then applies).
    Raises ``LangcolorError`` when the job is refused (unsafe paths, collisions, a locked folder).
    """
    record = families.get(options.model)
    plan = plan_batch(options.source, options.output, options.manifest, options.inputs, options.format, record.inputs)
    # The model (or the server) first: a refused connection or model leaves no empty output folder.
    colorizer = colorizer if colorizer is not None else _load_colorizer(options)
    out_dir = Path(options.output).absolute()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LangcolorError(f"cannot create output folder {out_dir}: {e.strerror or e}") from e
    weights = model_identity(colorizer)
    started = time.perf_counter()
    work = [item for item in plan.items if item.inputs is not None]
    skipped = tuple(item.rel for item in plan.items if item.inputs is None)
    for item in plan.items:
        if item.inputs is None:
            log.warning("%s: skipped, no %s (give it in the manifest or for the whole run with --%s)",
                        item.rel, item.missing_input, item.missing_input)
    with RecordLog(out_dir) as records, FailureReport(out_dir) as report:
        remove_stale_temporaries(out_dir)
        for rel, reason in plan.missing:
            report.add(rel, reason)
        log.info("%d image(s) to consider, %d skipped, %d already recorded", len(work), len(skipped), len(records))
        pipeline = _Pipeline(colorizer, records, report, options, weights)
        pipeline.run(work)
        failures = tuple(report.failures)
    if pipeline.aborted:
        log.error("run stopped: %s", pipeline.aborted)
    return BatchSummary(
        total=len(plan.items) + len(plan.missing),
        done=pipeline.done,
        already_done=pipeline.already,
        skipped=len(skipped),
        failed=len(failures),
        seconds=time.perf_counter() - started,
        report=report.path,
        failures=failures,
        skipped_inputs=skipped,
        aborted=pipeline.aborted,
        notes=dict(pipeline.notes),
    )


# --------------------------------------------------------------------------- benchmark


def write_benchmark_photos(folder: Path, count: int = 300, seed: int = 0) -> list[Path]:
    """``count`` mixed-size JPEG/PNG photographs (crops of scikit-image's photos, 0.01-2 megapixels).

    Needs scikit-image (a test/bench extra, imported here only).
    """
    from PIL import Image
    from skimage import data as skdata

    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket(), skdata.hubble_deep_field()]
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    paths = []
    for i in range(count):
        src = photos[i % len(photos)]
        h, w = src.shape[:2]
        ch, cw = int(rng.integers(h // 3, h + 1)), int(rng.integers(w // 3, w + 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        scale = float(rng.choice([0.25, 0.5, 1.0, 1.5, 2.0]))
        im = Image.fromarray(src[y : y + ch, x : x + cw]).resize((max(8, int(cw * scale)), max(8, int(ch * scale))))
        path = folder / f"{i // 100:02d}" / (f"photo_{i:04d}.jpg" if i % 2 else f"photo_{i:04d}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
        paths.append(path)
    return paths


def benchmark_batch(
    source: Path, workdir: Path, colorizer: Any, inputs: dict[str, str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None, in_flight: int | None = None,
    server: str | None = None, processes: int = 0,
) -> dict:
    """End-to-end images/s of ``run_batch`` over ``source`` next to the model's own images/s
    (``Colorizer.infer`` alone at the same batch size), so the figure says how close the pipeline
    comes to what the model allows. Writes into a fresh folder under ``workdir``."""
    from PIL import Image

    inputs = dict(inputs if inputs is not None else {"caption": "a photo"})
    out = Path(workdir) / f"bench-{time.time_ns()}"
    options = BatchOptions(
        source=Path(source), output=out, inputs=inputs, batch_size=batch_size, workers=workers,
        in_flight=in_flight, server=server, progress=False, model=colorizer.family.name, processes=processes,
    )
    summary = run_batch(options, colorizer)
    pixels = 0
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".png", ".jpg") and STATE_DIR not in path.parts:
            with Image.open(path) as im:  # header only
                pixels += im.size[0] * im.size[1]
    # The model alone, on the first photo of the source prepared as the pipeline prepares it.
    first = next(p for p in sorted(Path(source).rglob("*")) if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    one = {**colorizer.family.image_codec.feeds(colorizer.prepare(first.read_bytes(), inputs), colorizer.geometry),
           **colorizer.condition(inputs).tensors}
    feeds = stack_feeds(colorizer.geometry, [one] * batch_size)
    for _ in range(2):  # warm-up
        colorizer.infer(feeds)
    calls = max(3, summary.done // batch_size)
    t0 = time.perf_counter()
    for _ in range(calls):
        colorizer.infer(feeds)
    model_ips = calls * batch_size / (time.perf_counter() - t0)
    return {
        "images": summary.done,
        "failed": summary.failed,
        "seconds": summary.seconds,
        "pipeline_images_per_s": summary.images_per_s,
        "model_images_per_s": model_ips,
        "pipeline_over_model": summary.images_per_s / model_ips if model_ips else None,
        "mean_megapixels": pixels / max(1, summary.done) / 1e6,
        "batch_size": batch_size,
        "workers": workers or min(8, os.cpu_count() or 2),
        "in_flight": in_flight or (SERVER_IN_FLIGHT if server else 1),
        "processes": processes,
        "server": server,
    }
