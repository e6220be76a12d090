"""The per-image pixel work of ``langcolor batch`` in worker processes (``--processes N``), opt-in.

Decoding, Lab, reconstruction and encoding are numpy, PIL and numba calls; between the calls each
thread needs the GIL. A worker process has its own interpreter: the batch's threads keep reading,
hashing, scheduling and writing, and hand each image's ``prepare`` and ``finish`` + ``encode`` to a
pool of processes. Not the default: with the compiled reconstruct (which releases the GIL) and PIL's
encoders, two threads measured faster than two processes at 0.3 and 12 MP on a shared 2-core
machine (benchmarks/PREPOST.md, "Archive throughput"); the option stays for machines where that
turns around, and is tested to write the same bytes.

Each worker loads the compiled reconstruct kernel (``lab_fast``, where numba is installed) once.

What crosses the boundary is small next to the work: the file's bytes in, the prepared planes out
(L at full resolution, 4 bytes a pixel), the network's outputs in, the encoded file out. Workers are
started with ``spawn`` (no fork of a process that runs ONNX Runtime threads) and cost ~0.4 s each
to start, plus the kernel's load.
"""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

from . import lab_fast
from .errors import LangcolorError

def _prepare_job(codec: Any, data: bytes, values: dict, geometry: Any, max_pixels: int) -> Any:
    return codec.prepare(data, values, geometry, max_pixels)


def _finish_job(codec: Any, prepared: Any, outputs: dict, out_format: str) -> tuple[bytes, tuple]:
    rgb, notes = codec.finish(prepared, outputs)  # [H, W, 3] uint8
    return codec.encode(prepared, rgb, out_format), notes


class PixelWork:
    """``prepare`` and ``finish`` + ``encode`` of one family's codec, in ``processes`` worker processes
    (on the calling thread when ``processes`` is 0); ``LangcolorError`` for a codec that cannot be sent."""

    def __init__(self, codec: Any, geometry: Any, max_pixels: int, processes: int) -> None:
        self.codec, self.geometry, self.max_pixels = codec, geometry, max_pixels
        self.pool: ProcessPoolExecutor | None = None
        if processes > 0:
            try:
                pickle.dumps(codec)
            except Exception as e:  # a codec holding a live resource: keep it in this process
                raise LangcolorError(f"the model's image codec cannot run in worker processes ({e}); "
                                     "use processes=0") from e
            self.pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=lab_fast.load)  # each worker does hundreds of images

    def _run(self, fn: Callable, *args: Any) -> Any:
        if self.pool is None:
            return fn(*args)
        return self.pool.submit(fn, *args).result()  # this thread waits without the GIL

    def prepare(self, data: bytes, values: dict) -> Any:
        return self._run(_prepare_job, self.codec, data, values, self.geometry, self.max_pixels)

    def finish_encoded(self, prepared: Any, outputs: dict, out_format: str) -> tuple[bytes, tuple]:
        return self._run(_finish_job, self.codec, prepared, outputs, out_format)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
