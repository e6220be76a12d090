"""Full-resolution reconstruction: the output keeps the input's size and lightness."""

import numpy as np
import pytest
import skimage.data

from langcolor.client import lab_fast
from langcolor.client.lab import rgb_to_lab
from langcolor.client.reconstruct import prepare_l, reconstruct, upsample_ab

S = 64


def _rounding_bound() -> float:
    """Largest L change that rounding each sRGB channel to 8 bits can cause.

    Rounding moves each channel by at most 0.5/255. L depends on luminance Y only, Y is a positive
    mix of the linearised channels, and moving all three channels the same way at a gray is the
    worst case (measured over every gray level below), about 0.26 L units near L = 9.
    """
    v = np.linspace(0, 1 - 0.5 / 255, 200_001)
    gray = np.repeat(v[:, None], 3, axis=1)
    return float((rgb_to_lab(gray + 0.5 / 255)[:, 0] - rgb_to_lab(gray)[:, 0]).max())


BOUND = _rounding_bound() + 0.01  # + float32 arithmetic and the gamut bisection's 1e-4 chroma slack


@pytest.fixture(params=["numpy", "compiled"])
def kernel(request, monkeypatch):
    """Each reconstruct test on both paths: numpy blocks, and the numba kernel where it is installed."""
    if request.param == "compiled" and not lab_fast.load():
        pytest.skip("numba is not installed (pip install 'langcolor[fast]') or LANGCOLOR_NO_NUMBA=1")
    monkeypatch.setattr(lab_fast, "READY", request.param == "compiled")
    return request.param


def _l_of(rgb_u8):
    return rgb_to_lab(rgb_u8 / 255.0)[..., 0]


def test_rounding_bound_is_sub_unit():
    assert 0.2 < BOUND < 0.3


@pytest.mark.parametrize(
    "h,w",
    [(301, 457), (457, 301), (63, 65), (S, S), (17, 9), (1, 1), (2, 511)],  # odd, portrait, landscape, tiny
)
def test_output_keeps_size_and_l_rgb(h, w, kernel):
    rgb = skimage.data.astronaut()[:h, :w] / 255.0  # real photo, cropped to odd sizes
    rng = np.random.default_rng(h * 1000 + w)
    l_full, l_small = prepare_l(rgb, S)
    assert l_full.shape == (h, w) and l_small.shape == (1, S, S)
    assert l_full.dtype == np.float32 and l_small.dtype == np.float32
    ab = rng.uniform(-110, 110, (2, S, S)).astype(np.float32)  # saturated: many colours out of gamut
    out = reconstruct(l_full, ab)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    assert np.abs(_l_of(out) - rgb_to_lab(rgb)[..., 0]).max() <= BOUND


def test_output_keeps_l_grayscale_photo(kernel):
    gray = skimage.data.camera() / 255.0  # [512, 512] uint8 grayscale
    rgb = np.repeat(gray[..., None], 3, axis=2)[:511, :383]
    l_full, l_small = prepare_l(rgb, S)
    ab = np.stack([np.full((S, S), 40.0), np.linspace(-60, 60, S * S).reshape(S, S)]).astype(np.float32)
    out = reconstruct(l_full, ab)
    assert np.abs(_l_of(out) - l_full).max() <= BOUND
    lab = rgb_to_lab(out / 255.0)
    assert lab[..., 1].mean() > 10  # the colour really was added
    # detail is the input's, not the 64x64 network resolution: high-frequency energy survives
    assert np.abs(np.diff(_l_of(out), axis=1)).mean() > 0.9 * np.abs(np.diff(l_full, axis=1)).mean()


def test_compiled_kernel_matches_numpy_path(monkeypatch):
    """The numba kernel is the numpy fit pixel by pixel: within one 8-bit level, and almost everywhere equal."""
    if not lab_fast.load():
        pytest.skip("numba is not installed (pip install 'langcolor[fast]') or LANGCOLOR_NO_NUMBA=1")
    rgb = skimage.data.coffee()  # [400, 600, 3] uint8
    l_full, _ = prepare_l(rgb, S)
    ab = np.random.default_rng(3).uniform(-110, 110, (2, S, S)).astype(np.float32)  # a third or more out of gamut
    out = {}
    for ready in (False, True):
        monkeypatch.setattr(lab_fast, "READY", ready)
        out[ready] = reconstruct(l_full, ab, threads=2).astype(int)
    diff = np.abs(out[True] - out[False])
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_small_l_is_antialiased_resize_of_l():
    rgb = skimage.data.astronaut() / 255.0  # 512x512 -> 64x64: an 8x reduction
    l_full, l_small = prepare_l(rgb, S)
    box = l_full.reshape(S, 8, S, 8).mean(axis=(1, 3))  # area average, the ideal antialiased result
    assert np.abs(l_small[0] - box).mean() < 1.5
    point = l_full[4::8, 4::8]  # nearest-neighbour sampling aliases the texture
    assert np.abs(l_small[0] - box).mean() < np.abs(point - box).mean()
    assert 0.0 <= l_small.min() and l_small.max() <= 100.0


def test_upsample_ab_is_bilinear_and_exact_on_constants():
    ab = np.stack([np.full((S, S), 12.5), np.full((S, S), -30.0)]).astype(np.float32)
    up = upsample_ab(ab, 333, 211)
    assert up.shape == (211, 333, 2)
    assert np.allclose(up[..., 0], 12.5, atol=1e-4) and np.allclose(up[..., 1], -30.0, atol=1e-4)
    ramp = np.stack([np.tile(np.arange(S, dtype=np.float32), (S, 1))] * 2)  # a over x: linear
    up = upsample_ab(ramp, 4 * S, S)[..., 0]
    inner = up[:, 4:-4]  # away from the clamped borders, bilinear reproduces a linear ramp
    assert np.allclose(np.diff(inner, axis=1), 0.25, atol=1e-4)


def _smooth_ab(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:S, :S] / S
    return np.stack([70 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(4 * yy), 90 * np.cos(5 * yy + 3 * xx)]).astype(np.float32)


@pytest.mark.parametrize("h,w", [(301, 457), (1200, 97), (S + 1, S)])
def test_banded_reconstruct_matches_whole_image_conversion(h, w):
    """The row bands (ab rows interpolated by hand) give what PIL's 2-D bilinear resize of the
    whole ab plane followed by one conversion gives, within one level where rounding is at x.5."""
    from langcolor.client.lab import lab_to_srgb8_keeping_l

    rgb = skimage.data.coffee()[:h, :w] / 255.0 if h <= 400 else np.resize(skimage.data.coffee(), (h, w, 3)) / 255.0
    l_full, _ = prepare_l(rgb, S)
    ab = _smooth_ab(h)
    lab = np.concatenate([l_full[..., None], upsample_ab(ab, w, h)], axis=-1)  # [H, W, 3]
    whole = lab_to_srgb8_keeping_l(lab).astype(int)
    banded = reconstruct(l_full, ab).astype(int)
    assert np.abs(banded - whole).max() <= 1 and (banded != whole).mean() < 1e-3
    assert np.array_equal(reconstruct(l_full, ab, threads=3), reconstruct(l_full, ab))  # threads change nothing


def test_reconstruct_memory_is_the_output_plus_a_band():
    """A 3-megapixel reconstruct allocates its uint8 output and a few small bands, not full-size
    float copies (one such copy of Lab alone would be 36 MB)."""
    import tracemalloc

    h, w = 1500, 2000
    l_full = np.tile(np.linspace(0, 100, w, dtype=np.float32), (h, 1))  # [H, W]
    ab = _smooth_ab(1)
    reconstruct(l_full[:200], ab)  # build the lazily computed tables outside the measurement
    tracemalloc.start()
    out = reconstruct(l_full, ab)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.shape == (h, w, 3)
    assert peak < out.nbytes + 12e6, peak / 1e6
