"""``Colorizer``: one Python API for in-process inference and for a Triton server.

Three ways to run, the same pixels:

- in-process (default): the family's conditioner, ``prepare``/``finish`` and the ONNX stages here;
- ``server=URL`` (the thin client): image bytes and the user's inputs go to the ``colorize``
  endpoint, an encoded image comes back; no local manifest, tokenizer or model is needed;
- ``server=URL, via="ensemble"``: prepare, condition and finish here, only the tensors go to the
  ``<family>`` ensemble (the client then needs the model repository's manifest and assets, and
  checks that the server has the same ones before any pixel is sent).

User inputs are keyword arguments named as the family declares them (``caption=``, ``reference=``);
``langcolor models`` lists each family's.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from . import families, names
from .connection import ApiKey, TlsFiles
from .errors import ImageError, LangcolorError
from .families import Note
from .imageio import DEFAULT_JPEG_QUALITY, DEFAULT_MAX_PIXELS, DEFAULT_PNG_COMPRESSION, encode_image, format_for_path, read_bytes
from .outputs import check_output_path, write_atomic
from .photo import Source, load
from .spec import ModelGeometry

log = logging.getLogger(__name__)

DEFAULT_BATCH = 8  # images per inference call in colorize_many (the served ensemble batches up to 8)
VIAS = ("endpoint", "ensemble")


@dataclass(frozen=True)
class ColorizeResult:
    rgb: np.ndarray  # uint8 [H, W, 3], L equal to the input's
    notes: tuple[Note, ...] = ()  # how the inputs were read: ignored words, a caption without effect, ...
    outputs: Mapping[str, np.ndarray] = field(default_factory=dict)  # the network's outputs (AB [2, S, S], ...); not via the endpoint
    exif: bytes | None = None  # the input's metadata, carried to the saved file
    icc: bytes | None = None
    encoded: bytes | None = None  # the endpoint's encoded file, when it came from one
    encoded_format: str | None = None

    @property
    def ab_small(self) -> np.ndarray:
        return self.outputs[names.AB]

    @property
    def unknown_words(self) -> tuple[str, ...]:
        return tuple(w for n in self.notes if n.kind == "unknown-words" for w in n.words)


def _to_bytes(source: Source) -> bytes:
    """Image bytes for the wire: a file's own bytes, or pixels in memory encoded as PNG."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, Path)):
        return read_bytes(source)  # the same errors as decoding: missing file, directory, empty
    loaded = load(source)
    rgb8 = np.clip(np.rint(loaded.rgb * 255.0), 0, 255).astype(np.uint8)
    return encode_image(rgb8, "PNG")


def _pixels(value: Any) -> tuple[int, int] | None:
    """(width, height) of an image input from its header alone, or None when it is not readable as
    one (the family's conditioner then names the problem)."""
    if isinstance(value, np.ndarray):
        return (value.shape[1], value.shape[0]) if value.ndim >= 2 else None
    from PIL import Image

    try:
        source = io.BytesIO(bytes(value)) if isinstance(value, (bytes, bytearray, memoryview)) else value
        with Image.open(source) as im:  # the header only: no pixel is decoded
            return im.size
    except Exception:
        return None


def check_image_inputs(fields: Iterable[families.InputField], values: Mapping[str, Any], max_pixels: int) -> None:
    """Every image input among ``values`` (a reference photo, any family's) within the pixel cap that
    the photo has, checked on its header before anything decodes it; ``ImageError`` names the input."""
    for f in fields:
        value = values.get(f.name)
        if f.kind != families.IMAGE or value is None:
            continue
        size = _pixels(value)
        if size is not None and size[0] * size[1] > max_pixels:
            w, h = size
            raise ImageError(f"{f.name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} "
                             "(raise it with --max-pixels)")


def _wire_value(field_kind: str, value: Any) -> bytes:
    return _to_bytes(value) if field_kind == families.IMAGE else (value if isinstance(value, bytes) else str(value).encode("utf-8"))


class Colorizer:
    def __init__(
        self,
        model: str = families.DEFAULT_FAMILY,
        server: str | None = None,
        protocol: str | None = None,
        model_repository: str | Path | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        intra_op_threads: int | None = None,
        device: str = "cpu",
        via: str = "endpoint",
        api_key: ApiKey | str | None = None,
        tls: TlsFiles | None = None,
        server_wait_s: float = 0.0,
    ) -> None:
        """``api_key``, ``tls`` (a ``connection.TlsFiles``) and ``server_wait_s`` (how long a call
        waits for a server that went away) are for ``server=`` only; see ``RemoteStages``."""
        if via not in VIAS:
            raise LangcolorError(f"via must be one of {', '.join(VIAS)}, got {via!r}")
        self.family = families.get(model)
        self.max_pixels = int(max_pixels)
        self.server = server
        self.via = via if server else "in-process"
        self.bundle = None
        if server is None or via == "ensemble":
            from .runtime import ModelBundle

            # The conditioner runs here: the caption is tokenized, the reference resized, locally.
            self.bundle = ModelBundle.load(model_repository, family=model, stages=server is None)
        if server is None:
            from .runtime import OnnxStages

            self._stages = OnnxStages(self.bundle, intra_op_threads=intra_op_threads, device=device)
        else:
            from .remote import RemoteStages  # tritonclient is only needed for the server path

            self._stages = RemoteStages(
                server, protocol=protocol, family=model,
                assets=self.bundle.manifest.assets if self.bundle else None,
                geometry=self.bundle.geometry if self.bundle else None,  # a different served model is refused on connect
                endpoint=via == "endpoint", api_key=api_key, tls=tls, wait_s=server_wait_s,
            )

    @property
    def geometry(self) -> ModelGeometry:
        if self.bundle is None:
            raise LangcolorError("the thin client has no model geometry; use via='ensemble' or run in-process")
        return self.bundle.geometry

    @property
    def conditioner(self):
        if self.bundle is None:
            raise LangcolorError("the thin client has no local conditioner; use via='ensemble' or run in-process")
        return self.bundle.conditioner

    @property
    def tokenizer(self):
        return self.conditioner.tokenizer

    @property
    def weights_sha256(self) -> str:
        """The hash of the weights that colour the pixels: the one the server declares for the model
        it serves, else the local manifest's. Records of finished work key on it."""
        served = getattr(self._stages, "served_weights_sha256", None)  # RemoteStages only
        return served or self.bundle.manifest.weights_sha256

    def close(self) -> None:
        self._stages.close()

    # ------------------------------------------------------------------ steps
    def prepare(self, source: Source, values: Mapping[str, Any] | None = None):
        """The photo read by the family's codec (for a Lab family: its L planes and metadata)."""
        return self.family.image_codec.prepare(source, values or {}, self.geometry, self.max_pixels)

    def condition(self, values: Mapping[str, Any]):
        """The user's inputs -> the family's condition tensors and notes (``LangcolorError`` if refused)."""
        unknown = sorted(set(values) - set(self.family.input_names))
        if unknown:
            raise LangcolorError(f"model '{self.family.name}' takes {', '.join(self.family.input_names) or 'no input'}"
                                 f" beside the photo, not {', '.join(unknown)}")
        check_image_inputs(self.family.inputs, values, self.max_pixels)
        return self.conditioner.condition(values)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Batched ensemble inputs -> outputs (validated first, in-process or on the server's ensemble)."""
        return self._stages.infer(feeds)

    def finish(self, prepared, outputs: Mapping[str, np.ndarray], threads: int = 1) -> np.ndarray:
        """One image's outputs -> uint8 [H, W, 3] at the input's size (the family's codec)."""
        return self.family.image_codec.finish(prepared, outputs, threads=threads)[0]

    # ------------------------------------------------------------------ whole jobs
    def colorize(self, source: Source, caption: str | bytes | None = None, *, threads: int = 1,
                 **inputs: Any) -> ColorizeResult:
        values = {"caption": caption, **inputs} if caption is not None else inputs
        return self.colorize_many([(source, values)], threads=threads)[0]

    def colorize_many(self, items: Iterable[tuple[Source, Mapping[str, Any]]], batch_size: int = DEFAULT_BATCH,
                      threads: int = 1) -> list[ColorizeResult]:
        """Colorize ``(source, inputs)`` pairs, in batches of ``batch_size`` per inference call.

        Inputs are checked before any image is decoded, so a bad caption or reference fails fast. Only
        one batch of full-resolution images is held in memory at a time."""
        items = [(src, dict(vals)) for src, vals in items]
        if self.via == "endpoint":
            return [self._colorize_remote(src, vals) for src, vals in items]
        conditioned = [self.condition(vals) for _, vals in items]
        codec, geom = self.family.image_codec, self.geometry
        results: list[ColorizeResult] = []
        for start in range(0, len(items), batch_size):
            chunk = range(start, min(start + batch_size, len(items)))
            prepared = [self.prepare(*items[i]) for i in chunk]
            outputs = self.infer(stack_feeds(geom, [{**codec.feeds(p, geom), **conditioned[i].tensors}
                                                   for p, i in zip(prepared, chunk)]))
            for k, (p, i) in enumerate(zip(prepared, chunk)):
                mine = {name: value[k] for name, value in outputs.items()}
                rgb, notes = codec.finish(p, mine, threads=threads)
                results.append(ColorizeResult(rgb, conditioned[i].notes + notes, mine, p.exif, p.icc))
        return results

    def _wire(self, values: Mapping[str, Any]) -> dict[str, bytes]:
        """The user's inputs as the endpoint takes them: text as UTF-8, images as their file's bytes."""
        fields = {f.name: f for f in self.family.inputs}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise LangcolorError(f"model '{self.family.name}' takes {', '.join(fields) or 'no input'} beside the "
                                 f"photo, not {', '.join(unknown)}")
        wire = {k: _wire_value(fields[k].kind, v) for k, v in values.items() if v is not None}
        check_image_inputs(self.family.inputs, wire, self.max_pixels)  # before the bytes leave
        return wire

    def submit_encoded(self, data: bytes, values: Mapping[str, Any], fmt: str = "png"):
        """Thin client: an image file's bytes and the inputs to the endpoint, in the background ->
        a future of ``Colorized`` (the encoded image in ``fmt`` and the notes)."""
        if self.via != "endpoint":
            raise LangcolorError("submit_encoded needs Colorizer(server=..., via='endpoint')")
        return self._stages.submit_colorize(data, model=self.family.name, fmt=fmt, **self._wire(values))

    def _colorize_remote(self, source: Source, values: Mapping[str, Any]) -> ColorizeResult:
        from PIL import Image

        answer = self._stages.colorize_bytes(_to_bytes(source), model=self.family.name, **self._wire(values))
        with Image.open(io.BytesIO(answer.data)) as im:
            rgb = np.asarray(im.convert("RGB"))
            exif, icc = im.info.get("exif"), im.info.get("icc_profile")
        return ColorizeResult(rgb, answer.notes, {}, exif, icc, answer.data, "PNG")

    def save(
        self,
        result: ColorizeResult,
        path: str | Path,
        png_compression: int = DEFAULT_PNG_COMPRESSION,
        jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    ) -> Path:
        """Write ``result`` (format from the extension), carrying EXIF/ICC; atomic, never partial."""
        path = check_output_path(path)
        fmt = format_for_path(path)
        if result.encoded is not None and fmt == result.encoded_format and png_compression == DEFAULT_PNG_COMPRESSION:
            return write_atomic(path, result.encoded)  # the server's own file, not decoded and re-encoded
        data = encode_image(result.rgb, fmt, exif=result.exif, icc=result.icc, png_compression=png_compression,
                            jpeg_quality=jpeg_quality)
        return write_atomic(path, data)



def stack_feeds(geom: ModelGeometry, per_image: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One request's per-image tensors (each without the batch axis) -> the batched feeds the family's
    model takes: the image and every request input, in the declared order."""
    from .spec import ensemble_spec

    return {t.name: np.stack([feeds[t.name] for feeds in per_image]) for t in ensemble_spec(geom).inputs}
