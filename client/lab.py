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


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELab ``[..., 3]`` -> sRGB float32 in [0, 1]; out-of-gamut colours are clipped per channel.

    Clipping changes L for out-of-gamut colours; use ``fit_chroma_to_gamut`` first where L must
    be kept (``reconstruct`` does).
    """
    return _blockwise(_lab_to_rgb_block, lab)


def _in_gamut(lab: np.ndarray, tol: float) -> np.ndarray:  # (N, 3) -> (N,) bool
    lin = _lab_to_linear_block(lab)
    return (lin.min(axis=1) >= -tol) & (lin.max(axis=1) <= 1.0 + tol)


def _fit_block(lab: np.ndarray, steps: int = 10, tol: float = 1e-5) -> np.ndarray:
    """Scale (a, b) of out-of-gamut colours towards 0 by bisection, keeping L and hue.

    (L, 0, 0) is a gray and always inside the sRGB gamut for L in [0, 100], so the bisection has a
    valid lower end; 10 halvings leave the chroma within 0.1% (< 0.11 Lab units) of the boundary.
    """
    lab = lab.copy()
    lab[:, 0] = np.clip(lab[:, 0], 0.0, L_MAX)
    out = ~_in_gamut(lab, tol)
    if not out.any():
        return lab
    sub = lab[out]  # (M, 3)
    lo = np.zeros(len(sub), dtype=np.float32)  # known inside
    hi = np.ones(len(sub), dtype=np.float32)  # known outside
    for _ in range(steps):
        mid = (lo + hi) / 2
        inside = _in_gamut(np.column_stack([sub[:, 0], sub[:, 1:] * mid[:, None]]), tol)
        lo = np.where(inside, mid, lo)
        hi = np.where(inside, hi, mid)
    sub[:, 1:] *= lo[:, None]
    lab[out] = sub
    return lab


def fit_chroma_to_gamut(lab: np.ndarray) -> np.ndarray:
    """CIELab ``[..., 3]`` -> the same L and hue with chroma reduced until the colour is displayable.

    L is clipped to [0, 100] and otherwise kept exactly, which is what lets the colorized output keep
    the input photograph's lightness: per-channel RGB clipping would darken or lighten saturated
    colours by several L units.
    """
    return _blockwise(_fit_block, lab)


def lab_to_rgb_keeping_l(lab: np.ndarray) -> np.ndarray:
    """``lab_to_rgb(fit_chroma_to_gamut(lab))`` in one pass over the pixels."""
    return _blockwise(lambda block: _lab_to_rgb_block(_fit_block(block)), lab)
