"""Client side: a reference photo (or a palette) -> ``REF_L`` and ``REF_AB`` at the network's size.

The reference may have any size, aspect and format: it is decoded like the photograph (EXIF
orientation applied, alpha on white), squashed to S x S as the target is, and converted to Lab. The
resize happens in 8-bit RGB through an image twice the size and a 2x box reduction, the way the
training pairs were rendered, so the network sees references as it saw them in training.

``--palette "#b03a2e,#2e86c1,..."`` asks for colours without a photo: the client renders the colours as
vertical swatches of equal width, in the order given, each at its own lightness (the paper's palette
references). A reference with no colour (every pixel gray) is refused: the network would have no
colour to transfer, and a gray output is not what a user giving a reference asked for.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np
from PIL import Image

from langcolor.client.errors import ImageError, LangcolorError
from langcolor.client.families import IMAGE, TEXT, Conditioned, InputField
from langcolor.client.imageio import DEFAULT_MAX_PIXELS
from langcolor.client.lab import L_MAX, rgb_to_lab
from langcolor.client.photo import load
from langcolor.client.spec import ModelGeometry

from .config import REF_AB, REF_L

REFERENCE = InputField("reference", IMAGE, "a colour photo whose colours to follow (any size or format)",
                       required=False)
PALETTE = InputField("palette", TEXT, 'colours to use instead of a reference photo, e.g. "#b03a2e,#2e86c1,#f1c40f"',
                     required=False, examples=("#b03a2e,#2e86c1,#f1c40f", "#556b2f #87ceeb #d2b48c"))

GRAY_CHROMA = 4.0  # Lab units: a reference whose pixels (99th percentile, at S x S) stay below this is gray
GRAY_PERCENTILE = 99.0
MAX_PALETTE_COLOURS = 16  # a swatch stays at least S / 16 = 4 px wide at 64 px
_HEX = re.compile(r"#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})")
_SEPARATORS = re.compile(r"\s*[,;]\s*|\s+")  # commas, semicolons or spaces: "#aa0000 #0000aa" needs no CSV quoting
_SHOWN_CHARS = 20  # of a bad palette entry quoted back in its error


class PaletteError(LangcolorError):
    """A ``--palette`` string that cannot be read as colours; the message names the problem."""


def parse_palette(text: str | bytes) -> np.ndarray:
    """``"#b03a2e,#2e86c1"`` (``#`` optional, 6 or 3 hex digits; commas, semicolons or spaces between)
    -> uint8 [n, 3] RGB."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise PaletteError("palette is not valid UTF-8 text") from e
    if not isinstance(text, str):
        raise PaletteError(f"palette must be text, got {type(text).__name__}")
    if not text.strip():
        raise PaletteError('palette is empty; give colours as "#rrggbb,#rrggbb,..."')
    items = _SEPARATORS.split(text.strip())
    if "" in items:
        raise PaletteError(f"palette colour {items.index('') + 1} is empty (two separators in a row?)")
    if len(items) > MAX_PALETTE_COLOURS:
        raise PaletteError(f"palette has {len(items)} colours; at most {MAX_PALETTE_COLOURS}")
    colours = []
    for k, item in enumerate(items):
        m = _HEX.fullmatch(item)
        if m is None:
            shown = item if len(item) <= _SHOWN_CHARS else item[:_SHOWN_CHARS] + "..."
            raise PaletteError(f"palette colour {k + 1} ({shown!r}) is not a hex colour like #b03a2e")
        digits = m.group(1)
        if len(digits) == 3:
            digits = "".join(ch * 2 for ch in digits)
        colours.append([int(digits[i : i + 2], 16) for i in (0, 2, 4)])
    return np.asarray(colours, np.uint8)  # [n, 3]


def render_palette(colours: np.ndarray, size: int) -> np.ndarray:
    """uint8 [n, 3] -> uint8 RGB [S, S, 3]: vertical swatches of equal width, in the order given."""
    edges = np.linspace(0, size, len(colours) + 1).round().astype(int)
    image = np.empty((size, size, 3), np.uint8)
    for rgb, x0, x1 in zip(colours, edges[:-1], edges[1:]):
        image[:, x0:x1] = rgb
    return image


def squash(rgb8: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [S, S, 3], antialiased: through 2S x 2S (bilinear) and a 2x box reduction."""
    img = Image.fromarray(rgb8)
    factor = min(img.size) // (4 * size)
    if factor > 1:  # a box reduction first: a 12 MP reference costs milliseconds, not a full-size filter
        img = img.reduce(factor)
    return np.asarray(img.resize((2 * size, 2 * size), Image.Resampling.BILINEAR).reduce(2))


def reference_planes(rgb8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [S, S, 3] -> (REF_L float32 [1, S, S] in [0, 100], REF_AB float32 [2, S, S])."""
    lab = rgb_to_lab(rgb8.astype(np.float32) / 255.0)  # [S, S, 3]
    ref_l = np.clip(lab[..., 0], 0.0, L_MAX)[None]
    return np.ascontiguousarray(ref_l, np.float32), np.ascontiguousarray(lab[..., 1:].transpose(2, 0, 1), np.float32)


def is_gray(ref_ab: np.ndarray) -> bool:
    """No colour to transfer: (nearly) every pixel of ``ref_ab`` [2, S, S] within GRAY_CHROMA of gray."""
    chroma = np.hypot(ref_ab[0], ref_ab[1])
    return bool(np.percentile(chroma, GRAY_PERCENTILE) < GRAY_CHROMA)


class ReferenceConditioner:
    def __init__(self, geometry: ModelGeometry) -> None:
        self.geometry = geometry
        self.size = geometry.image_size

    def planes(self, values: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The user's reference or palette -> (REF_L [1, S, S], REF_AB [2, S, S]); refuses a gray one."""
        reference, palette = values.get(REFERENCE.name), values.get(PALETTE.name)
        if reference is not None and palette is not None:
            raise LangcolorError("give a reference image or a palette, not both (in a batch, a run-wide --reference "
                                 "or --palette also fills the lines that name the other)")
        if reference is None and palette is None:
            raise ImageError(f"model '{self.geometry.family}' needs a reference image (--reference IMAGE) "
                             'or a palette (--palette "#rrggbb,#rrggbb,...")')
        if palette is not None:
            ref_l, ref_ab = reference_planes(render_palette(parse_palette(palette), self.size))
            if is_gray(ref_ab):
                raise PaletteError("palette: every colour is gray, so it carries no colour to transfer")
            return ref_l, ref_ab
        try:
            loaded = load(reference, DEFAULT_MAX_PIXELS)  # the caller held it to its own pixel cap first
        except ImageError as e:
            raise ImageError(f"reference: {e}") from e
        rgb8 = np.clip(np.rint(loaded.rgb * 255.0), 0, 255).astype(np.uint8)
        ref_l, ref_ab = reference_planes(squash(rgb8, self.size))
        if is_gray(ref_ab):
            raise ImageError("reference: the image carries no colour (it is gray); give a colour photo "
                             "or a --palette")
        return ref_l, ref_ab

    def condition(self, values: Mapping[str, Any]) -> Conditioned:
        ref_l, ref_ab = self.planes(values)
        return Conditioned({REF_L: ref_l, REF_AB: ref_ab})

    def describe(self) -> dict:
        return {
            "reference": f"any size or format; squashed to {self.size}x{self.size}; a gray one is refused",
            "palette": f"1-{MAX_PALETTE_COLOURS} hex colours, rendered as vertical swatches",
        }


def build(geometry: ModelGeometry, assets: Mapping[str, bytes]) -> ReferenceConditioner:
    return ReferenceConditioner(geometry)


__all__ = ["REFERENCE", "PALETTE", "PaletteError", "ReferenceConditioner", "build", "parse_palette",
           "render_palette", "squash", "reference_planes", "is_gray"]
