"""sRGB <-> CIELab: agreement with scikit-image, round trip, gamut fitting that keeps L."""

import warnings

import numpy as np
import pytest
import skimage.color
import skimage.data

from langcolor.client.lab import (
    fit_chroma_to_gamut, lab_to_rgb, lab_to_rgb_keeping_l, rgb8_to_l, rgb_to_l, rgb_to_lab,
)


def test_rgb_to_lab_matches_skimage_on_random_colours():
    rgb = np.random.default_rng(0).random((200_000, 3))
    ours = rgb_to_lab(rgb)
    assert ours.dtype == np.float32 and ours.shape == rgb.shape
    assert np.abs(ours - skimage.color.rgb2lab(rgb)).max() < 0.01


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_rgb_to_lab_matches_skimage_on_photos(name):
    rgb = getattr(skimage.data, name)() / 255.0  # [H, W, 3]
    assert np.abs(rgb_to_lab(rgb) - skimage.color.rgb2lab(rgb)).max() < 0.01


def test_extremes_and_dark_toe():
    # black, white, primaries and values under the sRGB and CIE linear toes
    rgb = np.array([[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.01, 0.02, 0.03], [0.04, 0.04, 0.04]])
    lab = rgb_to_lab(rgb)
    assert np.abs(lab - skimage.color.rgb2lab(rgb)).max() < 0.01
    assert abs(lab[0, 0]) < 1e-4 and abs(lab[1, 0] - 100) < 1e-3 and np.abs(lab[1, 1:]).max() < 1e-2


def test_lab_to_rgb_matches_skimage_in_gamut():
    rgb = np.random.default_rng(1).random((50_000, 3))
    lab = skimage.color.rgb2lab(rgb)
    assert np.abs(lab_to_rgb(lab) - skimage.color.lab2rgb(lab)).max() < 1e-4


def test_round_trip_within_one_level():
    rng = np.random.default_rng(2)
    rgb = rng.random((100_000, 3))
    assert np.abs(lab_to_rgb(rgb_to_lab(rgb)) - rgb).max() < 1 / 255
    levels = rng.integers(0, 256, (100_000, 3)).astype(np.uint8)
    back = np.round(lab_to_rgb(rgb_to_lab(levels / 255.0)) * 255).astype(np.uint8)
    assert np.array_equal(back, levels)  # every 8-bit colour survives exactly


def test_shapes_are_preserved_and_bad_shapes_rejected():
    rgb = np.random.default_rng(3).random((4, 5, 6, 3))
    assert rgb_to_lab(rgb).shape == (4, 5, 6, 3)
    with pytest.raises(ValueError):
        rgb_to_lab(np.zeros((4, 4)))


def test_fit_chroma_keeps_l_and_hue_and_lands_in_gamut():
    rng = np.random.default_rng(4)
    n = 50_000
    lab = np.column_stack([rng.uniform(0, 100, n), rng.uniform(-110, 110, (n, 2))])
    fitted = fit_chroma_to_gamut(lab)
    assert np.abs(fitted[:, 0] - lab[:, 0]).max() < 1e-4  # L kept
    hue_in, hue_out = np.arctan2(lab[:, 2], lab[:, 1]), np.arctan2(fitted[:, 2], fitted[:, 1])
    moved = np.hypot(fitted[:, 1], fitted[:, 2]) > 1.0
    assert np.abs(np.angle(np.exp(1j * (hue_in - hue_out)))[moved]).max() < 1e-3  # hue kept
    # displayable: converting back does not need clipping, so L survives the trip through RGB
    assert np.abs(rgb_to_lab(lab_to_rgb(fitted))[:, 0] - lab[:, 0]).max() < 0.01
    # plain clipping, by contrast, moves L a lot for saturated colours (why the fitting exists)
    assert np.abs(rgb_to_lab(lab_to_rgb(lab))[:, 0] - lab[:, 0]).max() > 5
    # in-gamut colours are left alone
    inside = skimage.color.rgb2lab(rng.random((1000, 3)))
    assert np.abs(fit_chroma_to_gamut(inside) - inside).max() < 1e-4


def test_l_only_and_one_pass_variants_agree():
    rng = np.random.default_rng(5)
    rgb = rng.random((300, 200, 3))
    assert np.abs(rgb_to_l(rgb) - rgb_to_lab(rgb)[..., 0]).max() < 1e-4
    lab = np.stack([rng.uniform(0, 100, (300, 200)), *rng.uniform(-110, 110, (2, 300, 200))], axis=-1)
    assert np.abs(lab_to_rgb_keeping_l(lab) - lab_to_rgb(fit_chroma_to_gamut(lab))).max() < 1e-6


def test_l_of_8_bit_pixels_matches_the_float_path_for_every_colour():
    """The table path of 8-bit photos against the float path, on all 2^24 colours, and against scikit-image."""
    levels = np.arange(256, dtype=np.uint8)
    for r in range(0, 256, 32):  # 8 slabs of 2^21 colours: every colour, bounded memory
        rgb8 = np.stack(np.meshgrid(levels[r : r + 32], levels, levels, indexing="ij"), axis=-1)  # [32, 256, 256, 3]
        assert np.abs(rgb8_to_l(rgb8) - rgb_to_l(rgb8 / np.float32(255.0))).max() < 1e-4
    photo = skimage.data.astronaut()
    assert np.abs(rgb8_to_l(photo) - skimage.color.rgb2lab(photo)[..., 0]).max() < 0.01
    with pytest.raises(ValueError):
        rgb8_to_l(photo / 255.0)


def _linear_rgb_skimage(lab: np.ndarray) -> np.ndarray:
    """Lab -> linear sRGB, unclipped, from scikit-image's own pieces (an independent reference)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "negative Z values clipped": as ours does
        return skimage.color.lab2xyz(lab) @ skimage.color.colorconv.rgb_from_xyz.T


def _boundary_scale(lab: np.ndarray, tol: float) -> np.ndarray:
    """Largest scale of (a, b) that stays displayable, by a 40-step float64 bisection."""
    lo, hi = np.zeros(len(lab)), np.ones(len(lab))
    for _ in range(40):
        mid = (lo + hi) / 2
        lin = _linear_rgb_skimage(np.column_stack([lab[:, 0], lab[:, 1:] * mid[:, None]]))
        inside = (lin.min(axis=1) >= -tol) & (lin.max(axis=1) <= 1 + tol)
        lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
    return lo


def test_fitted_chroma_is_displayable_and_at_the_boundary():
    """The table + Newton fit against a fine bisection: in gamut, and no chroma given away.

    Stated accuracy: the median colour within 0.1% of the boundary chroma, 99% within 1%. (The
    tail is a few colours near L 95-99 where a channel runs tangent to its limit along the ray.)
    """
    rng = np.random.default_rng(6)
    n = 100_000
    lab = np.column_stack([rng.uniform(1, 99, n), rng.uniform(-120, 120, (n, 2))])
    tol = 1e-4  # scikit-image's matrix maps its own D65 white to linear 1 + 7e-5; float32 slack
    lin = _linear_rgb_skimage(lab)
    out = (lin.min(axis=1) < -tol) | (lin.max(axis=1) > 1 + tol)
    assert out.mean() > 0.5  # the test is about colours that need fitting
    lab = lab[out]
    fitted = fit_chroma_to_gamut(lab).astype(np.float64)
    lin = _linear_rgb_skimage(fitted)
    assert lin.min() >= -tol and lin.max() <= 1 + tol  # displayable: nothing left for clipping to shift L
    boundary = np.hypot(lab[:, 1], lab[:, 2]) * _boundary_scale(lab, 1e-5)  # chroma at the limit
    got = np.hypot(fitted[:, 1], fitted[:, 2])
    seen = boundary > 2.0  # relative shortfall means little for near-grays
    shortfall = (boundary - got)[seen] / boundary[seen]
    assert np.median(shortfall) < 1e-3, np.median(shortfall)
    assert np.percentile(shortfall, 99) < 1e-2, np.percentile(shortfall, 99)


def test_srgb8_output_matches_float_rounding_and_keeps_every_level():
    from langcolor.client.lab import lab_to_srgb8_keeping_l

    rng = np.random.default_rng(7)
    lab = np.column_stack([rng.uniform(0, 100, 200_000), rng.uniform(-110, 110, (200_000, 2))])
    u8 = lab_to_srgb8_keeping_l(lab)
    assert u8.dtype == np.uint8 and u8.shape == lab.shape
    exact = np.round(lab_to_rgb_keeping_l(lab) * 255.0)
    diff = np.abs(u8 - exact)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # only values within a hair of x.5 may differ
    levels = rng.integers(0, 256, (200_000, 3)).astype(np.uint8)
    assert np.array_equal(lab_to_srgb8_keeping_l(rgb_to_lab(levels / 255.0)), levels)  # every 8-bit colour survives
