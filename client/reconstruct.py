"""Full-resolution colorization around a fixed-size network (the richzhang/colorization split).

``prepare_l`` returns the photograph's own L at full resolution and a copy resized to the network's
input side S. The network predicts ab at S x S; ``reconstruct`` upsamples only ab, bilinearly, and
recombines it with the ORIGINAL L, so the output keeps every detail and the exact lightness of the
input (up to 8-bit rounding): the model adds colour, it never redraws the photograph.

Resizing is done with PIL on single-channel float32 ("F" mode) images. PIL's bilinear filter widens
its support by the reduction factor when shrinking, so downscaling L is antialiased (no aliasing
of fine texture into the network's input), and upscaling ab is plain bilinear interpolation.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from . import lab_fast
from .lab import L_MAX, lab_to_srgb8_keeping_l, rgb8_to_l, rgb_to_l

_FILTER = Image.Resampling.BILINEAR


def resize_plane(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    """float ``[h, w]`` -> float32 ``[height, width]``, antialiased when shrinking."""
    assert plane.ndim == 2, plane.shape
    src = np.ascontiguousarray(plane, dtype=np.float32)
    if src.shape == (height, width):
        return src.copy()
    return np.array(Image.fromarray(src).resize((width, height), _FILTER), dtype=np.float32)  # writable copy


def prepare_l(rgb: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB ``[H, W, 3]``, uint8 or float in [0, 1] -> (L full ``[H, W]``, L small ``[1, S, S]``), both
    float32 in [0, 100].

    The photo is squashed to S x S (no crop, no padding): every pixel gets a prediction and the
    aspect ratio comes back when ab is stretched to the original size.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected RGB [H, W, 3], got {rgb.shape}")
    l_full = rgb8_to_l(rgb) if rgb.dtype == np.uint8 else rgb_to_l(rgb)  # [H, W]
    l_small = resize_plane(l_full, image_size, image_size)  # [S, S]
    np.clip(l_small, 0.0, L_MAX, out=l_small)  # resampling filters can overshoot slightly
    return l_full, l_small[None]  # [H, W], [1, S, S]


def upsample_ab(ab_small: np.ndarray, width: int, height: int) -> np.ndarray:
    """ab ``[2, S, S]`` -> ``[height, width, 2]`` float32, bilinear."""
    assert ab_small.ndim == 3 and ab_small.shape[0] == 2, ab_small.shape
    return np.stack([resize_plane(ab_small[c], width, height) for c in range(2)], axis=-1)  # [H, W, 2]


_BAND_PIXELS = 1 << 16  # pixels per band of rows: the Lab and RGB temporaries stay in cache


def _row_weights(height: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps for stretching ``size`` rows to ``height`` (> size): PIL's pixel-centre
    alignment, edges clamped. -> (first row (height,), second row (height,), weight of the second)."""
    src = (np.arange(height) + 0.5) * (size / height) - 0.5
    i0 = np.floor(src).astype(np.int64)
    frac = (src - i0).astype(np.float32)
    return np.clip(i0, 0, size - 1), np.clip(i0 + 1, 0, size - 1), frac


def reconstruct(l_full: np.ndarray, ab_small: np.ndarray, threads: int = 1) -> np.ndarray:
    """(L ``[H, W]``, ab ``[2, S, S]``) -> RGB uint8 ``[H, W, 3]`` with the input's L.

    Colours that sRGB cannot show at that lightness have their chroma reduced (hue and L kept)
    rather than being clipped per channel, which would shift L.

    Works in bands of rows: ab is stretched to the full width once (``[2, S, W]``, small), and
    each band gets its rows interpolated, its Lab assembled and converted on the spot, so a
    50-megapixel photo needs the output plus a few megabytes, not several full-size float
    copies. ``threads`` > 1 converts bands in parallel (numpy releases the GIL). With numba installed
    and ``lab_fast.load()`` called (a batch does), each band is one compiled loop: the same fit, pixel by pixel.
    """
    assert l_full.ndim == 2, l_full.shape
    assert ab_small.ndim == 3 and ab_small.shape[0] == 2, ab_small.shape
    h, w = l_full.shape
    size = ab_small.shape[1]
    out = np.empty((h, w, 3), dtype=np.uint8)  # [H, W, 3]
    if h <= size:  # shrinking rows (tiny photos): PIL's antialiased resize, all at once
        lab = np.empty((h, w, 3), dtype=np.float32)  # [H, W, 3]
        lab[..., 0] = l_full
        lab[..., 1:] = upsample_ab(ab_small, w, h)
        out[:] = lab_to_srgb8_keeping_l(lab)
        return out
    wide = np.stack([resize_plane(ab_small[c], w, size) for c in range(2)])  # [2, S, W]
    if lab_fast.READY:
        l_full = np.ascontiguousarray(l_full, dtype=np.float32)  # the layout the kernel was compiled for
    r0, r1, frac = _row_weights(h, size)
    rows = max(1, _BAND_PIXELS // w)

    def band(top: int) -> None:
        if lab_fast.READY:
            lab_fast.reconstruct_rows(l_full, wide, r0, r1, frac, top, min(top + rows, h), out)
            return
        sl = slice(top, min(top + rows, h))
        f = frac[sl, None]  # [b, 1]
        lab = np.empty((sl.stop - top, w, 3), dtype=np.float32)  # [b, W, 3]
        lab[..., 0] = l_full[sl]
        for c in range(2):
            lab[..., 1 + c] = wide[c, r0[sl]] * (1 - f) + wide[c, r1[sl]] * f  # [b, W]
        out[sl] = lab_to_srgb8_keeping_l(lab)

    tops = range(0, h, rows)
    if threads > 1:
        with ThreadPoolExecutor(threads, thread_name_prefix="langcolor-reconstruct") as pool:
            list(pool.map(band, tops))
    else:
        for top in tops:
            band(top)
    return out
