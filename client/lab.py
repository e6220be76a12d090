"""CIELab constants and sRGB (D65) <-> CIELab conversion in numpy.

Every normalisation constant of the product is named here once. Networks take L in [0, 100] and
return ab in Lab units; they normalise internally with these constants.

The conversion follows scikit-image's ``rgb2lab``/``lab2rgb`` (sRGB transfer curve, the same RGB->XYZ
matrix, D65 white with the 2 degree observer, CIE's linear toe below epsilon) so that both agree to
well under 0.01 Lab units. It works on any ``[..., 3]`` array, in float64 chunks of ``_CHUNK`` pixels
so a 50-megapixel photo does not need gigabytes of float64 temporaries, and returns float32.
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

_EPSILON = 0.008856  # CIE: below this Y/Yn the cube root is replaced by a line
_KAPPA_SLOPE = 7.787  # slope of that line in f(t)
_F_OFFSET = 16.0 / 116.0
_F_EPSILON = 0.2068966  # f(_EPSILON): the same break point on the inverse side

_CHUNK = 1 << 20  # pixels per float64 working block


def _srgb_to_linear(v: np.ndarray) -> np.ndarray:
    return np.where(v > 0.04045, ((v + 0.055) / 1.055) ** 2.4, v / 12.92)


def _linear_to_srgb(v: np.ndarray) -> np.ndarray:
    # clip first: a negative base under ** (1/2.4) would be NaN
    v = np.clip(v, 0.0, None)
    return np.where(v > 0.0031308, 1.055 * v ** (1 / 2.4) - 0.055, 12.92 * v)


def _rgb_to_lab_block(rgb: np.ndarray) -> np.ndarray:  # (N, 3) float64 in [0, 1]
    xyz = _srgb_to_linear(rgb) @ _XYZ_FROM_RGB.T / _WHITE_D65  # (N, 3), white = 1
    f = np.where(xyz > _EPSILON, np.cbrt(xyz), _KAPPA_SLOPE * xyz + _F_OFFSET)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=1)  # (N, 3)


def _lab_to_linear_block(lab: np.ndarray) -> np.ndarray:  # (N, 3) -> linear RGB (N, 3), unclipped
    fy = (lab[:, 0] + 16.0) / 116.0
    fx = fy + lab[:, 1] / 500.0
    fz = np.clip(fy - lab[:, 2] / 200.0, 0.0, None)  # as scikit-image: negative z is clipped
    f = np.stack([fx, fy, fz], axis=1)  # (N, 3)
    xyz = np.where(f > _F_EPSILON, f**3, (f - _F_OFFSET) / _KAPPA_SLOPE) * _WHITE_D65
    return xyz @ _RGB_FROM_XYZ.T


def _lab_to_rgb_block(lab: np.ndarray) -> np.ndarray:  # (N, 3) float64
    return np.clip(_linear_to_srgb(_lab_to_linear_block(lab)), 0.0, 1.0)


def _blockwise(fn, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.shape[-1:] != (3,):
        raise ValueError(f"expected an array of shape [..., 3], got {x.shape}")
    flat = x.reshape(-1, 3)
    out = np.empty(flat.shape, dtype=np.float32)
    for i in range(0, len(flat), _CHUNK):
        out[i : i + _CHUNK] = fn(flat[i : i + _CHUNK].astype(np.float64))
    return out.reshape(x.shape)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1], shape ``[..., 3]`` -> CIELab float32 (L in [0, 100], a/b in Lab units)."""
    return _blockwise(_rgb_to_lab_block, rgb)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELab ``[..., 3]`` -> sRGB float32 in [0, 1]; out-of-gamut colours are clipped per channel.

    Clipping changes L for out-of-gamut colours; use ``fit_chroma_to_gamut`` first where L must
    be kept (``reconstruct`` does).
    """
    return _blockwise(_lab_to_rgb_block, lab)


def _in_gamut(lab: np.ndarray, tol: float) -> np.ndarray:  # (N, 3) -> (N,) bool
    lin = _lab_to_linear_block(lab)
    return np.all((lin >= -tol) & (lin <= 1.0 + tol), axis=1)


def _fit_block(lab: np.ndarray, steps: int = 14, tol: float = 1e-6) -> np.ndarray:
    """Scale (a, b) of out-of-gamut colours towards 0 by bisection, keeping L and hue.

    (L, 0, 0) is a gray and always inside the sRGB gamut for L in [0, 100], so the bisection has a
    valid lower end; 14 halvings leave the chroma within 1e-4 of the gamut boundary.
    """
    lab = lab.copy()
    lab[:, 0] = np.clip(lab[:, 0], 0.0, L_MAX)
    out = ~_in_gamut(lab, tol)
    if not out.any():
        return lab
    sub = lab[out]  # (M, 3)
    lo = np.zeros(len(sub))  # known inside
    hi = np.ones(len(sub))  # known outside
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
