"""``Colorizer``: one Python API for in-process inference and for a Triton server.

The image side (decoding, Lab, full-resolution reconstruction) and the caption side (tokenizer)
always run here; only ``infer_ab`` differs: local onnxruntime sessions (``OnnxStages``) by default,
or the served ``<family>`` ensemble with ``server="host:port"`` (``RemoteStages``). Both get the same
validated ``L`` and ``TOKENS`` tensors, so both paths give the same pixels.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Union

import numpy as np

from .errors import OutputError
from .imageio import (
    DEFAULT_JPEG_QUALITY,
    DEFAULT_MAX_PIXELS,
    DEFAULT_PNG_COMPRESSION,
    LoadedImage,
    encode_image,
    format_for_path,
    from_array,
    load_image,
)
from .reconstruct import prepare_l, reconstruct
from .runtime import ModelBundle, OnnxStages, check_model_inputs
from .spec import ModelGeometry
from .tokenizer import CaptionTokenizer, EncodedCaption

log = logging.getLogger(__name__)

Source = Union[str, Path, bytes, np.ndarray, LoadedImage]  # a file, its bytes, or pixels in memory
DEFAULT_BATCH = 8  # images per infer_ab call in colorize_many (the served ensemble batches up to 8)


@dataclass(frozen=True)
class PreparedImage:
    loaded: LoadedImage
    l_full: np.ndarray  # float32 [H, W], the photo's own L
    l_small: np.ndarray  # float32 [1, S, S], the network's input


@dataclass(frozen=True)
class ColorizeResult:
    rgb: np.ndarray  # uint8 [H, W, 3], L equal to the input's
    ab_small: np.ndarray  # float32 [2, S, S], the network's prediction
    unknown_words: tuple[str, ...]  # caption words the model ignored
    exif: bytes | None = None  # the input's metadata, carried to the saved file
    icc: bytes | None = None


class Colorizer:
    def __init__(
        self,
        model: str = "lcode",
        server: str | None = None,
        protocol: str = "grpc",
        model_repository: str | Path | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        intra_op_threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        # The manifest and tokenizer are read locally in both modes: the caption is tokenized here,
        # and the server is asked to confirm it serves a model with the same tokenizer hash.
        self.bundle = ModelBundle.load(model_repository, family=model, stages=server is None)
        self.max_pixels = int(max_pixels)
        if server is None:
            self._stages = OnnxStages(self.bundle, intra_op_threads=intra_op_threads, device=device)
        else:
            from .remote import RemoteStages  # tritonclient is only needed for the server path

            self._stages = RemoteStages(
                server,
                protocol=protocol,
                family=model,
                tokenizer_sha256=self.bundle.tokenizer.sha256,
                geometry=self.bundle.geometry,  # a different served model is refused on connect
            )
        self.server = server

    @property
    def geometry(self) -> ModelGeometry:
        return self.bundle.geometry

    @property
    def tokenizer(self) -> CaptionTokenizer:
        return self.bundle.tokenizer

    @property
    def weights_sha256(self) -> str:
        """The hash of the weights that colour the pixels: the one the server declares for the model
        it serves, else the local manifest's. Records of finished work key on it."""
        served = getattr(self._stages, "served_weights_sha256", None)  # RemoteStages only
        return served or self.bundle.manifest.weights_sha256

    # ------------------------------------------------------------------ steps
    def prepare(self, source: Source) -> PreparedImage:
        if isinstance(source, LoadedImage):
            loaded = source
        elif isinstance(source, np.ndarray):
            loaded = from_array(source, max_pixels=self.max_pixels)
        else:
            loaded = load_image(source, max_pixels=self.max_pixels)
        l_full, l_small = prepare_l(loaded.rgb, self.geometry.image_size)  # [H, W], [1, S, S]
        return PreparedImage(loaded, l_full, l_small)

    def encode_caption(self, caption: str | bytes) -> EncodedCaption:
        encoded = self.tokenizer.encode(caption)
        if encoded.unknown:
            log.warning("caption words unknown to the model, ignored: %s", " ".join(encoded.unknown))
        return encoded

    def infer_ab(self, l_small: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """L ``[B, 1, S, S]`` + tokens ``[B, T]`` -> ab ``[B, 2, S, S]`` (validated first, both paths)."""
        check_model_inputs(l_small, tokens, self.geometry)
        return self._stages.infer_ab(l_small, tokens)

    def finish(self, prepared: PreparedImage, ab: np.ndarray, threads: int = 1) -> np.ndarray:
        """ab ``[2, S, S]`` -> uint8 ``[H, W, 3]`` with the photo's own L; ``threads`` > 1 splits the
        rows over a thread pool (worth it for one large photo; a batch already runs images in parallel)."""
        return reconstruct(prepared.l_full, ab, threads=threads)  # uint8 [H, W, 3]

    # ------------------------------------------------------------------ whole jobs
    def colorize(self, source: Source, caption: str | bytes) -> ColorizeResult:
        return self.colorize_many([(source, caption)])[0]

    def colorize_many(
        self, items: Iterable[tuple[Source, str | bytes]], batch_size: int = DEFAULT_BATCH
    ) -> list[ColorizeResult]:
        """Colorize pairs in batches of ``batch_size`` through one ``infer_ab`` call each.

        Captions are checked before any image is decoded, so a bad caption fails fast. Only one
        batch of full-resolution images is held in memory at a time.
        """
        items = list(items)
        captions = [self.encode_caption(caption) for _, caption in items]
        results: list[ColorizeResult] = []
        for start in range(0, len(items), batch_size):
            chunk = range(start, min(start + batch_size, len(items)))
            prepared = [self.prepare(items[i][0]) for i in chunk]
            l_small = np.stack([p.l_small for p in prepared])  # [B, 1, S, S]
            tokens = np.stack([captions[i].ids for i in chunk])  # [B, T]
            ab = self.infer_ab(l_small, tokens)  # [B, 2, S, S]
            for p, i, ab_one in zip(prepared, chunk, ab):
                rgb = self.finish(p, ab_one)
                results.append(ColorizeResult(rgb, ab_one, captions[i].unknown, p.loaded.exif, p.loaded.icc))
        return results

    def save(
        self,
        result: ColorizeResult,
        path: str | Path,
        like: LoadedImage | None = None,
        png_compression: int = DEFAULT_PNG_COMPRESSION,
        jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    ) -> Path:
        """Write ``result`` (format from the extension), carrying EXIF/ICC; atomic, never partial."""
        exif, icc = (like.exif, like.icc) if like is not None else (result.exif, result.icc)
        path = Path(path)
        data = encode_image(
            result.rgb, format_for_path(path), exif=exif, icc=icc, png_compression=png_compression,
            jpeg_quality=jpeg_quality,
        )
        return write_atomically(path, data)


def check_output_path(path: str | Path) -> Path:
    """Fail before any work if ``path`` cannot receive a file: a directory, a missing or read-only folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"output '{path}' is a directory; give a file name such as {path / 'out.png'}")
    format_for_path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output folder '{parent}' is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"output '{path}' exists and is read-only")
    return path


def write_atomically(path: Path, data: bytes) -> Path:
    """Write to a temporary file beside ``path`` and rename it over ``path``: readers never see half a file."""
    check_output_path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"cannot write output '{path}': {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; reading os.umask() would change it process-wide
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write output '{path}': {e.strerror or e}") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

