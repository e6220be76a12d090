"""The client's own work around the network, per step, for photos of 0.3, 3 and 12 megapixels.

Each step is the client's one pre/post path (``langcolor.client.photo``) taken apart: decode (JPEG
bytes -> float RGB), prepare (the photo's L at full size and resized to S x S), condition (the
family's conditioner on the benchmark's user input: a caption is tokenized, a reference photo
prepared; left out when the family has no representative input), reconstruct (``finish``: ab
upsampled to full size, the photo's own L put back, Lab -> sRGB uint8), encode (PNG, what the
``colorize`` endpoint returns, and JPEG). Photos are scikit-image's ``astronaut`` resized to each
size and saved as JPEG at quality 90.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from langcolor.client import photo

from .models import BenchModel, photo_jpeg

log = logging.getLogger(__name__)

__all__ = ["PHOTO_SIZES", "STEPS", "photo_jpeg", "prepost_calls"]

# name -> (width, height): 4:3 photos of 0.3, 3 and 12 megapixels
PHOTO_SIZES = {"0.3MP": (640, 480), "3MP": (2000, 1500), "12MP": (4000, 3000)}
STEPS = ("decode", "prepare", "condition", "reconstruct", "encode_png", "encode_jpeg")


def prepost_calls(bm: BenchModel, jpeg: bytes) -> dict[str, Callable[[], object]]:
    """One callable per client step (in ``STEPS`` order), each on the previous step's real output."""
    s = bm.geometry.image_size
    loaded = photo.load(jpeg)
    prepared = photo.prepare(loaded, s)  # L [H,W] and [1,S,S]
    ab = np.random.default_rng(0).uniform(-40.0, 40.0, size=(2, s, s)).astype(np.float32)  # [2,S,S]
    rgb = photo.finish(prepared, ab)  # uint8 [H,W,3]
    calls = {
        "decode": lambda: photo.load(jpeg),
        "prepare": lambda: photo.prepare(loaded, s),
        "condition": (lambda: bm.conditioner.condition(bm.user_values)) if bm.user_values is not None else None,
        "reconstruct": lambda: photo.finish(prepared, ab),
        "encode_png": lambda: photo.encode(prepared, rgb, "PNG"),
        "encode_jpeg": lambda: photo.encode(prepared, rgb, "JPEG"),
    }
    return {step: calls[step] for step in STEPS if calls[step] is not None}
