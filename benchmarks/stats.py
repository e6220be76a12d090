"""Latency statistics: percentiles, throughput and a stability verdict, and the loop that collects them.

A run is *stable* when two checks agree that more repetitions would not move the figures:
- the p50 of the first half of the samples and of the second half differ by at most
  ``MAX_HALF_DRIFT`` (catches drift: a neighbour starting a job, thermal or frequency changes);
- the interquartile range is at most ``MAX_REL_IQR`` of the median (catches a bimodal series, where
  the median sits between two modes and means nothing; a coefficient of variation is reported too,
  but it is dominated by a few outliers, which the p99 is there to show).

``measure`` warms up, then repeats in rounds until the run is stable (at least ``min_repeats``) or
the time budget or ``max_repeats`` is spent; an unstable run is returned flagged, never hidden.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

MAX_HALF_DRIFT = 0.10  # |p50(first half) - p50(second half)| / p50 above this: unstable
MAX_REL_IQR = 0.25  # (p75 - p25) / p50 above this: unstable (bimodal or very noisy)
MIN_SAMPLES_FOR_VERDICT = 6


def percentile(samples, q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), ``q`` in [0, 100]."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    assert x.size > 0, "no samples"
    assert 0.0 <= q <= 100.0, q
    pos = (x.size - 1) * q / 100.0
    lo = int(np.floor(pos))
    hi = min(lo + 1, x.size - 1)
    return float(x[lo] + (x[hi] - x[lo]) * (pos - lo))


@dataclass(frozen=True)
class Stability:
    stable: bool
    cv: float  # std / mean
    rel_iqr: float  # (p75 - p25) / p50
    half_drift: float  # |p50 first half - p50 second half| / p50
    reason: str  # "" when stable


def stability(samples) -> Stability:
    x = np.asarray(samples, dtype=np.float64)
    if x.size < MIN_SAMPLES_FOR_VERDICT:
        return Stability(False, float("nan"), float("nan"), float("nan"), f"only {x.size} samples")
    p50 = percentile(x, 50)
    cv = float(x.std() / x.mean()) if x.mean() > 0 else float("inf")
    rel_iqr = (percentile(x, 75) - percentile(x, 25)) / p50 if p50 > 0 else float("inf")
    half = x.size // 2
    drift = abs(percentile(x[:half], 50) - percentile(x[half:], 50)) / p50 if p50 > 0 else float("inf")
    reasons = []
    if drift > MAX_HALF_DRIFT:
        reasons.append(f"p50 drifts {drift:.0%} between halves")
    if rel_iqr > MAX_REL_IQR:
        reasons.append(f"IQR is {rel_iqr:.0%} of p50")
    return Stability(not reasons, cv, float(rel_iqr), float(drift), "; ".join(reasons))


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency (ms) over ``n`` calls of ``batch`` images each, ``concurrency`` callers at once."""

    n: int
    batch: int
    concurrency: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput: float  # images/s
    wall_s: float
    stable: bool
    cv: float
    rel_iqr: float
    half_drift: float
    unstable_reason: str

    def to_dict(self) -> dict:
        """JSON-ready: floats rounded, NaN (a figure that does not apply) as None."""
        return {k: (None if v != v else round(v, 4)) if isinstance(v, float) else v for k, v in asdict(self).items()}


def summarize(latencies_s, batch: int, concurrency: int = 1, wall_s: float | None = None) -> LatencyStats:
    """Percentiles of per-call latencies (seconds in, ms out). Throughput is images per wall-clock
    second: ``n * batch / wall_s`` (for one caller, ``wall_s`` defaults to the sum of latencies)."""
    x = np.asarray(latencies_s, dtype=np.float64)
    wall = float(x.sum()) if wall_s is None else float(wall_s)
    st = stability(x)
    ms = x * 1e3
    return LatencyStats(
        n=int(x.size),
        batch=int(batch),
        concurrency=int(concurrency),
        p50_ms=percentile(ms, 50),
        p95_ms=percentile(ms, 95),
        p99_ms=percentile(ms, 99),
        mean_ms=float(ms.mean()),
        min_ms=float(ms.min()),
        throughput=x.size * batch / wall if wall > 0 else float("nan"),
        wall_s=wall,
        stable=st.stable,
        cv=st.cv,
        rel_iqr=st.rel_iqr,
        half_drift=st.half_drift,
        unstable_reason=st.reason,
    )


@dataclass(frozen=True)
class Budget:
    """How long to measure one point: warm-up calls, then rounds until stable or out of budget."""

    warmup: int = 3
    min_repeats: int = 20
    max_repeats: int = 400
    max_seconds: float = 10.0
    round_size: int = 10

    def scaled(self, factor: float) -> "Budget":
        return Budget(self.warmup, self.min_repeats, self.max_repeats, self.max_seconds * factor, self.round_size)


QUICK = Budget(warmup=2, min_repeats=12, max_repeats=200, max_seconds=6.0, round_size=6)
FULL = Budget(warmup=3, min_repeats=20, max_repeats=1000, max_seconds=8.0, round_size=10)


def measure(call: Callable[[], object], batch: int, budget: Budget) -> LatencyStats:
    """Time ``call`` (one call = ``batch`` images) sequentially until the percentiles are stable.

    Slow calls (a 12-megapixel photo, a batch of 16 on the full network) shrink the rounds so the
    time budget holds, but never below ``MIN_SAMPLES_FOR_VERDICT`` samples unless a hard cap of
    three budgets is reached; the verdict then says how few samples there were.
    """
    t0 = time.perf_counter()
    call()  # first warm-up call, timed to size the rounds
    first = time.perf_counter() - t0
    for _ in range(budget.warmup - 1 if first < 0.5 else 0):
        call()
    round_size = max(2, min(budget.round_size, int(budget.max_seconds / max(first, 1e-6) / 4)))
    samples: list[float] = []
    t_start = time.perf_counter()
    while True:
        for _ in range(round_size):
            t0 = time.perf_counter()
            call()
            samples.append(time.perf_counter() - t0)
        spent = time.perf_counter() - t_start
        if len(samples) >= budget.max_repeats or spent >= 3 * budget.max_seconds:
            break
        if spent >= budget.max_seconds and len(samples) >= MIN_SAMPLES_FOR_VERDICT:
            break
        if len(samples) >= budget.min_repeats and stability(samples).stable:
            break
    return summarize(samples, batch)
