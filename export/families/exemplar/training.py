"""Exemplar training: stage 1 automatic, stage 2 with references, on real photos and synthetic scenes.

``langcolor.export.train`` runs the loop; this module supplies the family's pieces. Steps
``0 .. stage1_steps - 1`` are stage 1: the encoder, the bin classifier and the decoder as an
automatic colorizer (no reference, a flat prior; L1 on ab, and the classifier's cross-entropy). The
rest of ``--steps`` is stage 2: the whole network with references, L1 + histogram + sparse losses at
the paper's weights (1000 : 1 : 1, L1 on ab / AB_SCALE). Three terms the paper does not have are on by
default (set their weights to 0 for the paper's losses alone): the bin classifier's cross-entropy
against each cell's true colours (``db_ce_weight``), L1 on the attention's own colour
(``ref_l1_weight``), which supervises the correspondence directly, and the gate's cross-entropy
against whichever module's colour is nearer the truth in each cell (``gate_ce_weight``). Without that
last one the gate saturates on the attention (which is the better source on photos from the first
steps), the sparse loss holds it there, and no gradient reaches the database branch: measured, the
gate's share of the attention stayed at 1.00 even on palette references. The perceptual loss (VGG19
weights) and the PatchGAN are left out: no VGG weights are available offline.

Each batch mixes photo pairs (``pairs.PhotoPairs``) and synthetic pairs (``scenes.training_batch``,
``synthetic_rate`` of the batch). The classifier's cross-entropy skips freely coloured synthetic
scenes (they have no class -> colour prior to learn) and the attention's L1 skips palette references
(a palette shows no shapes to find). Adam with a cosine decay per stage. Step ``k`` draws its batch
from ``default_rng([seed, k])``, so a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from langcolor.client.errors import LangcolorError
from langcolor.client.lab import AB_SCALE

from . import photos, scenes
from .config import ExemplarConfig
from .pairs import PairOptions, PhotoPairs

log = logging.getLogger(__name__)

_LOG_EPS = 1e-8  # inside the gate entropy's log


def make_assets(cfg: ExemplarConfig, options) -> dict[str, str]:
    return {}  # a reference image needs no tokenizer: the conditioner has no files


def data_name(options) -> str:
    o = options.family_options
    if o.synthetic_rate >= 1.0:
        return "synthetic scenes"
    return f"photos ({o.photo_splits}) + {o.synthetic_rate:.0%} synthetic scenes"


def stage_of(step: int, options) -> int:
    return 1 if step < options.family_options.stage1_steps else 2


def prepare(model, options, resumed: bool) -> None:
    """``--init``: a fresh run starts from an earlier run's weights (of the same config)."""
    o = options.family_options
    if not o.init or resumed:
        model._init_applied = bool(o.init)
        return
    from langcolor.export.checkpoint import load_checkpoint

    ckpt = load_checkpoint(o.init)
    if ckpt.family != model.geometry.family:
        raise LangcolorError(f"--init {o.init}: a {ckpt.family} network, not this run's {model.geometry.family}")
    try:
        model.load_state_dict(ckpt.state_dict)  # strict: every tensor present, every shape equal
    except RuntimeError as e:
        raise LangcolorError(f"--init {o.init}: its {ckpt.config.name} weights do not fit a {model.cfg.name} "
                             f"network ({str(e).splitlines()[0]})") from e
    if ckpt.config != model.cfg:
        log.info("--init: same weights, config differs: %s", {k: (v, getattr(model.cfg, k)) for k, v in
                 ckpt.config.to_dict().items() if getattr(model.cfg, k) != v and k != "name"})
    model._init_applied = True
    log.info("initialised from %s (step %d, sha256 %s)", o.init, ckpt.step, ckpt.sha256[:12])


def scheduler(optimizer, options):
    """Cosine decay from ``--lr`` to ``lr * lr_min_ratio`` within each stage."""
    o = options.family_options
    s1, total, floor = o.stage1_steps, options.steps, o.lr_min_ratio

    def factor(step: int) -> float:
        start, length = (0, s1) if step < s1 else (s1, total - s1)
        t = min(1.0, (step - start) / max(length, 1))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def data_source(cfg: ExemplarConfig, conditioner, options) -> Callable[[int], dict[str, torch.Tensor]]:
    """step -> the deterministic batch of that step (photo pairs first, then synthetic pairs)."""
    o = options.family_options
    b = options.batch_size
    n_syn = int(round(o.synthetic_rate * b))
    n_photo = b - n_syn
    pairs = None
    if n_photo:
        if set(o.splits) & {"test"}:
            raise LangcolorError("the test photos are held out: never train on them")
        pairs = PhotoPairs(photos.load_photos(o.splits), PairOptions(image_size=cfg.image_size,
                                                                     joint_hue_rate=o.joint_hue_rate))
        log.info("training photos (%s): %s", o.photo_splits, ", ".join(pairs.names))

    def batch(step: int) -> dict[str, torch.Tensor]:
        stage = stage_of(step, options)
        parts = []
        if n_photo:
            drawn = pairs.batch(np.random.default_rng([options.seed, step]), n_photo, with_reference=stage == 2)
            drawn.update(db=np.ones(n_photo, np.float32), scm=np.ones(n_photo, np.float32))
            parts.append(drawn)
        if n_syn:
            parts.append(scenes.training_batch(options.seed, step, n_syn, cfg.image_size, o.free_rate,
                                               o.palette_rate, with_reference=stage == 2))
        out = {k: torch.from_numpy(np.concatenate([p[k] for p in parts]).astype(np.float32)) for k in parts[0]}
        out["stage"] = torch.tensor(stage)
        return out

    return batch


def cell_targets(model, ab: torch.Tensor) -> torch.Tensor:
    """True ab [B,2,S,S] -> each grid cell's soft bin distribution [B,N,Q] (the classifier's target)."""
    fusion = model.fusion
    g = fusion.cfg.grid
    b, _, s, _ = ab.shape
    k = s // g
    with torch.no_grad():
        cells = ab.reshape(b, 2, g, k, g, k).permute(0, 2, 4, 3, 5, 1).reshape(b * g * g, k * k, 2)  # [B*N,k*k,2]
        d2 = (cells.unsqueeze(2) - fusion.bins).pow(2).sum(-1)  # [B*N,k*k,Q]
        w = torch.softmax(-d2 / (2 * fusion.cfg.hist_sigma**2), -1).mean(1)  # [B*N,Q]
    return w.reshape(b, g * g, -1)  # [B,N,Q]


def _masked_mean(per_sample: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (per_sample * mask).sum() / mask.sum().clamp(min=1.0)


def losses(model, batch: dict[str, torch.Tensor], options) -> dict[str, torch.Tensor]:
    o = options.family_options
    if o.init and not getattr(model, "_init_applied", False):
        raise LangcolorError("--init needs the training loop's prepare hook, which did not run")
    stage = int(batch["stage"])
    if stage == 1:
        out = model.forward_train(batch["L"])
    else:
        out = model.forward_train(batch["L"], batch["ref_L"], batch["ref_ab"])
    ab = batch["ab"]  # [B,2,S,S]
    parts = {"l1": o.l1_weight * (out["ab"] - ab).abs().mean() / AB_SCALE}
    if o.db_ce_weight > 0:
        target = cell_targets(model, ab)  # [B,N,Q]
        ce = -(target * torch.log_softmax(out["db_logits"], -1)).sum(-1).mean(1)  # [B]
        parts["db_ce"] = o.db_ce_weight * _masked_mean(ce, batch["db"])
    if stage == 2:
        pred_hist = model.fusion.soft_histogram(out["ab"])  # [B,Q]
        parts["hist"] = o.hist_weight * (pred_hist - out["ref_hist"]).abs().sum(-1).mean()
        alpha = out["gate"].clamp_min(_LOG_EPS)  # [B,2,G,G]
        parts["sparse"] = o.sparse_weight * -(alpha * alpha.log()).sum(1).mean()
        pooled = F.avg_pool2d(ab, model.cfg.image_size // model.cfg.grid)  # [B,2,G,G] the truth on the grid
        err_ref = (out["c_ref"] - pooled).abs().mean(1)  # [B,G,G]
        if o.ref_l1_weight > 0:
            parts["ref_l1"] = o.ref_l1_weight * _masked_mean(err_ref.mean((1, 2)) / AB_SCALE, batch["scm"])
        if o.gate_ce_weight > 0:
            # Which module's colour is nearer the truth in each cell; the gate learns to pick it. The
            # log-loss keeps a gradient where the softmax has saturated on the wrong module.
            err_db = (out["c_db"] - pooled).abs().mean(1)  # [B,G,G]
            use_ref = (err_ref <= err_db).float().detach()  # [B,G,G]
            ce = -(use_ref * alpha[:, 0].log() + (1 - use_ref) * alpha[:, 1].log())  # [B,G,G]
            parts["gate_ce"] = o.gate_ce_weight * ce.mean()
    parts["total"] = sum(parts.values())
    return parts
