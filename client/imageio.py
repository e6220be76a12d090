"""Decoding and encoding photographs: any PIL mode in, float RGB out, EXIF and ICC carried along.

Decisions a reader should know:
- EXIF orientation is applied, and the EXIF kept for saving says orientation 1 (already upright).
- Alpha (RGBA, LA, PA, palette transparency) is composited on WHITE, as a viewer shows the image on
  a page; the output has no alpha. Dropping alpha instead would expose whatever colour hides under
  transparent pixels (often black), which the colorizer would then treat as image content.
- 16-bit grayscale (PNG/TIFF, PIL modes I;16*, I) keeps full precision as float32 (/65535). PIL reads
  16-bit-per-channel *colour* files as 8-bit RGB, so those lose precision (a known limit).
- Pixels are taken as sRGB; an embedded ICC profile is kept for saving but not applied.
- The pixel cap is checked on the header (``Image.open`` reads no pixel data), before decoding, so
  a small file declaring a huge image is rejected without allocating it. PIL's own decompression
  bomb check is turned into ``ImageError`` too.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

DEFAULT_MAX_PIXELS = 50_000_000  # raise with --max-pixels; PIL's own hard limit is 2 * MAX_IMAGE_PIXELS
_ORIENTATION_TAG = 0x0112
SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
_GRAY16_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
# zlib level for PNG output. Level 1 writes a 12 MP photo ~4x faster than PIL's default 6, for a
# file ~10% larger (benchmarks/PREPOST.md); lossless either way, so speed wins by default.
DEFAULT_PNG_COMPRESSION = 1
DEFAULT_JPEG_QUALITY = 95  # with 4:4:4 chroma: the colour is the product, not worth saving bytes on


@dataclass(frozen=True)
class LoadedImage:
    pixels: np.ndarray  # upright [H, W, 3]: uint8 as decoded from an 8-bit file, else float32 in [0, 1]
    exif: bytes | None  # orientation reset to 1
    icc: bytes | None
    format: str  # "PNG", "JPEG", "TIFF", ...
    mode: str  # the file's original PIL mode
    size: tuple[int, int]  # (W, H) after orientation

    @property
    def rgb(self) -> np.ndarray:
        """float32 ``[H, W, 3]`` in [0, 1] (a fresh copy when the file was 8-bit: the pixels are kept as
        decoded, 4x smaller, and the Lab path reads them without widening)."""
        return _u8_to_float(self.pixels) if self.pixels.dtype == np.uint8 else self.pixels

    @property
    def is_grayscale(self) -> bool:
        return self.mode in {"1", "L", "LA", "F"} | _GRAY16_MODES


def _describe(source: str | Path | bytes) -> str:
    return "image bytes" if isinstance(source, (bytes, bytearray, memoryview)) else f"'{source}'"


def read_bytes(source: str | Path | bytes) -> bytes:
    """An image file's bytes (or the bytes given); ``ImageError`` for a missing, unreadable or empty one."""
    what = _describe(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif not isinstance(source, (str, os.PathLike)):
        raise ImageError(f"image source must be a file path or bytes, got {type(source).__name__}")
    else:
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError as e:
            raise ImageError(f"{what}: no such file") from e
        except IsADirectoryError as e:
            raise ImageError(f"{what}: is a directory, not an image file") from e
        except OSError as e:
            raise ImageError(f"{what}: cannot read ({e.strerror or e})") from e
        except ValueError as e:  # e.g. an embedded NUL byte: no file can have that name
            raise ImageError(f"{what!r}: not a valid file path ({e})") from e
    if not data:
        raise ImageError(f"{what}: empty file (0 bytes)")
    return data


def _open(source: str | Path | bytes) -> Image.Image:
    what = _describe(source)
    data = read_bytes(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{what}: rejected as a decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{what}: not an image (unrecognised format, {len(data)} bytes)") from e
    except (OSError, SyntaxError, ValueError, struct.error) as e:
        raise ImageError(f"{what}: corrupt image header ({e})") from e


def _to_rgb(im: Image.Image) -> np.ndarray:  # -> uint8 [H, W, 3], or float32 [H, W, 3] in [0, 1] for 16-bit/float
    mode = im.mode
    if mode in _GRAY16_MODES:
        gray = np.asarray(im).astype(np.float32) / 65535.0  # [H, W]
        return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=2)
    if mode == "F":
        gray = np.asarray(im, dtype=np.float32)  # [H, W]
        if not np.isfinite(gray).all():
            raise ImageError("floating-point image contains NaN or infinity")
        peak = float(gray.max(initial=0.0))
        scale = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else 65535.0  # infer the range used
        return np.repeat(np.clip(gray / scale, 0.0, 1.0)[..., None], 3, axis=2)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "RGBa", "La"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    if im.mode != "RGB":
        im = im.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV
    return np.asarray(im)  # uint8 [H, W, 3]


def _u8_to_float(rgb_u8: np.ndarray) -> np.ndarray:  # uint8 [H, W, 3] -> float32 in [0, 1], one allocation
    return np.divide(rgb_u8, np.float32(255.0), dtype=np.float32)  # the same values as astype(float32) / 255


def _upright_exif(raw: bytes | None) -> bytes | None:
    """The file's EXIF block with orientation 1, for saving the upright pixels (a fresh copy:
    editing ``im.getexif()`` in place would hide the orientation from ``exif_transpose``)."""
    if not raw:
        return None
    exif = Image.Exif()
    exif.load(raw)
    if _ORIENTATION_TAG in exif:
        exif[_ORIENTATION_TAG] = 1
    return exif.tobytes()


def load_image(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode a photograph fully; raises ``ImageError`` naming the problem."""
    what = _describe(source)
    im = _open(source)
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError(f"{what}: image has zero size ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(
            f"{what}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (raise it with --max-pixels)"
        )
    fmt, mode, icc = im.format or "unknown", im.mode, im.info.get("icc_profile")
    try:
        im.load()  # decode everything now: a truncated file fails here, not halfway through inference
        exif = _upright_exif(im.info.get("exif"))
        ImageOps.exif_transpose(im, in_place=True)  # not in place, it copies the whole image even when upright
        rgb = _to_rgb(im)
        del im  # the pixels were copied out: free the decoder's copy (36 MB for 12 MP) now
    except ImageError as e:
        raise ImageError(f"{what}: {e}") from e
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        text = str(e)
        if "truncat" in text or isinstance(e, EOFError):
            raise ImageError(f"{what}: {fmt} image is truncated or corrupt ({text})") from e
        raise ImageError(f"{what}: cannot decode the {fmt} image ({text})") from e
    h2, w2 = rgb.shape[:2]
    return LoadedImage(pixels=rgb, exif=exif, icc=icc, format=fmt, mode=mode, size=(w2, h2))


def from_array(array: np.ndarray, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """A decoded picture already in memory: uint8, uint16 or float in [0, 1]; ``[H, W]``, ``[H, W, 3]``
    or ``[H, W, 4]`` (alpha composited on white, as for files)."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"array image must be [H, W], [H, W, 3] or [H, W, 4], got shape {np.shape(array)}")
    h, w = a.shape[:2]
    if h * w > max_pixels:
        raise ImageError(f"array image: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
    if a.dtype == np.uint8 or a.dtype == np.uint16:
        x = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    elif np.issubdtype(a.dtype, np.floating):
        x = a.astype(np.float32)
        if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
            raise ImageError("array image: float values must be finite and within [0, 1]")
    else:
        raise ImageError(f"array image: dtype {a.dtype} not supported (use uint8, uint16 or float in [0, 1])")
    channels = a.shape[2]
    if channels == 4:
        alpha = x[..., 3:]
        x = x[..., :3] * alpha + (1.0 - alpha)  # over white
    elif channels == 1:
        x = np.repeat(x, 3, axis=2)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    return LoadedImage(pixels=np.ascontiguousarray(x), exif=None, icc=None, format="array", mode=mode, size=(w, h))


def format_for_path(path: str | Path) -> str:
    """``OUT.png`` -> ``"PNG"``; raises ``ImageError`` for extensions we cannot write."""
    ext = Path(path).suffix.lower()
    if ext not in SAVE_FORMATS:
        raise ImageError(f"'{path}': cannot write '{ext or 'no extension'}' files; use one of {sorted(SAVE_FORMATS)}")
    return SAVE_FORMATS[ext]


def encode_image(
    rgb_u8: np.ndarray,
    format: str = "PNG",
    exif: bytes | None = None,
    icc: bytes | None = None,
    png_compression: int = DEFAULT_PNG_COMPRESSION,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
) -> bytes:
    """uint8 ``[H, W, 3]`` -> encoded file bytes; EXIF and ICC are written for PNG, JPEG and TIFF.

    ``png_compression`` is the zlib level 0-9 (0 stores, 9 is smallest and slowest);
    ``jpeg_quality`` 1-95 (PIL advises against more). Each applies to its format only.
    """
    if not 0 <= int(png_compression) <= 9:
        raise ImageError(f"PNG compression level must be 0-9, got {png_compression}")
    if not 1 <= int(jpeg_quality) <= 100:
        raise ImageError(f"JPEG quality must be 1-100, got {jpeg_quality}")
    if not isinstance(rgb_u8, np.ndarray) or rgb_u8.dtype != np.uint8 or rgb_u8.ndim != 3 or rgb_u8.shape[2] != 3:
        shape = getattr(rgb_u8, "shape", None)
        raise ImageError(f"encode_image expects uint8 [H, W, 3], got {getattr(rgb_u8, 'dtype', type(rgb_u8))} {shape}")
    format = format.upper()
    options: dict = {}
    if exif:
        options["exif"] = exif
    if icc:
        options["icc_profile"] = icc
    if format == "JPEG":
        options.update(quality=int(jpeg_quality), subsampling=0)  # 4:4:4: chroma is the whole point of the output
    elif format == "PNG":
        options.update(compress_level=int(png_compression))
    elif format != "TIFF":
        raise ImageError(f"cannot encode format {format!r}; use PNG, JPEG or TIFF")
    buf = io.BytesIO()
    Image.fromarray(rgb_u8).save(buf, format=format, **options)
    return buf.getvalue()
