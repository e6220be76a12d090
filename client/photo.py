"""The one path from a photograph to the network and back: ``prepare`` and ``finish``.

The CLI, the Python API, the batch pipeline and the ``colorize`` endpoint all call these two pure
functions (the richzhang/colorization split):

- ``prepare``: decode (EXIF orientation applied, alpha on white), the photograph's own L at full
  resolution, and L resized to the network's side S. The float RGB is not kept: only the two L planes
  and the metadata travel on (12 bytes a pixel less while an image waits for inference);
- ``finish``: ab at S x S upsampled to the photograph's size, recombined with its own L (so the output
  keeps every detail and the exact lightness of the input), chroma reduced where sRGB cannot show a
  colour at that lightness, and encoded with the input's EXIF and ICC.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from .imageio import (
    DEFAULT_JPEG_QUALITY,
    DEFAULT_MAX_PIXELS,
    DEFAULT_PNG_COMPRESSION,
    LoadedImage,
    encode_image,
    from_array,
    load_image,
)
from .reconstruct import prepare_l, reconstruct

Source = Union[str, Path, bytes, np.ndarray, LoadedImage]  # a file, its bytes, or pixels in memory


@dataclass(frozen=True)
class Prepared:
    """A photograph ready for a network of input side S, and what ``finish`` needs to rebuild it."""

    l_full: np.ndarray  # float32 [H, W], the photo's own CIE L in [0, 100]
    l_small: np.ndarray  # float32 [1, S, S], the network's input
    exif: bytes | None  # orientation reset to 1 (the pixels are upright)
    icc: bytes | None  # carried to the output, not applied
    format: str  # the input's format ("JPEG", "PNG", ..., "array")
    mode: str  # the input's PIL mode

    @property
    def size(self) -> tuple[int, int]:  # (W, H)
        return self.l_full.shape[1], self.l_full.shape[0]


def load(source: Source, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode any supported source; raises ``ImageError`` naming the problem."""
    if isinstance(source, LoadedImage):
        return source
    if isinstance(source, np.ndarray):
        return from_array(source, max_pixels=max_pixels)
    return load_image(source, max_pixels=max_pixels)


def prepare(source: Source, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Prepared:
    """Decode ``source`` and return its L planes for a network of input side ``image_size``."""
    loaded = load(source, max_pixels)
    l_full, l_small = prepare_l(loaded.pixels, image_size)  # [H, W], [1, S, S]
    return Prepared(l_full, l_small, loaded.exif, loaded.icc, loaded.format, loaded.mode)


def finish(prepared: Prepared, ab: np.ndarray, threads: int = 1) -> np.ndarray:
    """ab ``[2, S, S]`` -> uint8 ``[H, W, 3]`` with the photo's own L; ``threads`` > 1 splits the rows
    over a thread pool (worth it for one large photo; a batch already runs images in parallel)."""
    return reconstruct(prepared.l_full, ab, threads=threads)


def encode(prepared: Prepared, rgb: np.ndarray, format: str = "PNG", png_compression: int = DEFAULT_PNG_COMPRESSION,
           jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """uint8 ``[H, W, 3]`` -> file bytes in ``format``, with the input's EXIF and ICC."""
    return encode_image(rgb, format, exif=prepared.exif, icc=prepared.icc, png_compression=png_compression,
                        jpeg_quality=jpeg_quality)


class LabCodec:
    """How a Lab family reads its photograph and writes its answer: ``prepare`` and ``finish`` above.

    Every caller goes through a family's codec (``Family.codec``, this one unless the family says
    otherwise): ``prepare(source, values, geometry)`` -> a prepared image, ``feeds`` -> the tensors it
    contributes to a request (the image at S), ``finish(prepared, outputs)`` -> (RGB, notes),
    ``encode`` -> file bytes. A family whose input is not a photograph (a line drawing) brings its own.
    """

    def prepare(self, source: Source, values, geometry, max_pixels: int = DEFAULT_MAX_PIXELS) -> Prepared:
        return prepare(source, geometry.image_size, max_pixels)

    def feeds(self, prepared: Prepared, geometry) -> dict[str, np.ndarray]:
        return {geometry.image.name: prepared.l_small}  # [1, S, S]

    def finish(self, prepared: Prepared, outputs, threads: int = 1) -> tuple[np.ndarray, tuple]:
        return finish(prepared, outputs["AB"], threads=threads), ()

    def encode(self, prepared: Prepared, rgb: np.ndarray, format: str = "PNG", **options) -> bytes:
        return encode(prepared, rgb, format, **options)


LAB = LabCodec()
