"""Train a network on synthetic scenes, Adam with cosine decay.

L-CoDe (``family="lcode"``): smooth-L1 on ab + BCE on the OCCM. L-CoIns (``family="lcoins"``):
batches, augmentation and loss from ``lcoins_train`` (smooth-L1 on ab + the counter-colour loss).

Data are drawn on the fly and deterministically: step ``k`` trains on training scenes
``k*B .. (k+1)*B - 1`` of the seed, so a resumed run sees exactly the batches an uninterrupted one
would. ``OUT/checkpoint.pt`` (with optimizer state) is rewritten every ``checkpoint_every`` steps and
at the end; ``OUT/weights.pt`` (weights, config, tokenizer, hash; no optimizer) is the shippable file.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from langcolor.client.spec import PAD_ID
from langcolor.client.tokenizer import CaptionTokenizer

from . import synthetic
from . import lcoins_train
from .checkpoint import build_network, load_checkpoint, save_checkpoint
from .config import FAMILY, LCOINS_FAMILY, LCoDeConfig, get_config
from .lcode import LCoDe, count_parameters

log = logging.getLogger(__name__)

AB_LOSS_UNIT = 10.0  # smooth-L1 (delta = 1) on ab measured in tens of Lab units: quadratic below 10
CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "weights.pt"


@dataclass(frozen=True)
class TrainOptions:
    config: str = "small"
    steps: int = 2400
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    object_weight: float = 4.0  # object pixels count this many times a background pixel in the ab loss
    occm_weight: float = 1.0
    caption_free_rate: float = 0.05  # share of samples trained with an all-padding caption (the baseline)
    vocab_scenes: int = 4000  # the tokenizer's vocabulary comes from this many training captions
    checkpoint_every: int = 200
    coco_images: str | None = None  # train on COCO-Stuff-style data (export/coco.py) instead of synthetic scenes
    coco_captions: str | None = None
    family: str = FAMILY  # "lcode" or "lcoins"
    # L-CoIns only (see lcoins_train):
    instance_rate: float = 0.5  # share of each batch drawn from instance scenes
    augment_rate: float = 0.5  # share of samples given luminance augmentation
    gamma_max: float = 3.0  # gamma in [1, gamma_max] or its inverse (the paper: 5)
    counter_weight: float = -1e-4  # beta of eq. 16; 0 leaves L_ctr out
    warmup_steps: int = 100  # lcoins: linear learning-rate warm-up


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    weights: Path
    steps: int
    seconds: float
    loss: float  # mean total loss over the last 50 steps
    sha256: str


def build_tokenizer(cfg: LCoDeConfig, seed: int, scenes: int) -> CaptionTokenizer:
    captions = synthetic.training_captions(seed, scenes, cfg.image_size, cfg.max_tokens)
    return CaptionTokenizer.train(captions, cfg.max_tokens)


def make_batch(cfg, tokenizer, options: TrainOptions, step: int, coco=None) -> dict[str, torch.Tensor]:
    """The deterministic batch of training step ``step`` (from ``coco`` when given)."""
    b = options.batch_size
    if coco is not None:
        picks = np.random.default_rng([options.seed, 11, step]).integers(0, len(coco), size=b)
        samples = [coco[int(i)] for i in picks]
        arrays = {
            "L": np.stack([x.L for x in samples]),  # [B,1,S,S]
            "ab": np.stack([x.ab for x in samples]),  # [B,2,S,S]
            "objects": np.zeros((b, 1, cfg.image_size, cfg.image_size), np.float32),  # no masks: uniform weight
            "tokens": np.stack([x.tokens for x in samples]),  # [B,T]
            "occm": np.stack([x.occm for x in samples]),  # [B,T,T]
        }
        return {k: torch.from_numpy(v) for k, v in arrays.items()}
    scenes = synthetic.make_scenes(options.seed, "train", step * b, b, cfg.image_size, cfg.max_tokens)
    tokens = tokenizer.encode_batch([s.caption for s in scenes])  # [B,T]
    arrays = synthetic.stack(scenes, tokens, cfg.max_tokens)
    rng = np.random.default_rng([options.seed, 7, step])
    drop = rng.random(b) < options.caption_free_rate  # [B] samples shown without a caption
    arrays["tokens"][drop] = PAD_ID
    arrays["occm"][drop] = 0.0
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def losses(model: LCoDe, batch: dict[str, torch.Tensor], options: TrainOptions) -> dict[str, torch.Tensor]:
    ab, occm_logits, pair_mask = model.forward_train(batch["L"], batch["tokens"])  # [B,2,S,S], [B,T,T]
    weight = 1.0 + (options.object_weight - 1.0) * batch["objects"]  # [B,1,S,S]
    per_pixel = F.smooth_l1_loss(ab / AB_LOSS_UNIT, batch["ab"] / AB_LOSS_UNIT, reduction="none", beta=1.0)
    ab_loss = (per_pixel * weight).sum() / (weight.sum() * 2)
    bce = F.binary_cross_entropy_with_logits(occm_logits, batch["occm"], reduction="none")  # [B,T,T]
    occm_loss = (bce * pair_mask).sum() / pair_mask.sum().clamp(min=1.0)
    return {"ab": ab_loss, "occm": occm_loss, "total": ab_loss + options.occm_weight * occm_loss}


def train(options: TrainOptions, out_dir: str | Path, resume: bool = True, progress: bool = True) -> TrainResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, weights_path = out_dir / CHECKPOINT_FILE, out_dir / WEIGHTS_FILE
    family = options.family
    cfg = get_config(options.config, family)
    if family == LCOINS_FAMILY and (options.coco_images or options.coco_captions):
        from langcolor.client.errors import LangcolorError

        raise LangcolorError("COCO-style data is only wired for the lcode family")
    torch.manual_seed(options.seed)

    start, elapsed = 0, 0.0
    coco = None
    if options.coco_images or options.coco_captions:
        from .coco import CocoCaptions

        coco = CocoCaptions.from_folder(options.coco_images, options.coco_captions, cfg.image_size, cfg.max_tokens)
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        saved = ckpt.meta.get("options", {})
        if saved and saved != asdict(options):
            log.warning("resuming %s with different options: saved %s, now %s", ckpt_path, saved, asdict(options))
        tokenizer, model = ckpt.tokenizer, build_network(ckpt.family, ckpt.config, ckpt.vocab_size)
        if coco is not None:
            coco = CocoCaptions(coco.records, tokenizer, cfg.image_size)
        model.load_state_dict(ckpt.state_dict)
        cfg, start, elapsed = ckpt.config, ckpt.step, float(ckpt.meta.get("train_seconds", 0.0))
        log.info("resuming from %s at step %d", ckpt_path, start)
    else:
        if family == LCOINS_FAMILY:
            tokenizer = lcoins_train.build_tokenizer(cfg, options.seed, options.vocab_scenes)
        else:
            tokenizer = coco.tokenizer if coco is not None else build_tokenizer(cfg, options.seed, options.vocab_scenes)
        model = build_network(family, cfg, tokenizer.vocab_size)
        ckpt = None
    log.info("%s config %s: %d parameters, vocabulary %d", family, cfg.name, count_parameters(model), tokenizer.vocab_size)
    if family == LCOINS_FAMILY:
        batch_fn = lambda step: lcoins_train.make_batch(cfg, tokenizer, options, step)  # noqa: E731
        loss_fn = lcoins_train.losses
    else:
        batch_fn = lambda step: make_batch(cfg, tokenizer, options, step, coco)  # noqa: E731
        loss_fn = losses

    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    if family == LCOINS_FAMILY:  # transformers: linear warm-up, then the same cosine decay
        warm = max(1, min(options.warmup_steps, options.steps // 4))
        decay = max(options.steps - warm, 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: (k + 1) / warm if k < warm else 0.5 * (1 + math.cos(math.pi * min(k - warm, decay) / decay))
        )  # plain floats (math, not numpy): the checkpoint must load with weights_only=True
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(options.steps, 1))
    if ckpt is not None and ckpt.optimizer is not None:
        optimizer.load_state_dict(ckpt.optimizer)
        scheduler.load_state_dict(ckpt.scheduler)
        if "torch_rng" in ckpt.meta:  # dropout masks continue exactly where the interrupted run was
            torch.set_rng_state(ckpt.meta["torch_rng"])

    def meta() -> dict:
        data = "coco" if coco is not None else "synthetic"
        return {"options": asdict(options), "train_seconds": elapsed, "data": data, "seed": options.seed,
                "torch_rng": torch.get_rng_state()}

    recent: list[float] = []
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(start, options.steps), initial=start, total=options.steps, disable=not progress, desc="train")
    for step in bar:
        batch = batch_fn(step)
        parts = loss_fn(model, batch, options)
        optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        scheduler.step()
        recent = (recent + [float(parts["total"].detach())])[-50:]
        bar.set_postfix({k: f"{v.item():.3f}" for k, v in parts.items() if k != "total"})
        done = step + 1
        if done % options.checkpoint_every == 0 or done == options.steps:
            elapsed += time.perf_counter() - t0
            t0 = time.perf_counter()
            save_checkpoint(ckpt_path, model, tokenizer, done, meta(), optimizer, scheduler)
            log.info("step %d: loss %.4f (%s), %.0f s", done, np.mean(recent),
                     ", ".join(f"{k} {v.item():.4f}" for k, v in parts.items() if k != "total"), elapsed)
    elapsed += time.perf_counter() - t0
    model.eval()
    digest = save_checkpoint(weights_path, model, tokenizer, options.steps, meta())
    return TrainResult(ckpt_path, weights_path, options.steps, elapsed, float(np.mean(recent)) if recent else float("nan"), digest)
