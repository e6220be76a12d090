"""Training of the pixelated semantic colorizer: three losses, balanced, and averaged weights.

    L_sum = w_emb * L_emb + w_seg * L_seg + w_gen * L_gen                              (eq. 6)

- L_gen: the PixelCNN's discretised-logistic-mixture NLL of the true chroma, teacher-forced (the
  true chroma on the canvas), in nats per channel;
- L_emb: the same NLL from f_theta's own per-pixel mixture (no autoregression);
- L_seg: cross-entropy of h_phi against the per-block majority class.

The paper weighs them 1 : 100 : 1 "so that the three losses are similar in magnitude": its
mixture losses are summed over pixels and its segmentation loss is averaged. Here every loss is a
per-pixel mean, so that ratio does not carry over. Measured on this data: L_gen and L_emb start
near log(256) = 5.5 nats and fall to 3-4 within a few hundred steps; L_seg starts at log(6) = 1.8
and sits near 0.6 (the background's share) until the shapes are learnt. What the losses compete
for is the shared trunk: there, L_emb's gradient measured 10-20x L_seg's at equal weights once
training was under way (L_gen's, through the fusion, 5-10x smaller than L_emb's), and with 1 : 2 : 1
the segmentation had not left 0.6 after 300 steps, while the segmentation branch trained alone
reached 0.13. The default 1 : 10 : 1 brings the two trunk gradients to the same order; the model
card gives the loss figures of the shipped run.

The generator is shown the true semantic map (``SEM_OVERRIDE``) instead of the predicted one for
``override_rate`` of the images; for ``relabel_rate`` of those, one instance is relabelled to another
class and its chroma target is recoloured to match. Otherwise the map and the embedding always agree
(both come from the same shape), and nothing makes the generator take its colour from the map
rather than from the embedding; with it, eq. 4's semantic input decides where they disagree. (A run
without it was not made; the override figures of the model card are with it.)

Weights are averaged (an exponential moving average, standing in for the paper's Polyak averaging)
by the family's ``scheduler``, which also decays the learning rate; at the last step the averages
replace the weights, so the shipped file holds them.

Step ``k`` trains on training scenes ``k*B .. (k+1)*B - 1`` of the seed, so a resumed run sees
exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from langcolor.client.lab import AB_SCALE

from . import data, mixture
from .config import CLASSES, SemanticConfig


def make_assets(cfg: SemanticConfig, options) -> dict[str, str]:
    return {}  # no tokenizer, no files: the conditioner only parses numbers


def data_name(options) -> str:
    return "synthetic shapes (semantic classes, gray level independent of class)"


def _relabel(scene: data.Scene, rng: np.random.Generator) -> data.Scene:
    """The scene with one instance given another class, its colour redrawn from that class."""
    k = int(rng.integers(1, len(scene.objects) + 1))
    old = scene.objects[k - 1].cls
    new = int(rng.choice([c for c in range(1, len(CLASSES)) if c != old]))
    mode = int(rng.integers(0, len(data.MODES[new])))
    mask = scene.instance_map == k
    labels, ab = scene.labels.copy(), scene.ab.copy()
    labels[mask] = new
    ab[:, mask] = (data.MODES[new][mode] + rng.normal(0.0, data.AB_JITTER, 2)).astype(np.float32)[:, None]
    objects = tuple(data.Instance(new, mode) if i == k - 1 else o for i, o in enumerate(scene.objects))
    return data.Scene(scene.L, ab, labels, scene.instance_map, objects)


def data_source(cfg: SemanticConfig, conditioner, options) -> Callable[[int], dict[str, torch.Tensor]]:
    """step -> the deterministic batch of that step: L, ab (the truth), seg, and what the generator
    sees: ``override`` (zeros = the prediction) and ``gen_ab`` (its target)."""
    b, q, k = options.batch_size, cfg.chroma_size, cfg.num_classes
    o = options.family_options

    def batch(step: int) -> dict[str, torch.Tensor]:
        scenes = data.make_scenes(options.seed, "train", step * b, b, cfg.image_size)
        arrays = data.stack(scenes, q)  # L [B,1,S,S], ab [B,2,Q,Q], seg [B,Q,Q], instances [B,Q,Q]
        rng = np.random.default_rng([options.seed, 21, step])
        override = np.zeros((b, k, q, q), np.float32)
        gen_ab = arrays["ab"].copy()
        for i, scene in enumerate(scenes):
            if rng.random() >= o.override_rate:
                continue
            if scene.objects and rng.random() < o.relabel_rate:
                scene = _relabel(scene, rng)
                gen_ab[i] = data.block_mean(scene.ab, q)
            override[i] = np.eye(k, dtype=np.float32)[data.block_mode(scene.labels, q, k)].transpose(2, 0, 1)
        out = {"L": arrays["L"], "ab": arrays["ab"], "seg": arrays["seg"], "override": override, "gen_ab": gen_ab}
        return {name: torch.from_numpy(v) for name, v in out.items()}

    return batch


def losses(model, batch: dict[str, torch.Tensor], options) -> dict[str, torch.Tensor]:
    o = options.family_options
    m = model.cfg.mixtures
    out = model(batch["L"], batch["override"], batch["gen_ab"])
    gen = mixture.nll(out["mix"], batch["gen_ab"] / AB_SCALE, m).mean() / 2  # nats per channel
    emb = mixture.nll(out["emb_mix"], batch["ab"] / AB_SCALE, m).mean() / 2
    seg = F.cross_entropy(out["seg_logits"], batch["seg"])
    total = o.emb_weight * emb + o.seg_weight * seg + o.gen_weight * gen
    return {"gen": gen, "emb": emb, "seg": seg, "total": total}


class CosineWithAverage:
    """The learning rate's cosine decay over the run, and an exponential moving average of every
    weight, stepped together after each optimiser step. At the last step the averages are written
    into the weights, so the file saved after it (the shipped one) holds the averaged network.
    Resumable: the averages travel in the checkpoint's scheduler state."""

    def __init__(self, optimizer: torch.optim.Optimizer, steps: int, decay: float):
        self.cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.average = [p.detach().clone() for p in self.params]
        self.steps, self.decay, self.done = steps, decay, 0

    def step(self) -> None:
        self.cosine.step()
        self.done += 1
        # Early on the average would remember the random start: its decay warms up (as TF's EMA does).
        decay = min(self.decay, (1.0 + self.done) / (10.0 + self.done))
        with torch.no_grad():
            for avg, p in zip(self.average, self.params):
                avg.lerp_(p.detach(), 1.0 - decay)
            if self.done == self.steps:
                for avg, p in zip(self.average, self.params):
                    p.copy_(avg)

    def state_dict(self) -> dict:
        return {"cosine": self.cosine.state_dict(), "average": [a.clone() for a in self.average], "done": self.done}

    def load_state_dict(self, state: dict) -> None:
        self.cosine.load_state_dict(state["cosine"])
        for avg, saved in zip(self.average, state["average"]):
            avg.copy_(saved)
        self.done = int(state["done"])


def scheduler(optimizer: torch.optim.Optimizer, options) -> CosineWithAverage:
    return CosineWithAverage(optimizer, options.steps, options.family_options.ema_decay)
