"""Classical exemplar colour transfer, as evaluation baselines only, and the figures every method gets.

Every method answers the same question: given the full-resolution L of a gray target and a colour
reference (RGB, any size), return ab at the target's size. The evaluation then builds the 8-bit
image a user would get (the target's own L, chroma fitted to the gamut) and reads it back.

- ``reinhard`` (Reinhard et al. 2001): global mean and standard deviation transfer in Lab. The target
  is gray, so its ab has zero spread and the transfer reduces to the reference's mean ab everywhere;
  the target's L is kept (the output must keep the photograph's lightness).
- ``welsh`` (Welsh et al. 2002, global matching): remap the reference's L to the target's mean and
  standard deviation, take about 200 jittered-grid samples, match each target pixel on L and the 5x5
  standard deviation of L with equal weights, and copy the best sample's ab.
"""

from __future__ import annotations

import numpy as np

from langcolor.client.lab import rgb_to_lab

HIST_GRID = 10.0  # Lab units per ab histogram bin (Zhang et al. 2016's grid)
HIST_RANGE = 110.0  # the histogram spans a, b in [-HIST_RANGE, HIST_RANGE]
WELSH_SAMPLES = 200  # reference samples (jittered grid)
WELSH_WINDOW = 5  # neighbourhood side for the local standard deviation, pixels
WELSH_L_WEIGHT = 0.5  # weight of luminance against local std in the match (the paper's 50/50)
_CHUNK = 1 << 15  # target pixels per matching block


def gray(target_l: np.ndarray, ref_rgb: np.ndarray) -> np.ndarray:
    """(a): no colour at all. -> ab [H, W, 2] zeros."""
    return np.zeros((*target_l.shape, 2), np.float32)


def reinhard(target_l: np.ndarray, ref_rgb: np.ndarray) -> np.ndarray:
    """(b): Reinhard 2001 on a gray target: ab = the reference's mean ab. -> [H, W, 2]."""
    ref_ab = rgb_to_lab(ref_rgb)[..., 1:].reshape(-1, 2)  # [N, 2]
    return np.broadcast_to(ref_ab.mean(0), (*target_l.shape, 2)).astype(np.float32).copy()


def box_mean(plane: np.ndarray, window: int) -> np.ndarray:
    """Mean over a ``window`` x ``window`` neighbourhood, edges mirrored (d c b a | a b c d). [H, W] -> [H, W]."""
    assert window % 2 == 1, window
    r = window // 2
    p = np.pad(plane.astype(np.float64), r, mode="symmetric")  # [H+2r, W+2r]
    c = np.pad(p.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # summed-area table with a zero row and column
    h, w = plane.shape
    s = c[window:window + h, window:window + w] - c[:h, window:window + w] - c[window:window + h, :w] + c[:h, :w]
    return s / (window * window)


def local_std(plane: np.ndarray, window: int = WELSH_WINDOW) -> np.ndarray:
    """Standard deviation over a ``window`` x ``window`` neighbourhood (edges mirrored). [H, W] -> [H, W]."""
    mean = box_mean(plane, window)
    sq = box_mean(plane.astype(np.float64) ** 2, window)
    return np.sqrt(np.maximum(sq - mean * mean, 0.0)).astype(np.float32)


def jittered_grid(h: int, w: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """About ``n`` sample positions (rows, cols), one uniformly placed in each cell of a near-square grid."""
    rows = max(1, round(np.sqrt(n * h / w)))
    cols = max(1, round(n / rows))
    y0 = np.floor(np.arange(rows) * h / rows)
    x0 = np.floor(np.arange(cols) * w / cols)
    ys = (y0[:, None] + rng.uniform(0, h / rows, (rows, cols))).astype(int).clip(0, h - 1)
    xs = (x0[None, :] + rng.uniform(0, w / cols, (rows, cols))).astype(int).clip(0, w - 1)
    return ys.ravel(), xs.ravel()


def welsh(target_l: np.ndarray, ref_rgb: np.ndarray, seed: int = 0, samples: int = WELSH_SAMPLES) -> np.ndarray:
    """(c): Welsh 2002 global matching. -> ab [H, W, 2]."""
    ref = rgb_to_lab(ref_rgb)  # [h, w, 3]
    ref_l = ref[..., 0]
    mu_t, sd_t = float(target_l.mean()), float(target_l.std())
    mu_r, sd_r = float(ref_l.mean()), float(ref_l.std())
    ref_l = (ref_l - mu_r) * (sd_t / max(sd_r, 1e-6)) + mu_t  # luminance remapping
    ys, xs = jittered_grid(*ref_l.shape, samples, np.random.default_rng(seed))
    s_l = ref_l[ys, xs]  # [M]
    s_sd = local_std(ref_l)[ys, xs]  # [M]
    s_ab = ref[ys, xs, 1:]  # [M, 2]
    t_l = target_l.reshape(-1).astype(np.float32)  # [N]
    t_sd = local_std(target_l).reshape(-1)  # [N]
    best = np.empty(t_l.shape[0], np.int64)
    for i in range(0, len(t_l), _CHUNK):
        d = WELSH_L_WEIGHT * (t_l[i : i + _CHUNK, None] - s_l[None]) ** 2  # [n, M]
        d += (1.0 - WELSH_L_WEIGHT) * (t_sd[i : i + _CHUNK, None] - s_sd[None]) ** 2
        best[i : i + _CHUNK] = d.argmin(1)
    return s_ab[best].reshape(*target_l.shape, 2).astype(np.float32)


# --- figures -------------------------------------------------------------------------------------


def delta_e(out_ab: np.ndarray, true_ab: np.ndarray) -> float:
    """Mean Euclidean distance in ab (Lab units): dE_ab, with L equal by construction. [..., 2] each."""
    return float(np.sqrt(((out_ab - true_ab) ** 2).sum(-1)).mean())


def ab_histogram(ab: np.ndarray) -> np.ndarray:
    """Normalised 2-D histogram of ab values ``[..., 2]`` on the HIST_GRID grid. -> [n, n] summing to 1."""
    n = int(round(2 * HIST_RANGE / HIST_GRID))
    flat = ab.reshape(-1, 2)
    hist, _, _ = np.histogram2d(flat[:, 0], flat[:, 1], bins=n, range=[[-HIST_RANGE, HIST_RANGE]] * 2)
    return hist / max(hist.sum(), 1.0)


def histogram_intersection(ab_1: np.ndarray, ab_2: np.ndarray) -> float:
    """HIS: the sum of bin-wise minima of the two ab histograms, in [0, 1] (1: the same colours)."""
    return float(np.minimum(ab_histogram(ab_1), ab_histogram(ab_2)).sum())


def colourfulness(rgb8: np.ndarray) -> float:
    """Hasler & Suesstrunk 2003 M on 8-bit RGB (0 for gray; about 55 for the test photos)."""
    rgb = rgb8.reshape(-1, 3).astype(np.float64)
    rg = rgb[:, 0] - rgb[:, 1]
    yb = 0.5 * (rgb[:, 0] + rgb[:, 1]) - rgb[:, 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
