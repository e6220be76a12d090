"""Reconstruction one pixel at a time, compiled with numba when it is installed (``pip install
'langcolor[fast]'``); ``reconstruct`` keeps to the numpy path of ``lab.py`` until ``load()`` is called.

The numpy path works on whole blocks: every colour is converted, the out-of-gamut share is gathered,
guessed from the chroma table, converted again, stepped, converted a third time and scattered back,
each pass a full array. Here each pixel does the same steps (the same table guess, bisection of a
rejected guess, Newton step towards the nearest channel bound, exact check, bisection of an
overshoot) in registers, in float64, and only the colours outside sRGB pay for the fit. The result
is the numpy path's to within one 8-bit level (tests/test_reconstruct.py), with L kept the same way.
The kernel releases the GIL, so ``reconstruct(threads=N)`` runs bands truly in parallel.

Opt-in, because loading costs: importing numba and loading the cached kernel took 1.2-1.6 s a process
on a shared 2-core machine (compiling it the first time 5-7 s, once per installation). A batch pays
that once and gains 3.3-4x on every reconstruct; one ``colorize`` would not, so it does not call ``load``.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from . import lab as _lab

log = logging.getLogger(__name__)

DISABLE_ENV = "LANGCOLOR_NO_NUMBA"  # set to 1: the numpy path even where numba is installed
READY = False  # set by load(): reconstruct uses the compiled kernel (tests and benchmarks switch it)
_COMPILED = False  # the functions below have been replaced by their compiled versions

_EPS_F = _lab._F_EPSILON
_KAPPA = _lab._KAPPA_SLOPE
_OFFSET = _lab._F_OFFSET
_TOL = _lab._GAMUT_TOL
_MARGIN = _lab._LUT_MARGIN
_SHRINK = _lab._NEWTON_SHRINK
_LUT_L, _LUT_HUE = _lab._LUT_L, _lab._LUT_HUE
_STEPS8 = _lab._SRGB8_STEPS
_TWO_PI = 2.0 * math.pi


def _finv(f):  # CIE's inverse companding
    return f * f * f if f > _EPS_F else (f - _OFFSET) / _KAPPA


def _slope(f):  # d finv / d f
    return 3.0 * f * f if f > _EPS_F else 1.0 / _KAPPA


def _linear(fy, a, b, s, m):  # Lab with (a, b) * s -> linear RGB (r, g, b), unclipped
    x = _finv(fy + s * a / 500.0)
    y = _finv(fy)
    z = _finv(max(fy - s * b / 200.0, 0.0))  # as scikit-image: negative z is clipped
    return (x * m[0, 0] + y * m[1, 0] + z * m[2, 0], x * m[0, 1] + y * m[1, 1] + z * m[2, 1],
            x * m[0, 2] + y * m[1, 2] + z * m[2, 2])


def _inside(rgb):
    return min(rgb[0], rgb[1], rgb[2]) >= -_TOL and max(rgb[0], rgb[1], rgb[2]) <= 1.0 + _TOL


def _bisect(fy, a, b, lo, hi, steps, m):  # lo inside, hi outside -> (inside scale, its linear RGB)
    for _ in range(steps):
        mid = (lo + hi) / 2.0
        if _inside(_linear(fy, a, b, mid, m)):
            lo = mid
        else:
            hi = mid
    return lo, _linear(fy, a, b, lo, m)


def _pixel(l, a, b, m, lut):  # one Lab colour -> linear RGB with the chroma fitted, L kept
    l = min(max(l, 0.0), 100.0)
    fy = (l + 16.0) / 116.0
    rgb = _linear(fy, a, b, 1.0, m)
    if _inside(rgb):
        return rgb
    chroma = math.hypot(a, b)  # > 0: grays are always inside
    li = l * ((_LUT_L - 1) / 100.0)
    hi = (math.atan2(b, a) % _TWO_PI) * (_LUT_HUE / _TWO_PI)
    l0 = min(int(li), _LUT_L - 2)
    h0 = min(int(hi), _LUT_HUE - 1)
    wl, wh = li - l0, hi - h0
    top = lut[l0, h0] * (1.0 - wh) + lut[l0, h0 + 1] * wh
    bottom = lut[l0 + 1, h0] * (1.0 - wh) + lut[l0 + 1, h0 + 1] * wh
    limit = top * (1.0 - wl) + bottom * wl
    s = min(1.0, limit * (1.0 - _MARGIN) / max(chroma, 1e-6))
    rgb = _linear(fy, a, b, s, m)
    if not _inside(rgb) and s > 0.0:
        s, rgb = _bisect(fy, a, b, 0.0, s, 12, m)
    # Newton: each linear channel linearised in the scale, the nearest bound taken.
    d_x = _slope(fy + s * a / 500.0) * a / 500.0
    f_z = fy - s * b / 200.0
    d_z = -_slope(f_z) * b / 200.0 if f_z > 0.0 else 0.0
    nearest = math.inf
    for c in range(3):
        d = d_x * m[0, c] + d_z * m[2, c]
        if d > 0.0:
            nearest = min(nearest, (1.0 - rgb[c]) / d)
        elif d < 0.0:
            nearest = min(nearest, -rgb[c] / d)
    target = min(1.0, s + max(nearest, 0.0) * (1.0 - _SHRINK))
    if target > s:
        moved = _linear(fy, a, b, target, m)
        if _inside(moved):
            return moved
        return _bisect(fy, a, b, s, target, 6, m)[1]
    return rgb


def _rows(l_full, wide, r0, r1, frac, top, stop, m, lut, srgb8, out):
    """Rows ``top:stop``: ab interpolated between two rows of ``wide`` ([2, S, W]), the photo's L."""
    w = l_full.shape[1]
    for y in range(top, stop):
        f = frac[y]
        a0, a1, b0, b1 = wide[0, r0[y]], wide[0, r1[y]], wide[1, r0[y]], wide[1, r1[y]]
        for x in range(w):
            rgb = _pixel(l_full[y, x], a0[x] * (1.0 - f) + a1[x] * f, b0[x] * (1.0 - f) + b1[x] * f, m, lut)
            for c in range(3):
                v = min(max(rgb[c], 0.0), 1.0)
                out[y, x, c] = srgb8[int(math.sqrt(v) * _STEPS8 + 0.5)]


# Reciprocals and contraction allowed; not "no infinities" (the Newton step compares against inf)
# nor "no NaNs". Every colour is still checked exactly against the gamut before it is used.
_FASTMATH = {"arcp", "contract", "afn", "reassoc", "nsz"}


def load() -> bool:
    """Compile (or load from the cache) the kernel; True when reconstruct now uses it, False
    where numba is not installed or ``LANGCOLOR_NO_NUMBA=1``."""
    global READY, _COMPILED, _finv, _slope, _linear, _inside, _bisect, _pixel, _rows
    if os.environ.get(DISABLE_ENV) == "1":
        return False
    if _COMPILED:
        READY = True
        return True
    try:
        import numba
    except ImportError:
        return False

    def jit(fn):
        try:
            return numba.njit(cache=True, nogil=True, inline="always", fastmath=_FASTMATH)(fn)
        except RuntimeError:  # no writable cache location: compile in each process instead
            return numba.njit(nogil=True, inline="always", fastmath=_FASTMATH)(fn)

    # The helpers first: the kernels find the compiled ones under these module names when they compile.
    _finv, _slope, _linear, _inside, _bisect, _pixel = (jit(f) for f in (_finv, _slope, _linear, _inside, _bisect, _pixel))
    _rows = jit(_rows)
    one = np.zeros((1, 1), np.float32)
    _rows(one, np.zeros((2, 1, 1), np.float32), np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.float32),
          0, 1, _MATRIX, _lab._chroma_lut(), _lab._SRGB8, np.empty((1, 1, 3), np.uint8))  # compile now, not mid-run
    READY = _COMPILED = True
    log.debug("compiled reconstruct kernel ready (numba %s)", numba.__version__)
    return True


_MATRIX = _lab._RGB_FROM_XYZN_T.astype(np.float64)  # (X, Y, Z) / white @ this = linear RGB


def reconstruct_rows(l_full: np.ndarray, wide: np.ndarray, r0: np.ndarray, r1: np.ndarray, frac: np.ndarray,
                     top: int, stop: int, out: np.ndarray) -> None:
    """Fill ``out[top:stop]`` (uint8 [H, W, 3]) from L ``[H, W]`` and ab stretched to full width
    ``[2, S, W]`` with the row taps of ``reconstruct._row_weights``."""
    assert READY, "lab_fast.load() first"
    _rows(l_full, wide, r0, r1, frac, top, stop, _MATRIX, _lab._chroma_lut(), _lab._SRGB8, out)
