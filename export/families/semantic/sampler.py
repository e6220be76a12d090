"""The raster-order sampling loop: the family's driver, numpy only.

It runs in-process over onnxruntime sessions, in the served Python model over BLS calls to the
stage models, and in export's parity check and the evaluation over the PyTorch stages: the same
code everywhere, so a seed gives the same colours wherever it runs.

Per request: the encoder and the fusion run once (everything that does not depend on the canvas);
then the decoder runs once per chroma pixel, for every image of the batch together, on the rows
that pixel's row depends on (``network.Decoder.forward``), and one (a, b) is drawn at that pixel. Each image draws from its own stream, ``default_rng([seed, STREAM])``,
drawn in full before the loop: batching, and the other images of a batch, change nothing.

A step draws a logistic with the Gumbel-max trick over logits / T, then a from it, then b with
its mean shifted by c * a (the a -> b coupling), both with scales times T. T = 0 takes the most
likely logistic's means.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from langcolor.client.lab import AB_SCALE
from langcolor.client.names import AB
from langcolor.client.spec import ModelGeometry

from .config import AB_CANVAS, COND, MIX, ROW, SEED, SEG, SEG_LOGITS, SEM_OVERRIDE, TEMPERATURE

STREAM = 2  # the second word of every image's RNG key: the sampler's stream (a version tag)
# Uniforms are kept in [U_MIN, 1 - U_MIN]: a logistic draw then lies within +-9.2 of its scale
# (the tails cut off hold 0.02% of the mass). Unbounded tails would let a 1e-6 difference between
# two runtimes in a scale grow ~30x in one draw, and the loop feeds every draw to the next pixel.
U_MIN = 1e-4

CallStage = Callable[[str, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def uniforms(seed: int, pixels: int, mixtures: int) -> np.ndarray:
    """One image's random numbers [pixels, M + 2] in (0, 1): M for the Gumbel draw, 2 for a and b."""
    u = np.random.default_rng([int(seed), STREAM]).random((pixels, mixtures + 2))
    return np.clip(u, U_MIN, 1.0 - U_MIN)


def noise(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Uniforms [..., M+2] -> Gumbel draws [..., M] and standard logistic draws [..., 2]."""
    m = u.shape[-1] - 2
    return -np.log(-np.log(u[..., :m])), np.log(u[..., m:]) - np.log1p(-u[..., m:])


def draw_from_noise(mix: np.ndarray, gumbel: np.ndarray, logistic: np.ndarray, temperature: np.ndarray) -> np.ndarray:
    """One pixel of every image: mix [B,6M] (``mixture.bound``ed), gumbel [B,M], logistic [B,2],
    T [B] -> (a, b) [B,2] in [-1, 1]."""
    n, m = mix.shape[0], mix.shape[1] // 6
    rows = np.arange(n)
    mix = mix.astype(np.float64)
    t = temperature.astype(np.float64)
    hot = t > 0
    score = mix[:, :m] / np.where(hot, t, 1.0)[:, None] + np.where(hot[:, None], gumbel, 0.0)
    k = score.argmax(1)  # [B]: the chosen logistic
    mu_a, mu_b, ls_a, ls_b, coeff = (mix[rows, part * m + k] for part in range(1, 6))
    a = np.clip(mu_a + np.exp(ls_a) * t * logistic[:, 0], -1.0, 1.0)
    b = np.clip(mu_b + coeff * a + np.exp(ls_b) * t * logistic[:, 1], -1.0, 1.0)
    return np.stack([a, b], 1)


def draw(mix: np.ndarray, u: np.ndarray, temperature: np.ndarray) -> np.ndarray:
    """``draw_from_noise`` from uniforms u [B,M+2]."""
    return draw_from_noise(mix, *noise(u), temperature)


def semantic_labels(seg_logits: np.ndarray, override: np.ndarray) -> np.ndarray:
    """The class the fusion conditioned each chroma pixel on: the override's where it has mass
    (``network.semantic_map``), else the predicted one. [B,K,Q,Q] x2 -> int64 [B,Q,Q]."""
    return np.where(override.sum(1) > 0, override.argmax(1), seg_logits.argmax(1)).astype(np.int64)


class Sampler:
    """``Family.driver``: (L, SEED, TEMPERATURE, SEM_OVERRIDE) -> AB [B,2,Q,Q] (Lab units), SEG [B,Q,Q]."""

    def run(self, call_stage: CallStage, feeds: dict, geometry: ModelGeometry) -> dict[str, np.ndarray]:
        """Each image alone, at batch 1, through every stage: onnxruntime's arithmetic differs in the
        last bits between batch 1 and larger batches (the fusion by 2e-7, measured), and a sampler
        turns such a difference into another colour now and then. So an image's colours never
        depend on what it was batched with, in-process or served (where Triton batches requests)."""
        batch = len(feeds[SEED])
        if batch > 1:
            parts = [self.run(call_stage, {k: v[i : i + 1] for k, v in feeds.items()}, geometry) for i in range(batch)]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        feeds.update(call_stage("encoder", feeds))
        feeds.update(call_stage("fusion", feeds))
        return self.sample(call_stage, feeds[COND], feeds[SEED][:, 0], feeds[TEMPERATURE][:, 0]) | {
            SEG: semantic_labels(feeds[SEG_LOGITS], feeds[SEM_OVERRIDE])}

    @staticmethod
    def sample(call_stage: CallStage, cond: np.ndarray, seeds: np.ndarray, temperature: np.ndarray) -> dict:
        """The loop alone, from the fusion's COND [B,·,Q,Q]: one decoder call per chroma pixel."""
        b, q = cond.shape[0], cond.shape[-1]
        canvas = np.zeros((b, 2, q, q), np.float32)  # positions not sampled yet are never read
        gumbel = logistic = None
        for i in range(q):
            row = np.full((b, 1), i, np.int64)
            for j in range(q):
                mix = np.asarray(call_stage("decoder", {COND: cond, AB_CANVAS: canvas, ROW: row})[MIX])[:, :, j]  # [B,6M]
                if gumbel is None:  # every draw of the request, made once: [B,Q*Q,M] and [B,Q*Q,2]
                    gumbel, logistic = noise(np.stack([uniforms(s, q * q, mix.shape[1] // 6) for s in seeds]))
                p = i * q + j
                canvas[:, :, i, j] = draw_from_noise(mix, gumbel[:, p], logistic[:, p], temperature) * AB_SCALE
        return {AB: canvas}
