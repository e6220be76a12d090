"""The ``colorize`` role: encoded image + the family's inputs in, an encoded image out (BLS).

Business logic scripting: decoding and ``prepare`` happen here, the family's conditioner turns the
request's inputs (``CAPTION``, ``REFERENCE``, ...) into its condition tensors, the S x S tensors go to
the ``<family>`` ensemble (the three stages, dynamically batched) in one request per chunk, and
``finish`` rebuilds the full-resolution image with the photograph's own L here again. Everything is
the project's client code, so the served pixels are the in-process ``langcolor colorize``'s.

``MODEL`` (optional, one family name per image) picks the family; a request without it goes to the
config's default. One request may mix families: each family's images go to its ensemble in their own
chunks. ``FORMAT`` (optional) asks for "png" (default) or "jpeg". ``NOTES`` answers, per image, how
the inputs were read (ignored words, a caption without effect), as JSON. A request whose image or
inputs are bad gets a ``TritonError`` naming the problem, for that request alone.

A Triton ensemble of Python steps would have to ship the full-resolution L (megapixels) between the
decoding and the reconstruction step; BLS keeps it in this process.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from langcolor.client import families, names
from langcolor.client.errors import LangcolorError, ModelNotFoundError, clip
from langcolor.client.families import Conditioner, Note
from langcolor.client.imageio import DEFAULT_MAX_PIXELS
from langcolor.client.colorizer import check_image_inputs, stack_feeds
from langcolor.client.photo import LAB
from langcolor.client.runtime import ModelBundle
from langcolor.client.spec import ModelGeometry

from .triton_backend import invalid

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: ``parse_request`` stays importable for tests and fuzzing
    pb_utils = None

MAX_NAME_CHARS = 40  # of an unknown MODEL value quoted back in its error
FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG"}


@dataclass(frozen=True)
class Served:
    """What the endpoint needs of one family it serves."""

    name: str  # the model named like the family (ensemble or driver), what MODEL says
    geometry: ModelGeometry
    conditioner: Conditioner
    fields: Mapping[str, families.InputField]  # tensor name -> the user input it carries
    codec: Any = LAB  # how its images are read and its answers written


def load_served(repository: Path, name: str) -> Served:
    """``<repository>/<name>/1``'s manifest and assets, checked as the in-process client checks them."""
    bundle = ModelBundle.load(repository, name, stages=False)  # ModelNotFoundError names the problem
    fields = {f.tensor_name: f for f in bundle.family.inputs}
    return Served(name, bundle.geometry, bundle.conditioner, fields, bundle.family.image_codec)


@dataclass(frozen=True)
class ParsedItem:
    """One image of one request, decoded and conditioned, ready for its family's model."""

    prepared: Any  # the family codec's prepared image
    feeds: Mapping[str, np.ndarray]  # per sample, no batch axis: the image and the request's inputs
    notes: tuple[Note, ...]
    family: str
    format: str  # "PNG" or "JPEG"


def _elements(array: np.ndarray | None, name: str) -> list[bytes]:
    """The BYTES elements of one input tensor, flattened; raise naming the tensor if it is not that."""
    array = np.asarray(array)
    if array.dtype != np.object_ and array.dtype.kind != "S":
        raise LangcolorError(f"{name} must be BYTES, got {array.dtype}")
    items = []
    for k, x in enumerate(array.reshape(-1)):
        if not isinstance(x, (bytes, bytearray, np.bytes_)):
            raise LangcolorError(f"{name}[{k}] must be bytes, got {type(x).__name__}")
        items.append(bytes(x))
    return items


def _names(values: list[bytes], tensor: str, valid: list[str], what: str) -> list[str]:
    """Each UTF-8 value of a name-valued tensor (MODEL, FORMAT), checked against ``valid``."""
    listed = f"valid {what}: {', '.join(valid) or 'none'}"
    chosen = []
    for k, raw in enumerate(values):
        where = f"item {k}: " if len(values) > 1 else ""
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ModelNotFoundError(f"{where}{tensor} is not valid UTF-8; {listed}") from e
        if not name:
            raise ModelNotFoundError(f"{where}{tensor} is empty; {listed} (or leave {tensor} out for the default)")
        if name not in valid:
            shown = name if len(name) <= MAX_NAME_CHARS else name[:MAX_NAME_CHARS] + "..."
            raise ModelNotFoundError(f"{where}{tensor} {shown!r} is not one this endpoint serves; {listed}")
        chosen.append(name)
    return chosen


def parse_request(
    tensors: Mapping[str, np.ndarray | None],
    served: Mapping[str, Served],
    default: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[ParsedItem]:
    """The BYTES inputs of one request (by tensor name; absent ones None) -> its images, prepared and
    conditioned; raises ``LangcolorError`` naming the problem. Pure (no Triton): every check a request
    goes through, fuzzed by tests/test_fuzz.py. Nothing in the request is used as a path: images are
    decoded from memory."""
    if tensors.get(names.IMAGE) is None:
        raise LangcolorError(f"the request needs {names.IMAGE}; it is missing")
    images = _elements(tensors[names.IMAGE], names.IMAGE)
    if not images:
        raise LangcolorError("the request holds no image")
    n = len(images)
    known = {names.IMAGE, names.MODEL, names.FORMAT} | {t for s in served.values() for t in s.fields}
    extra = sorted(k for k, v in tensors.items() if v is not None and k not in known)
    if extra:
        raise LangcolorError(f"the endpoint does not take {', '.join(extra)}")
    per_item: dict[str, list[bytes]] = {}
    for name, array in tensors.items():
        if array is None or name == names.IMAGE:
            continue
        values = _elements(array, name)
        if len(values) != n:
            raise LangcolorError(f"{name} has {len(values)} value(s) for {n} image(s): give one per image")
        per_item[name] = values
    # MODEL and FORMAT first: a wrong name costs nothing, before any image is decoded.
    chosen = _names(per_item[names.MODEL], names.MODEL, sorted(served), "families") if names.MODEL in per_item else [default] * n
    formats = _names(per_item[names.FORMAT], names.FORMAT, sorted(FORMATS), "formats") if names.FORMAT in per_item else ["png"] * n
    items = []
    for k in range(n):
        where = f"item {k}: " if n > 1 else ""
        fam = served[chosen[k]]
        given = sorted(t for t in per_item if t not in (names.MODEL, names.FORMAT))
        foreign = [t for t in given if t not in fam.fields]
        try:
            if foreign:
                takes = ", ".join(fam.fields) or "nothing"
                raise LangcolorError(f"model '{fam.name}' does not take {', '.join(foreign)} (it takes {takes})")
            missing = [t for t, f in fam.fields.items() if f.required and t not in given]
            if missing:
                raise LangcolorError(f"model '{fam.name}' needs {', '.join(missing)}: "
                                     + "; ".join(fam.fields[t].help for t in missing))
            values = {fam.fields[t].name: per_item[t][k] for t in given}  # text as UTF-8 bytes, images as files
            check_image_inputs(fam.fields.values(), values, max_pixels)  # a reference over the cap, before decoding
            conditioned = fam.conditioner.condition(values)  # CaptionError, ImageError, ... name the problem
            prepared = fam.codec.prepare(images[k], values, fam.geometry, max_pixels)  # ImageError names the problem
        except LangcolorError as e:
            raise type(e)(clip(f"{where}{e}")) from e
        feeds = {**fam.codec.feeds(prepared, fam.geometry), **conditioned.tensors}
        items.append(ParsedItem(prepared, feeds, conditioned.notes, fam.name, FORMATS[formats[k]]))
    return items


@dataclass(frozen=True)
class _Item:
    """One image of one request of the dynamic batch."""

    request_index: int
    item_index: int  # its place in the request: families are sent apart, answers go back in order
    parsed: ParsedItem


class ColorizeModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.default = params.get(names.PARAM_ENSEMBLE, families.DEFAULT_FAMILY)
        served = [f for f in params.get(names.PARAM_FAMILIES, self.default).split(",") if f]
        self.max_pixels = int(params.get(names.PARAM_MAX_PIXELS, DEFAULT_MAX_PIXELS))
        self.chunk = max(1, int(config.get("max_batch_size", 8)))  # an ensemble takes at most this many
        self.input_names = [t["name"] for t in config["input"]]
        if self.default not in served:
            raise pb_utils.TritonModelException(f"colorize: default family {self.default!r} is not in {served}")
        # Each ensemble's version folder carries the manifest and the assets the model was trained with.
        repository = Path(args["model_repository"]).parent
        try:
            self.served = {name: load_served(repository, name) for name in served}
        except LangcolorError as e:
            raise pb_utils.TritonModelException(f"colorize: {e}") from e
        shown = ", ".join(f"{s.name} (S={s.geometry.image_size})" for s in self.served.values())
        pb_utils.Logger.log_info(f"colorize: BLS over {shown}; default {self.default!r}")

    # ------------------------------------------------------------------ per request
    def _prepare(self, index: int, request) -> list[_Item]:
        tensors = {}
        for name in self.input_names:
            t = pb_utils.get_input_tensor_by_name(request, name)
            tensors[name] = None if t is None else t.as_numpy()  # [n, 1] of bytes; None: left out
        parsed = parse_request(tensors, self.served, self.default, self.max_pixels)
        return [_Item(index, k, p) for k, p in enumerate(parsed)]

    async def _infer(self, family: str, items: list[_Item]) -> dict[str, np.ndarray]:
        """The outputs of the model named ``family`` (its ensemble or driver) for ``items`` (n <= chunk)."""
        geom = self.served[family].geometry
        feeds = stack_feeds(geom, [it.parsed.feeds for it in items])
        wanted = [t.name for t in geom.request_outputs]
        kwargs = {}
        if hasattr(pb_utils, "PreferredMemory"):  # ask for the outputs in CPU memory even when the stages run on GPU
            kwargs["preferred_memory"] = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
        request = pb_utils.InferenceRequest(
            model_name=family, requested_output_names=wanted,
            inputs=[pb_utils.Tensor(name, array) for name, array in feeds.items()], **kwargs,
        )
        response = await request.async_exec()
        if response.has_error():
            raise LangcolorError(f"{family}: {response.error().message()}")
        return {n: pb_utils.get_output_tensor_by_name(response, n).as_numpy() for n in wanted}  # [n, ...] each

    async def execute(self, requests: list) -> list:
        errors: dict[int, str] = {}
        by_family: dict[str, list[_Item]] = {}
        counts = [0] * len(requests)
        for i, request in enumerate(requests):
            try:
                prepared = self._prepare(i, request)
            except LangcolorError as e:
                errors[i] = str(e)
                continue
            except Exception as e:  # a bug must not take the other requests of the batch down
                errors[i] = f"internal error: {type(e).__name__}: {e}"
                continue
            for item in prepared:
                by_family.setdefault(item.parsed.family, []).append(item)
            counts[i] = len(prepared)

        # All images of the batch go to their family's ensemble, in chunks it accepts, concurrently.
        chunks = [(f, items[k : k + self.chunk]) for f, items in by_family.items() for k in range(0, len(items), self.chunk)]
        results = await asyncio.gather(*(self._infer(f, c) for f, c in chunks), return_exceptions=True)
        outputs: dict[int, list] = {i: [None] * counts[i] for i in range(len(requests)) if i not in errors}
        for (_, chunk), out in zip(chunks, results):
            for k, item in enumerate(chunk):
                i = item.request_index
                if i in errors:
                    continue
                if isinstance(out, BaseException):
                    errors[i] = str(out)
                    continue
                try:
                    p = item.parsed
                    codec = self.served[p.family].codec
                    rgb, more = codec.finish(p.prepared, {n: v[k] for n, v in out.items()})  # [H, W, 3] uint8
                    notes = json.dumps([n.to_dict() for n in p.notes + more]).encode("utf-8")
                    outputs[i][item.item_index] = (codec.encode(p.prepared, rgb, p.format), notes)
                except LangcolorError as e:
                    errors[i] = str(e)
                except Exception as e:
                    errors[i] = f"internal error: {type(e).__name__}: {e}"

        responses = []
        for i in range(len(requests)):
            if i in errors:
                responses.append(pb_utils.InferenceResponse(error=invalid(f"colorize: {errors[i]}")))
                continue
            assert all(o is not None for o in outputs[i]), i
            images = np.array([o[0] for o in outputs[i]], dtype=np.object_).reshape(counts[i], 1)  # [n, 1] of bytes
            notes = np.array([o[1] for o in outputs[i]], dtype=np.object_).reshape(counts[i], 1)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(names.COLORIZED, images), pb_utils.Tensor(names.NOTES, notes)]))
        return responses

