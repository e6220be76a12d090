"""The client's own work around the network, per step, for photos of 0.3, 3 and 12 megapixels.

decode (JPEG bytes -> float RGB), prepare (RGB -> Lab L at full size and resized to S x S),
tokenize (caption -> ids), reconstruct (ab upsampled to full size, the photo's own L put back,
Lab -> sRGB uint8), encode (PNG, what the ``colorize`` endpoint returns, and JPEG). Photos are
scikit-image's ``astronaut`` resized to each size and saved as JPEG at quality 90.
"""

from __future__ import annotations

import io
import logging
from typing import Callable

import numpy as np

from langcolor.client.imageio import encode_image, load_image
from langcolor.client.reconstruct import prepare_l, reconstruct

from .models import CAPTION, BenchModel

log = logging.getLogger(__name__)

# name -> (width, height): 4:3 photos of 0.3, 3 and 12 megapixels
PHOTO_SIZES = {"0.3MP": (640, 480), "3MP": (2000, 1500), "12MP": (4000, 3000)}
STEPS = ("decode", "prepare", "tokenize", "reconstruct", "encode_png", "encode_jpeg")


def photo_jpeg(width: int, height: int, quality: int = 90) -> bytes:
    """A real photograph (scikit-image's astronaut) resized to ``width x height``, as JPEG bytes."""
    from PIL import Image
    from skimage import data as skdata

    im = Image.fromarray(skdata.astronaut()).resize((width, height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def prepost_calls(bm: BenchModel, jpeg: bytes) -> dict[str, Callable[[], object]]:
    """One callable per client step, each on the previous step's real output."""
    s = bm.geometry.image_size
    loaded = load_image(jpeg)
    l_full, l_small = prepare_l(loaded.rgb, s)  # [H,W], [1,S,S]
    ab = np.random.default_rng(0).uniform(-40.0, 40.0, size=(2, s, s)).astype(np.float32)  # [2,S,S]
    rgb = reconstruct(l_full, ab)  # uint8 [H,W,3]
    return {
        "decode": lambda: load_image(jpeg),
        "prepare": lambda: prepare_l(loaded.rgb, s),
        "tokenize": lambda: bm.tokenizer.encode(CAPTION),
        "reconstruct": lambda: reconstruct(l_full, ab),
        "encode_png": lambda: encode_image(rgb, "PNG"),
        "encode_jpeg": lambda: encode_image(rgb, "JPEG"),
    }

