"""CIELab constants and sRGB (D65) <-> CIELab conversion in numpy.

Every normalisation constant of the product is named here once. Networks take L in [0, 100] and
return ab in Lab units; they normalise internally with these constants.

The conversion follows scikit-image's ``rgb2lab``/``lab2rgb`` (sRGB transfer curve, the same RGB->XYZ
matrix, D65 white with the 2 degree observer, CIE's linear toe below epsilon) so that both agree to
well under 0.01 Lab units. It works on any ``[..., 3]`` array in float32 (errors ~1e-4 Lab units, far
below the 0.01 target and 8-bit quantisation) and in chunks of ``_CHUNK`` pixels, so a 50-megapixel
photo needs no gigabytes of temporaries and the working set stays in cache.
"""

from __future__ import annotations

import functools

import numpy as np

L_MAX = 100.0  # CIE L* of white
L_CENTER = 50.0  # the network sees (L - L_CENTER) / L_SCALE, in [-1, 1]
L_SCALE = 50.0
AB_SCALE = 110.0  # the decoder's tanh output times AB_SCALE gives a*, b* in Lab units

# Linear sRGB -> XYZ (D65), as in scikit-image (and IEC 61966-2-1 to 4 digits).
_XYZ_FROM_RGB = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])  # XYZ of the reference white, Y = 1
# The same matrices folded with the white point, as float32 for the per-pixel work.
_XYZN_FROM_RGB_T = (_XYZ_FROM_RGB / _WHITE_D65[:, None]).T.astype(np.float32)  # rgb @ this = XYZ / white
_RGB_FROM_XYZN_T = (_RGB_FROM_XYZ * _WHITE_D65[None, :]).T.astype(np.float32)  # (XYZ / white) @ this = rgb
_Y_FROM_RGB = _XYZ_FROM_RGB[1].astype(np.float32)  # luminance weights (white Y = 1)

_EPSILON = 0.008856  # CIE: below this Y/Yn the cube root is replaced by a line
_KAPPA_SLOPE = 7.787  # slope of that line in f(t)
_F_OFFSET = 16.0 / 116.0
_F_EPSILON = 0.2068966  # f(_EPSILON): the same break point on the inverse side

_CHUNK = 1 << 16  # pixels per working block

_GAMUT_TOL = 1e-5  # linear RGB slack when testing "displayable" (float32 rounding)
_LUT_L, _LUT_HUE = 201, 360  # gamut table: L every 0.5 unit, hue every degree (290 kB)
_LUT_C_HIGH = 150.0  # above every sRGB chroma (the maximum, blue near L 32, is ~134)
_LUT_MARGIN = 0.005  # the table's chroma is shrunk by this fraction before the exact check
_NEWTON_SHRINK = 1e-3  # the Newton step is shortened by this fraction, so float error rarely overshoots
_SRGB8_STEPS = 1 << 16  # sqrt(linear) -> uint8 table size


def _pow(base: np.ndarray, exponent: float) -> np.ndarray:
    # exp(log()) is SIMD-vectorised in numpy and ~8x faster than float32 ** on x86; the toe
    # branches overwrite the values near 0, so the floor only avoids log(0) warnings.
    return np.exp(exponent * np.log(np.maximum(base, 1e-12)))


def _srgb_to_linear(v: np.ndarray) -> np.ndarray:
    toe = v <= 0.04045
    out = _pow((v + 0.055) / 1.055, 2.4)
    out[toe] = v[toe] / 12.92
    return out


def _linear_to_srgb(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.0, None)  # clip first: a negative base under ** (1/2.4) would be NaN
    toe = v <= 0.0031308
    out = 1.055 * _pow(v, 1 / 2.4) - 0.055
    out[toe] = 12.92 * v[toe]
    return out


def _f(t: np.ndarray) -> np.ndarray:  # CIE's companding of X/Xn, Y/Yn, Z/Zn
    out = np.cbrt(t)
    toe = t <= _EPSILON
    out[toe] = _KAPPA_SLOPE * t[toe] + _F_OFFSET
    return out


def _f_inverse(f: np.ndarray) -> np.ndarray:
    out = f * f * f
    toe = f <= _F_EPSILON
    out[toe] = (f[toe] - _F_OFFSET) / _KAPPA_SLOPE
    return out


def _rgb_to_lab_block(rgb: np.ndarray) -> np.ndarray:  # (N, 3) float32 in [0, 1]
    f = _f(_srgb_to_linear(rgb) @ _XYZN_FROM_RGB_T)  # (N, 3): f(X/Xn), f(Y/Yn), f(Z/Zn)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=1)  # (N, 3)


def _lab_to_linear_block(lab: np.ndarray) -> np.ndarray:  # (N, 3) -> linear RGB (N, 3), unclipped
    f = np.empty_like(lab)  # (N, 3)
    f[:, 1] = (lab[:, 0] + 16.0) / 116.0
    f[:, 0] = f[:, 1] + lab[:, 1] / 500.0
    f[:, 2] = np.clip(f[:, 1] - lab[:, 2] / 200.0, 0.0, None)  # as scikit-image: negative z is clipped
    return _f_inverse(f) @ _RGB_FROM_XYZN_T


def _lab_to_rgb_block(lab: np.ndarray) -> np.ndarray:  # (N, 3) float32
    return np.clip(_linear_to_srgb(_lab_to_linear_block(lab)), 0.0, 1.0)


def _blockwise(fn, x: np.ndarray, width: int = 3) -> np.ndarray:
    x = np.asarray(x)
    if x.shape[-1:] != (3,):
        raise ValueError(f"expected an array of shape [..., 3], got {x.shape}")
    flat = x.reshape(-1, 3)
    out = np.empty((len(flat), width), dtype=np.float32)
    for i in range(0, len(flat), _CHUNK):
        out[i : i + _CHUNK] = fn(flat[i : i + _CHUNK].astype(np.float32)).reshape(-1, width)
    return out.reshape(*x.shape[:-1], width) if width != 3 else out.reshape(x.shape)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1], shape ``[..., 3]`` -> CIELab float32 (L in [0, 100], a/b in Lab units)."""
    return _blockwise(_rgb_to_lab_block, rgb)


def rgb_to_l(rgb: np.ndarray) -> np.ndarray:
    """sRGB ``[..., 3]`` -> CIE L ``[...]`` float32: the L of ``rgb_to_lab`` at a third of the cost."""

    def block(rgb: np.ndarray) -> np.ndarray:  # (N, 3) -> (N,)
        return 116.0 * _f(_srgb_to_linear(rgb) @ _Y_FROM_RGB) - 16.0

    return _blockwise(block, rgb, width=1)[..., 0]


@functools.lru_cache(maxsize=1)
def _y_of_level() -> np.ndarray:
    """(3, 256) float32: each 8-bit sRGB level's share of luminance Y, per channel (R, G, B)."""
    levels = np.arange(256, dtype=np.float32) / np.float32(255.0)  # the same values as uint8 / 255 in float32
    return np.ascontiguousarray(_Y_FROM_RGB[:, None] * _srgb_to_linear(levels)[None, :], dtype=np.float32)


def rgb8_to_l(rgb8: np.ndarray) -> np.ndarray:
    """sRGB uint8 ``[..., 3]`` -> CIE L ``[...]`` float32, as ``rgb_to_l(rgb8 / 255)`` (within 1e-4 L units).

    An 8-bit channel has 256 values, so its linearised share of Y is a table lookup: no float RGB
    copy of the photo, no power function per pixel, only the cube root of Y."""
    if rgb8.dtype != np.uint8 or rgb8.shape[-1:] != (3,):
        raise ValueError(f"expected uint8 [..., 3], got {rgb8.dtype} {rgb8.shape}")
    table = _y_of_level()
    flat = rgb8.reshape(-1, 3)
    out = np.empty(len(flat), dtype=np.float32)
    for i in range(0, len(flat), _CHUNK):
        block = flat[i : i + _CHUNK]
        y = table[0][block[:, 0]]  # (N,)
        y += table[1][block[:, 1]]
        y += table[2][block[:, 2]]
        out[i : i + _CHUNK] = 116.0 * _f(y) - 16.0
    return out.reshape(rgb8.shape[:-1])


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELab ``[..., 3]`` -> sRGB float32 in [0, 1]; out-of-gamut colours are clipped per channel.

    Clipping changes L for out-of-gamut colours; use ``fit_chroma_to_gamut`` first where L must
    be kept (``reconstruct`` does).
    """
    return _blockwise(_lab_to_rgb_block, lab)


def _in_gamut(lin: np.ndarray, tol: float = _GAMUT_TOL) -> np.ndarray:  # linear RGB (N, 3) -> (N,) bool
    # Column by column: numpy's min/max over a length-3 axis is several times slower.
    r, g, b = lin[:, 0], lin[:, 1], lin[:, 2]
    low = np.minimum(np.minimum(r, g), b)
    high = np.maximum(np.maximum(r, g), b)
    return (low >= -tol) & (high <= 1.0 + tol)


@functools.lru_cache(maxsize=1)
def _chroma_lut() -> np.ndarray:
    """C_max[L, hue]: the largest chroma sRGB shows at that lightness and hue, float32 (_LUT_L, _LUT_HUE + 1).

    Built once on first use by a 16-step float32 bisection per grid point (~40 ms, paid by the
    first reconstruct of a process); it only guides the fit, which checks every colour exactly.
    The last column repeats the first so that interpolation wraps around the hue circle.
    """
    lightness = np.linspace(0.0, L_MAX, _LUT_L, dtype=np.float32)
    hue = np.arange(_LUT_HUE, dtype=np.float32) * np.float32(2 * np.pi / _LUT_HUE)
    grid_l, grid_h = (g.ravel() for g in np.meshgrid(lightness, hue, indexing="ij"))
    cos_h, sin_h = np.cos(grid_h), np.sin(grid_h)
    lo, hi = np.zeros_like(grid_l), np.full_like(grid_l, _LUT_C_HIGH)  # gray is inside; 150 is outside sRGB
    for _ in range(16):  # 150 / 2^16: 0.002 chroma units
        mid = (lo + hi) / 2
        inside = _in_gamut(_lab_to_linear_block(np.column_stack([grid_l, mid * cos_h, mid * sin_h])), 0.0)  # (N,)
        lo = np.where(inside, mid, lo)
        hi = np.where(inside, hi, mid)
    table = lo.reshape(_LUT_L, _LUT_HUE)
    return np.ascontiguousarray(np.concatenate([table, table[:, :1]], axis=1), dtype=np.float32)


def _chroma_limit(lab: np.ndarray) -> np.ndarray:  # (M, 3) -> (M,) C_max, bilinear in (L, hue)
    table = _chroma_lut()
    li = lab[:, 0] * np.float32((_LUT_L - 1) / L_MAX)  # fractional row
    hi = (np.arctan2(lab[:, 2], lab[:, 1]) % np.float32(2 * np.pi)) * np.float32(_LUT_HUE / (2 * np.pi))
    l0 = np.minimum(li.astype(np.int32), _LUT_L - 2)
    h0 = np.minimum(hi.astype(np.int32), _LUT_HUE - 1)
    wl, wh = li - l0, hi - h0
    flat, row = table.ravel(), _LUT_HUE + 1
    i00 = l0 * row + h0
    top = flat[i00] * (1 - wh) + flat[i00 + 1] * wh
    bottom = flat[i00 + row] * (1 - wh) + flat[i00 + row + 1] * wh
    return top * (1 - wl) + bottom * wl


def _fit_scale(lab: np.ndarray, steps: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-gamut (M, 3), L in [0, 100] -> (scale (M,) for (a, b), linear RGB (M, 3) of the scaled colour).

    1. Guess: the C_max table, shrunk by ``_LUT_MARGIN`` so that interpolation between grid points
       almost never lands outside; an exact check follows, and the few guesses it rejects (sharp
       corners of the gamut between grid points) are bisected on [0, guess].
    2. Refine: one Newton step towards the nearest channel bound (each linear channel is a cubic in
       the scale, its derivative known in closed form), checked exactly; a rejected step (0.1%)
       is bisected between the verified scale and the step.
    Every returned colour is verified displayable; its chroma is within 0.01% of the boundary for
    the median colour and 0.5% at the 99th percentile (tests/test_lab.py measures it against a
    fine bisection). That is two or three conversions per colour instead of eleven.
    """
    chroma = np.hypot(lab[:, 1], lab[:, 2])  # (M,) > 0: grays are always inside
    scale = np.minimum(1.0, _chroma_limit(lab) * np.float32(1.0 - _LUT_MARGIN) / np.maximum(chroma, 1e-6))
    scale = scale.astype(np.float32)
    lin = _lab_to_linear_block(_scaled(lab, scale))
    # The guess is outside: bisect between the gray and the guess. Not where the guess is the gray
    # itself: L = 100 maps to linear 1 + 7e-5 with scikit-image's matrix, and clipping handles it.
    bad = ~_in_gamut(lin) & (scale > 0)
    if bad.any():
        scale[bad], lin[bad] = _bisect(lab[bad], np.zeros(int(bad.sum()), np.float32), scale[bad], steps)
    step = _newton_step(lab, scale, lin)
    target = np.minimum(1.0, scale + step).astype(np.float32)
    moved = target > scale
    sub = lab[moved]
    lin_new = _lab_to_linear_block(_scaled(sub, target[moved]))
    ok = _in_gamut(lin_new)
    where = np.flatnonzero(moved)
    scale[where[ok]], lin[where[ok]] = target[where[ok]], lin_new[ok]
    over = where[~ok]
    if len(over):  # the step went too far: the boundary lies between the two
        scale[over], lin[over] = _bisect(lab[over], scale[over], target[over], steps // 2)
    return scale, lin


def _newton_step(lab: np.ndarray, scale: np.ndarray, lin: np.ndarray) -> np.ndarray:
    """(M, 3) Lab, (M,) inside scale, (M, 3) its linear RGB -> (M,) step to the nearest channel bound,
    by linearising each channel in the scale (shrunk by ``_NEWTON_SHRINK`` against float error)."""
    f_y = (lab[:, 0] + 16.0) / 116.0
    f_x = f_y + scale * lab[:, 1] / 500.0
    f_z = f_y - scale * lab[:, 2] / 200.0

    def slope(f):  # d f^-1 / d f: 3 f^2 on the cube branch, the line's slope on the toe
        return np.where(f > _F_EPSILON, 3.0 * f * f, 1.0 / _KAPPA_SLOPE).astype(np.float32)

    d_x = slope(f_x) * lab[:, 1] / 500.0  # (M,) dX/dscale (X / Xn)
    d_z = np.where(f_z > 0.0, -slope(f_z) * lab[:, 2] / 200.0, 0.0)  # Z is clipped at f_z = 0
    d_lin = d_x[:, None] * _RGB_FROM_XYZN_T[0] + d_z[:, None] * _RGB_FROM_XYZN_T[2]  # (M, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(d_lin > 0, (1.0 - lin) / d_lin, np.where(d_lin < 0, -lin / d_lin, np.inf))  # (M, 3)
    nearest = np.minimum(np.minimum(room[:, 0], room[:, 1]), room[:, 2])  # (M,)
    return np.maximum(nearest, 0.0) * np.float32(1.0 - _NEWTON_SHRINK)


def _bisect(lab: np.ndarray, lo: np.ndarray, hi: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Scales with ``lo`` inside and ``hi`` outside -> (inside scale within (hi - lo) / 2^steps, its linear RGB)."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        inside = _in_gamut(_lab_to_linear_block(_scaled(lab, mid)))
        lo = np.where(inside, mid, lo)
        hi = np.where(inside, hi, mid)
    return lo, _lab_to_linear_block(_scaled(lab, lo))


def _scaled(lab: np.ndarray, scale: np.ndarray) -> np.ndarray:  # (M, 3), (M,) -> (M, 3) with ab * scale
    out = lab.copy()
    out[:, 1:] *= scale[:, None]
    return out


def _fit_linear_block(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) -> (Lab with chroma fitted (N, 3), its linear RGB (N, 3)): one conversion for the
    colours already inside, about two for the others."""
    lab = lab.copy()
    np.clip(lab[:, 0], 0.0, L_MAX, out=lab[:, 0])
    lin = _lab_to_linear_block(lab)
    out = ~_in_gamut(lin)
    if out.any():
        sub = lab[out]  # (M, 3)
        scale, lin[out] = _fit_scale(sub)
        sub[:, 1:] *= scale[:, None]
        lab[out] = sub
    return lab, lin


def _fit_block(lab: np.ndarray) -> np.ndarray:
    return _fit_linear_block(lab)[0]


def _srgb8_lut() -> np.ndarray:
    """uint8 sRGB level for each of ``_SRGB8_STEPS + 1`` points evenly spaced in sqrt(linear).

    In the sqrt domain the sRGB curve's slope is at most ~1.5, so a table of 2^16 steps is off
    the exact rounding by at most 0.006 of a level: a gather instead of a log and an exp per channel.
    """
    s = np.arange(_SRGB8_STEPS + 1, dtype=np.float64) / _SRGB8_STEPS
    return np.round(_linear_to_srgb(s * s) * 255.0).astype(np.uint8)


_SRGB8 = _srgb8_lut()


def _linear_to_srgb8(lin: np.ndarray) -> np.ndarray:  # linear (N, 3) -> uint8 (N, 3), clipped
    idx = np.sqrt(np.clip(lin, 0.0, 1.0)) * np.float32(_SRGB8_STEPS) + np.float32(0.5)
    return _SRGB8[idx.astype(np.int32)]


def fit_chroma_to_gamut(lab: np.ndarray) -> np.ndarray:
    """CIELab ``[..., 3]`` -> the same L and hue with chroma reduced until the colour is displayable.

    L is clipped to [0, 100] and otherwise kept exactly, which is what lets the colorized output keep
    the input photograph's lightness: per-channel RGB clipping would darken or lighten saturated
    colours by several L units.
    """
    return _blockwise(_fit_block, lab)


def lab_to_rgb_keeping_l(lab: np.ndarray) -> np.ndarray:
    """``lab_to_rgb(fit_chroma_to_gamut(lab))`` in one pass over the pixels."""
    return _blockwise(lambda block: np.clip(_linear_to_srgb(_fit_linear_block(block)[1]), 0.0, 1.0), lab)


def lab_to_srgb8_keeping_l(lab: np.ndarray) -> np.ndarray:
    """CIELab ``[..., 3]`` -> sRGB uint8 ``[..., 3]``, chroma fitted to the gamut (L kept), rounded.

    What ``reconstruct`` needs, without a float RGB image in between.
    """
    lab = np.asarray(lab)
    if lab.shape[-1:] != (3,):
        raise ValueError(f"expected an array of shape [..., 3], got {lab.shape}")
    flat = lab.reshape(-1, 3)
    out = np.empty(flat.shape, dtype=np.uint8)
    for i in range(0, len(flat), _CHUNK):
        out[i : i + _CHUNK] = _linear_to_srgb8(_fit_linear_block(flat[i : i + _CHUNK].astype(np.float32))[1])
    return out.reshape(lab.shape)


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """RGB ``[..., 3]`` in [0, 1] -> HSV ``[..., 3]`` in [0, 1] (hue as a fraction of a turn).

    The same arithmetic as ``matplotlib.colors.rgb_to_hsv``, so that training needs no plotting library."""
    arr = np.asarray(rgb)
    arr = arr.astype(np.promote_types(arr.dtype, np.float32), copy=False)
    out = np.zeros_like(arr)
    arr_max = arr.max(-1)
    delta = np.ptp(arr, -1)
    s = np.zeros_like(delta)
    pos = arr_max > 0
    s[pos] = delta[pos] / arr_max[pos]
    chroma = delta > 0
    for channel, offset, (x, y) in ((0, 0.0, (1, 2)), (1, 2.0, (2, 0)), (2, 4.0, (0, 1))):
        idx = (arr[..., channel] == arr_max) & chroma  # later channels win ties, as in matplotlib
        out[idx, 0] = offset + (arr[idx, x] - arr[idx, y]) / delta[idx]
    out[..., 0] = (out[..., 0] / 6.0) % 1.0
    out[..., 1] = s
    out[..., 2] = arr_max
    return out


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """HSV ``[..., 3]`` in [0, 1] -> RGB ``[..., 3]``; the inverse of ``rgb_to_hsv`` (matplotlib's arithmetic)."""
    arr = np.asarray(hsv)
    arr = arr.astype(np.promote_types(arr.dtype, np.float32), copy=False)
    h, s, v = arr[..., 0], arr[..., 1], arr[..., 2]
    i = (h * 6.0).astype(int)
    f = h * 6.0 - i
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    r, g, b = np.empty_like(h), np.empty_like(h), np.empty_like(h)
    for sector, (rr, gg, bb) in enumerate(((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))):
        idx = (i % 6 == 0) if sector == 0 else (i == sector)
        r[idx], g[idx], b[idx] = rr[idx], gg[idx], bb[idx]
    gray = s == 0
    r[gray], g[gray], b[gray] = v[gray], v[gray], v[gray]
    return np.stack([r, g, b], axis=-1)
