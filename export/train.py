"""Train any registered family: Adam, the family's batches and losses, resumable checkpoints.

The loop is the same for every family; the family's ``training`` module supplies:

- (in the family record) ``training_options``: a frozen dataclass of its own knobs (``langcolor
  train`` makes a flag of each field);
- ``make_assets(cfg, options) -> {file: text}``: what its conditioner needs (a tokenizer, or nothing);
- ``data_source(cfg, conditioner, options) -> step -> batch``: deterministic batches, so a resumed
  run sees exactly the batches an uninterrupted one would;
- ``losses(model, batch, options) -> {name: tensor, "total": ...}``;
- optionally ``scheduler(optimizer, options)`` (default: cosine decay over all steps),
  ``data_name(options)`` (recorded in the checkpoint's provenance) and ``prepare(model, options,
  resumed)``, called once the network is built (and, when resuming, loaded), before the optimizer
  exists: e.g. to start a fresh run from an earlier stage's weights, or to keep parts fixed.

``OUT/checkpoint.pt`` (with optimizer state) is rewritten every ``checkpoint_every`` steps and at the
end; ``OUT/weights.pt`` (weights, config, assets, hash; no optimizer) is the shippable file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from langcolor.client import families
from langcolor.client.families import DEFAULT_FAMILY

from .checkpoint import encoded_assets, load_checkpoint, save_checkpoint
from .layers import count_parameters

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "weights.pt"
GRAD_CLIP = 5.0  # global gradient-norm clip, every family


@dataclass(frozen=True)
class TrainOptions:
    config: str = "small"
    steps: int = 2400
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    checkpoint_every: int = 200
    family: str = DEFAULT_FAMILY
    family_options: Any = None  # the family's TrainingOptions; None = its defaults

    def __post_init__(self) -> None:
        options = families.get(self.family).training_options
        if self.family_options is None and options is not None:
            object.__setattr__(self, "family_options", options())


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    weights: Path
    steps: int
    seconds: float
    loss: float  # mean total loss over the last 50 steps
    sha256: str
    parameters: int = 0
    extra: dict = field(default_factory=dict)


def train(options: TrainOptions, out_dir: str | Path, resume: bool = True, progress: bool = True) -> TrainResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, weights_path = out_dir / CHECKPOINT_FILE, out_dir / WEIGHTS_FILE
    family = families.get(options.family)
    recipe = family.training()
    cfg = family.config(options.config)
    torch.manual_seed(options.seed)

    start, elapsed, ckpt = 0, 0.0, None
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        saved = ckpt.meta.get("options", {})
        if saved and saved != asdict(options):
            log.warning("resuming %s with different options: saved %s, now %s", ckpt_path, saved, asdict(options))
        cfg, assets, start = ckpt.config, ckpt.assets, ckpt.step
        elapsed = float(ckpt.meta.get("train_seconds", 0.0))
        log.info("resuming from %s at step %d", ckpt_path, start)
    else:
        assets = recipe.make_assets(cfg, options)
    geometry = family.geometry(cfg, encoded_assets(assets))
    conditioner = family.conditioner(geometry, encoded_assets(assets))
    model = family.network().build(cfg, geometry)
    if ckpt is not None:
        model.load_state_dict(ckpt.state_dict)
    prepare = getattr(recipe, "prepare", None)
    if prepare is not None:
        prepare(model, options, resumed=ckpt is not None)
    log.info("%s config %s: %d parameters", family.name, cfg.name, count_parameters(model))
    batch_fn = recipe.data_source(cfg, conditioner, options)

    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    make_scheduler = getattr(recipe, "scheduler", None)
    if make_scheduler is not None:
        scheduler = make_scheduler(optimizer, options)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(options.steps, 1))
    if ckpt is not None and ckpt.optimizer is not None:
        optimizer.load_state_dict(ckpt.optimizer)
        scheduler.load_state_dict(ckpt.scheduler)
        if "torch_rng" in ckpt.meta:  # dropout masks continue exactly where the interrupted run was
            torch.set_rng_state(ckpt.meta["torch_rng"])

    data = recipe.data_name(options) if hasattr(recipe, "data_name") else "synthetic"

    def meta() -> dict:
        return {"options": asdict(options), "train_seconds": elapsed, "data": data, "seed": options.seed,
                "torch_rng": torch.get_rng_state()}

    recent: list[float] = []
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(start, options.steps), initial=start, total=options.steps, disable=not progress, desc="train")
    for step in bar:
        batch = batch_fn(step)
        parts = recipe.losses(model, batch, options)
        optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        scheduler.step()
        recent = (recent + [float(parts["total"].detach())])[-50:]
        bar.set_postfix({k: f"{v.item():.3f}" for k, v in parts.items() if k != "total"})
        done = step + 1
        if done % options.checkpoint_every == 0 or done == options.steps:
            elapsed += time.perf_counter() - t0
            t0 = time.perf_counter()
            save_checkpoint(ckpt_path, model, assets, done, meta(), optimizer, scheduler)
            log.info("step %d: loss %.4f (%s), %.0f s", done, np.mean(recent),
                     ", ".join(f"{k} {v.item():.4f}" for k, v in parts.items() if k != "total"), elapsed)
    elapsed += time.perf_counter() - t0
    model.eval()
    digest = save_checkpoint(weights_path, model, assets, options.steps, meta())
    return TrainResult(ckpt_path, weights_path, options.steps, elapsed,
                       float(np.mean(recent)) if recent else float("nan"), digest, count_parameters(model))
