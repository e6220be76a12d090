"""The discretised mixture of logistics over (a*, b*), with the a -> b coupling (Salimans et al. 2017).

Per chroma pixel and per logistic m the network gives: a logit pi_m, means mu_a, mu_b, log-scales
s_a, s_b and a coefficient c_m in [-1, 1]. Values live in [-1, 1] (Lab units / AB_SCALE), split into
``BINS`` bins; b's mean is shifted by c_m times the pixel's a, so one logistic can carry a
correlated (a, b) colour. ``MIX`` holds them in that order, already bounded (``bound``), so the
loss here and the numpy sampler of the driver read the same numbers.

    MIX channels: [logits (M) | mu_a (M) | mu_b (M) | log s_a (M) | log s_b (M) | c (M)]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import BINS

LOG_SCALE_MIN = -7.0  # a logistic narrower than this (e^-7 = 0.1% of the range) is numerically a spike
_PDF_FLOOR = 1e-5  # below this bin mass the density at the bin centre stands in (PixelCNN++'s guard)


def bound(raw: torch.Tensor, mixtures: int) -> torch.Tensor:
    """Raw head output [B,6M,Q,Q] -> MIX: log-scales clamped from below, coefficients through tanh."""
    m = mixtures
    head, log_scales, coeffs = raw[:, : 3 * m], raw[:, 3 * m : 5 * m], raw[:, 5 * m :]
    return torch.cat([head, log_scales.clamp(min=LOG_SCALE_MIN), torch.tanh(coeffs)], 1)


def _log_bin(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, bins: int) -> torch.Tensor:
    """log P(x's bin) under a logistic; the first and last bins reach to -inf and +inf."""
    half = 1.0 / (bins - 1)  # half a bin in [-1, 1] units
    centred = x - mean
    inv = torch.exp(-log_scale)
    plus, minus = inv * (centred + half), inv * (centred - half)
    log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus): the open bottom bin
    log_sf_minus = -F.softplus(minus)  # log(1 - sigmoid(minus)): the open top bin
    mass = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv * centred
    log_pdf_mid = mid - log_scale - 2.0 * F.softplus(mid)  # density at the centre, times the bin width below
    inner = torch.where(mass > _PDF_FLOOR, torch.log(mass.clamp(min=1e-12)), log_pdf_mid - math.log((bins - 1) / 2))
    edge = 1.0 - half
    return torch.where(x < -edge, log_cdf_plus, torch.where(x > edge, log_sf_minus, inner))


def nll(mix: torch.Tensor, target: torch.Tensor, mixtures: int, bins: int = BINS) -> torch.Tensor:
    """Negative log-likelihood in nats per pixel (both channels), [B,Q,Q].

    mix [B,6M,Q,Q] (``bound``ed); target [B,2,Q,Q] in [-1, 1]."""
    m = mixtures
    logits, mu_a, mu_b = mix[:, :m], mix[:, m : 2 * m], mix[:, 2 * m : 3 * m]
    ls_a, ls_b, coeff = mix[:, 3 * m : 4 * m], mix[:, 4 * m : 5 * m], mix[:, 5 * m :]
    a, b = target[:, 0:1], target[:, 1:2]  # [B,1,Q,Q], broadcast over the M logistics
    log_p = _log_bin(a, mu_a, ls_a, bins) + _log_bin(b, mu_b + coeff * a, ls_b, bins)  # [B,M,Q,Q]
    return -torch.logsumexp(log_p + F.log_softmax(logits, 1), 1)


def mode(mix: torch.Tensor, mixtures: int) -> torch.Tensor:
    """The most likely logistic's means, [B,2,Q,Q] in [-1, 1] (temperature 0)."""
    m = mixtures
    k = mix[:, :m].argmax(1, keepdim=True)  # [B,1,Q,Q]
    a = mix[:, m : 2 * m].gather(1, k)
    b = mix[:, 2 * m : 3 * m].gather(1, k) + mix[:, 5 * m :].gather(1, k) * a
    return torch.cat([a, b], 1).clamp(-1.0, 1.0)
