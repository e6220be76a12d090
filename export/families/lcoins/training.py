"""L-CoIns training: data (synthetic + instance scenes), luminance augmentation, loss, warm-up.

``langcolor.export.train`` runs the loop; this module supplies the family's pieces:

- batches mix ``synthetic.make_scene`` scenes with ``instances.make_instance_scene`` scenes
  (``instance_rate`` of each batch); step ``k`` uses scenes ``k*n .. (k+1)*n - 1`` of each stream;
- luminance augmentation (section 3.2) on ``augment_rate`` of the samples: the scene's colours are
  hue-rotated in HSV by lambda in [-180, 180] degrees, the gray input is the L of that rotated image,
  then a gamma gamma in [1, gamma_max] or its inverse (50% each) is applied to L/100. The target ab
  stays the scene's own: only the gray level the network sees changes;
- pseudo captions (section 3.7): every named colour word replaced by another. Each batch holds B/2
  scenes twice: once with its caption, once with the pseudo caption and the scene recoloured to
  match it (the masks make that exact on synthetic scenes). The same gray image then has two
  targets that only the words tell apart, which is what pulls a model off the caption-blind prior
  within a CPU budget; the counter-colour loss pairs the two halves without a second forward pass;
- loss (eq. 16): alpha * smooth-L1 on ab (eq. 13, same units and object weighting as L-CoDe) +
  beta * L_ctr (eq. 15), with the paper's beta = -1e-4 (L_ctr is a log-likelihood to maximise).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from langcolor.client.lab import hsv_to_rgb, lab_to_rgb, rgb_to_hsv, rgb_to_lab
from langcolor.client.spec import PAD_ID, TOKENIZER_FILE
from langcolor.client.tokenizer import CaptionTokenizer
from langcolor.export import instances, synthetic
from langcolor.export.losses import ab_smooth_l1

from .config import LCoInsConfig


def build_tokenizer(cfg: LCoInsConfig, seed: int, scenes: int) -> CaptionTokenizer:
    """WordPiece over the captions of the first ``scenes`` training scenes of both streams."""
    plain = synthetic.training_captions(seed, scenes, cfg.image_size, cfg.max_words)
    inst = [s.scene.caption for s in instances.make_instance_scenes(seed, "train", 0, scenes, cfg.image_size, cfg.max_words)]
    return CaptionTokenizer.train_wordpiece(plain + inst, cfg.max_tokens, cfg.wordpiece_vocab)


def make_assets(cfg: LCoInsConfig, options) -> dict[str, str]:
    return {TOKENIZER_FILE: build_tokenizer(cfg, options.seed, options.family_options.vocab_scenes).to_str()}


def data_name(options) -> str:
    return "synthetic"


def data_source(cfg: LCoInsConfig, conditioner, options) -> Callable[[int], dict[str, torch.Tensor]]:
    return lambda step: make_batch(cfg, conditioner.tokenizer, options, step)


def scheduler(optimizer: torch.optim.Optimizer, options):
    """Transformers: linear warm-up, then cosine decay over the remaining steps."""
    warm = max(1, min(options.family_options.warmup_steps, options.steps // 4))
    decay = max(options.steps - warm, 1)
    # plain floats (math, not numpy): the checkpoint must load with weights_only=True
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: (k + 1) / warm if k < warm else 0.5 * (1 + math.cos(math.pi * min(k - warm, decay) / decay))
    )


def luminance_augment(L: np.ndarray, ab: np.ndarray, rng: np.random.Generator, gamma_max: float) -> np.ndarray:
    """L [S,S], ab [2,S,S] -> augmented L [S,S] (eqs. 1-2): hue rotation, then gamma or 1/gamma."""
    lab = np.stack([L, ab[0], ab[1]], axis=-1)  # [S,S,3]
    hsv = rgb_to_hsv(np.clip(lab_to_rgb(lab), 0.0, 1.0))
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-0.5, 0.5)) % 1.0  # lambda in [-180, 180] degrees
    gray = rgb_to_lab(hsv_to_rgb(hsv).astype(np.float32))[..., 0]  # [S,S]
    gamma = rng.uniform(1.0, gamma_max)
    if rng.random() < 0.5:  # F_inv: the reciprocal half the time
        gamma = 1.0 / gamma
    return (100.0 * np.clip(gray / 100.0, 0.0, 1.0) ** gamma).astype(np.float32)


def recolour(scene: synthetic.Scene, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """The pseudo caption (every named colour replaced by an unused one, never a held-out pair) and
    the scene's ab recoloured to match it, float32 [2,S,S]; chroma jitter is kept."""
    words = list(scene.words)
    ab = scene.ab.copy()
    taken = {o.colour for o in scene.objects} | {scene.background}
    by_colour = {o.colour: k for k, o in enumerate(scene.objects)}  # colours are distinct within a scene
    for noun_pos, colour_pos in scene.pairs:
        old, noun = words[colour_pos], words[noun_pos]
        choices = [c for c in synthetic.COLOURS if c not in taken and (noun, c) not in synthetic.HELD_OUT]
        new = str(rng.choice(choices))
        taken.add(new)
        words[colour_pos] = new
        if colour_pos > 0 and words[colour_pos - 1] in ("a", "an"):
            words[colour_pos - 1] = synthetic.article(new)
        region = scene.background_mask if noun == synthetic.BACKGROUND else scene.masks[by_colour[old]]
        shift = np.subtract(synthetic.PALETTE[new], synthetic.PALETTE[old]).astype(np.float32)
        ab[:, region] += shift[:, None]
    return " ".join(words), ab


def make_batch(cfg: LCoInsConfig, tokenizer: CaptionTokenizer, options, step: int) -> dict[str, torch.Tensor]:
    """The deterministic batch of training step ``step``: B/2 scenes, then the same with pseudo captions."""
    o = options.family_options
    half = options.batch_size // 2
    n_inst = int(round(half * o.instance_rate))
    n_plain = half - n_inst
    S, W = cfg.image_size, cfg.max_words
    scenes = synthetic.make_scenes(options.seed, "train", step * n_plain, n_plain, S, W)
    scenes += [s.scene for s in instances.make_instance_scenes(options.seed, "train", step * n_inst, n_inst, S, W)]
    rng = np.random.default_rng([options.seed, 13, step])
    pseudo = [recolour(s, rng) for s in scenes]
    arrays = synthetic.stack(scenes, np.zeros((half, cfg.max_words), np.int64), cfg.max_words)
    del arrays["occm"], arrays["tokens"]  # L-CoDe's supervision; L-CoIns has none on the words
    for i, s in enumerate(scenes):
        if rng.random() < o.augment_rate:
            arrays["L"][i, 0] = luminance_augment(s.L, s.ab, rng, o.gamma_max)
    tokens = tokenizer.encode_batch([s.caption for s in scenes] + [c for c, _ in pseudo])  # [B,T]
    drop = np.tile(rng.random(half) < o.caption_free_rate, 2)  # [B] shown without a caption
    tokens[drop] = PAD_ID
    keep_pseudo_ab = ~drop[half:]  # caption-free: both halves keep the scene's own colours
    pseudo_ab = np.stack([p_ab if k else s.ab for (_, p_ab), s, k in zip(pseudo, scenes, keep_pseudo_ab)])
    batch = {
        "L": np.concatenate([arrays["L"], arrays["L"]]),  # [B,1,S,S]
        "ab": np.concatenate([arrays["ab"], pseudo_ab]),  # [B,2,S,S]
        "objects": np.concatenate([arrays["objects"], arrays["objects"]]),
        "tokens": tokens,
    }
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def losses(model, batch: dict[str, torch.Tensor], options) -> dict[str, torch.Tensor]:
    """Smooth-L1 over both halves; L_ctr pairs half 1 (real captions) with half 2 (pseudo captions)."""
    o = options.family_options
    ab, ctr, _ = model.forward_train(batch["L"], batch["tokens"], pair_halves=o.counter_weight != 0.0)
    ab_loss = ab_smooth_l1(ab, batch["ab"], batch["objects"], o.object_weight)
    ctr = ctr if ctr is not None else ab_loss.new_zeros(())
    return {"ab": ab_loss, "ctr": ctr, "total": ab_loss + o.counter_weight * ctr}
