"""The Ray actor of ``langcolor batch --ray``: one Colorizer per actor, jobs in, encoded images out.

Everything CPU-heavy of a batch happens here, on whichever node Ray placed the actor: the family's
conditioner, decoding and preparing the photo, the network (in-process ONNX Runtime, or the Triton
on the actor's own node with ``--server``), finishing and encoding. The same Colorizer steps as
``langcolor batch``'s pipeline (``batch._Pipeline``), so the pixels are the same. An image that
fails comes back as a ``Result`` with the reason, for the driver's failures.jsonl; only the driver
writes anything.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from typing import Any

from .batch import _reason, _stops_the_run
from .connection import TlsFiles


@dataclass(frozen=True)
class WorkerSettings:
    """What each actor builds its Colorizer from: paths and names only, never a key."""

    model: str
    server: str | None
    protocol: str | None
    via: str
    model_repository: str | None
    max_pixels: int
    api_key_file: str | None
    tls: TlsFiles | None
    server_wait_s: float
    threads: int


@dataclass(frozen=True)
class Job:
    """One image on its way to an actor: its bytes, the inputs (an image input as its bytes)."""

    index: int
    data: bytes
    inputs: dict[str, Any]
    out_format: str


@dataclass(frozen=True)
class Result:
    index: int
    data: bytes | None  # the encoded output; None when the image failed
    notes: tuple[dict, ...] = ()
    error: str | None = None
    stops: bool = False  # the server stayed away: the run stops, a rerun finishes


class Colorist:
    """The actor: one Colorizer, in-process or on the node's Triton; turns jobs into encoded images."""

    def __init__(self, settings: WorkerSettings):
        from .colorizer import Colorizer
        from .connection import api_key_from

        key = None
        if settings.server is not None:
            key = api_key_from(settings.api_key_file)  # the file on this node, else this node's environment
        self.colorizer = Colorizer(
            model=settings.model, server=settings.server, protocol=settings.protocol,
            model_repository=settings.model_repository, max_pixels=settings.max_pixels, via=settings.via,
            intra_op_threads=settings.threads if settings.server is None else None,
            api_key=key, tls=settings.tls, server_wait_s=settings.server_wait_s,
        )
        self.codec = self.colorizer.family.image_codec
        self._conditions: dict[str, Any] = {}

    def identity(self) -> tuple[str, str]:
        """(weights hash, node address): every actor must colour with the same weights."""
        import ray

        return self.colorizer.weights_sha256, ray.util.get_node_ip_address()

    def ping(self) -> int:
        return os.getpid()

    def colorize(self, jobs: list[Job]) -> list[Result]:
        if self.colorizer.via == "endpoint":
            return self._colorize_remote(jobs)
        return self._colorize_tensors(jobs)

    @staticmethod
    def _failed(job: Job, e: BaseException, prefix: str = "") -> Result:
        return Result(job.index, None, error=prefix + _reason(e), stops=_stops_the_run(e))

    def _condition(self, inputs: dict[str, Any]):
        key = repr(sorted((k, hashlib.sha256(v).hexdigest() if isinstance(v, bytes) else v) for k, v in inputs.items()))
        conditioned = self._conditions.get(key)
        if conditioned is None:
            if len(self._conditions) > 4096:  # captions repeat in an archive; a bound all the same
                self._conditions.clear()
            conditioned = self._conditions[key] = self.colorizer.condition(inputs)
        return conditioned

    def _colorize_tensors(self, jobs: list[Job]) -> list[Result]:
        from .colorizer import stack_feeds

        c, geometry = self.colorizer, self.colorizer.geometry
        results: dict[int, Result] = {}
        ready = []
        for job in jobs:
            try:
                conditioned = self._condition(job.inputs)  # a refused caption fails this image alone
                prepared = c.prepare(job.data, job.inputs)
                ready.append((job, prepared, {**self.codec.feeds(prepared, geometry), **conditioned.tensors},
                              conditioned.notes))
            except Exception as e:
                results[job.index] = self._failed(job, e)
        if ready:
            try:
                outputs = c.infer(stack_feeds(geometry, [feeds for _, _, feeds, _ in ready]))
            except Exception as e:
                for job, *_ in ready:
                    results[job.index] = self._failed(job, e, "inference failed: ")
                ready = []
            for k, (job, prepared, _, notes) in enumerate(ready):
                try:
                    rgb, more = self.codec.finish(prepared, {name: value[k] for name, value in outputs.items()})
                    data = self.codec.encode(prepared, rgb, job.out_format)
                    results[job.index] = Result(job.index, data, tuple(n.to_dict() for n in notes + more))
                except Exception as e:
                    results[job.index] = self._failed(job, e)
        return [results[job.index] for job in jobs]

    def _colorize_remote(self, jobs: list[Job]) -> list[Result]:
        fmt = {"PNG": "png", "JPEG": "jpeg"}
        futures: list[Any] = []
        for job in jobs:  # all in flight together: the server's dynamic batcher merges them
            try:
                futures.append(self.colorizer.submit_encoded(job.data, job.inputs, fmt.get(job.out_format, "png")))
            except Exception as e:
                futures.append(e)
        results = []
        for job, future in zip(jobs, futures):
            try:
                if isinstance(future, Exception):
                    raise future
                answer = future.result()
                data = answer.data
                if job.out_format not in fmt:  # TIFF: the endpoint answers PNG; re-encode here, metadata kept
                    data = _reencode(data, job.out_format)
                results.append(Result(job.index, data, tuple(n.to_dict() for n in answer.notes)))
            except Exception as e:
                results.append(self._failed(job, e, "inference failed: "))
        return results


def _reencode(data: bytes, out_format: str) -> bytes:
    import numpy as np
    from PIL import Image

    from .imageio import encode_image

    with Image.open(io.BytesIO(data)) as im:
        rgb, exif, icc = np.asarray(im.convert("RGB")), im.info.get("exif"), im.info.get("icc_profile")
    return encode_image(rgb, out_format, exif=exif, icc=icc)
