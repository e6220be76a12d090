"""L-CoIns training: data (synthetic + instance scenes), luminance augmentation, loss, warm-up, stages.

``langcolor.export.train`` runs the loop; this module supplies the family's pieces. ``--stage``
picks what a run learns: ``joint`` (below), or one of the pretraining stages of ``pretrain.py``
(masked words for the language encoder, masked patches for the ViT). ``--init`` starts a run from an
earlier stage's weights and tokenizer, so the stages chain: text, then image, then joint.

Joint training:

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
- ``instance_contrast``: the two instances of an instance scene are kept apart in gray level after
  augmentation (the draw is redone, up to ``_REDRAWS`` times), as in the paper's data, whose
  instances have "distinctive visual characteristics": the groups merge *similar* patches;
- loss (eq. 16): alpha * smooth-L1 on ab (eq. 13, same units and object weighting as L-CoDe) +
  beta * L_ctr (eq. 15), with the paper's beta = -1e-4 (L_ctr is a log-likelihood to maximise).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from langcolor.client.errors import LangcolorError
from langcolor.client.lab import hsv_to_rgb, lab_to_rgb, rgb_to_hsv, rgb_to_lab
from langcolor.client.spec import PAD_ID, TOKENIZER_FILE
from langcolor.client.tokenizer import CaptionTokenizer
from langcolor.export import instances, synthetic
from langcolor.export.losses import ab_smooth_l1

from . import pretrain
from .config import LCoInsConfig

_REDRAWS = 8  # luminance augmentation draws tried for two instances that must differ in gray level
_PARTS = {"language": ("fusion", "language"), "encoder": ("encoder",), "decoder": ("decoder",)}


def build_tokenizer(cfg: LCoInsConfig, seed: int, scenes: int) -> CaptionTokenizer:
    """WordPiece over the captions of the first ``scenes`` training scenes of both streams."""
    plain = synthetic.training_captions(seed, scenes, cfg.image_size, cfg.max_words)
    inst = [s.scene.caption for s in instances.make_instance_scenes(seed, "train", 0, scenes, cfg.image_size, cfg.max_words)]
    return CaptionTokenizer.train_wordpiece(plain + inst, cfg.max_tokens, cfg.wordpiece_vocab)


def _init_checkpoint(options):
    from langcolor.export.checkpoint import load_checkpoint

    return load_checkpoint(options.family_options.init)


def _check_init(init, cfg: LCoInsConfig, options) -> None:
    if init.family != options.family or init.config.to_dict() != cfg.to_dict():
        raise LangcolorError(f"--init {options.family_options.init}: its network ({init.family} {init.config.name}) "
                             f"is not the one being trained ({cfg.name}); give the same --config")


def make_assets(cfg: LCoInsConfig, options) -> dict[str, str]:
    if options.family_options.init:  # the earlier stage's tokenizer: its word embeddings are indexed by it
        init = _init_checkpoint(options)
        _check_init(init, cfg, options)
        return dict(init.assets)
    return {TOKENIZER_FILE: build_tokenizer(cfg, options.seed, options.family_options.vocab_scenes).to_str()}


def prepare(model, options, resumed: bool) -> None:
    """Start from ``--init``'s weights (fresh runs: a resumed one has its own), keep ``--frozen`` parts fixed."""
    o = options.family_options
    if o.init and not resumed:
        init = _init_checkpoint(options)
        _check_init(init, model.cfg, options)
        model.load_state_dict(init.state_dict)
    for part in o.frozen_parts:
        module = model
        for name in _PARTS[part]:
            module = getattr(module, name)
        module.requires_grad_(False)


def data_name(options) -> str:
    stage = options.family_options.stage
    return "synthetic" if stage == "joint" else f"synthetic, {stage}"


def data_source(cfg: LCoInsConfig, conditioner, options) -> Callable[[int], dict[str, torch.Tensor]]:
    stage = options.family_options.stage
    if stage == "pretrain-text":
        return lambda step: pretrain.text_batch(cfg, conditioner.tokenizer, options, step)
    if stage == "pretrain-image":
        return lambda step: image_batch(cfg, options, step)
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


def _instance_gap(L: np.ndarray, masks: np.ndarray) -> float:
    """Gray-level distance of the two instances (median L of each), L units."""
    return abs(float(np.median(L[masks[0]])) - float(np.median(L[masks[1]])))


def _scenes(cfg: LCoInsConfig, options, step: int, count: int) -> tuple[list[synthetic.Scene], int]:
    """``count`` training scenes of step ``step``: plain ones, then instance ones; -> (scenes, plain count)."""
    o = options.family_options
    n_inst = int(round(count * o.instance_rate))
    n_plain = count - n_inst
    S, W = cfg.image_size, cfg.max_words
    scenes = synthetic.make_scenes(options.seed, "train", step * n_plain, n_plain, S, W)
    scenes += [s.scene for s in instances.make_instance_scenes(options.seed, "train", step * n_inst, n_inst, S, W)]
    return scenes, n_plain


def _gray_inputs(scenes: list[synthetic.Scene], n_plain: int, o, rng: np.random.Generator) -> np.ndarray:
    """The gray input of each scene [N,1,S,S]: luminance-augmented for ``augment_rate`` of them.

    With ``instance_contrast``, an instance scene's draw is redone until its two instances differ that
    much in gray level (one whose instances are too alike without augmentation is augmented too). A
    hue rotation moves a colourful instance's gray level and leaves a gray one's, and a strong gamma
    squeezes every gap, so some pairs rarely come apart: after ``_REDRAWS`` draws the scene keeps its
    own gray levels if they are apart, else the draw that put them furthest apart."""
    L = np.stack([s.L for s in scenes])[:, None].copy()
    for i, s in enumerate(scenes):
        if o.instance_contrast <= 0 or i < n_plain:
            if rng.random() < o.augment_rate:
                L[i, 0] = luminance_augment(s.L, s.ab, rng, o.gamma_max)
            continue
        own_gap = _instance_gap(s.L, s.masks)
        if rng.random() >= o.augment_rate and own_gap >= o.instance_contrast:
            continue
        best, best_gap = s.L, -1.0
        for _ in range(_REDRAWS):
            draw = luminance_augment(s.L, s.ab, rng, o.gamma_max)
            gap = _instance_gap(draw, s.masks)
            if gap > best_gap:
                best, best_gap = draw, gap
            if gap >= o.instance_contrast:
                break
        L[i, 0] = s.L if best_gap < o.instance_contrast <= own_gap else best
    return L


def image_batch(cfg: LCoInsConfig, options, step: int) -> dict[str, torch.Tensor]:
    """Step ``step``'s batch of the image pretraining stage: B scenes and the patches to hide."""
    o = options.family_options
    scenes, n_plain = _scenes(cfg, options, step, options.batch_size)
    rng = np.random.default_rng([options.seed, 31, step])
    batch = {
        "L": _gray_inputs(scenes, n_plain, o, rng),  # [B,1,S,S]
        "ab": np.stack([s.ab for s in scenes]),  # [B,2,S,S]
        "objects": np.stack([s.masks.any(0) for s in scenes])[:, None].astype(np.float32),
        "hide": pretrain.hidden_patches(len(scenes), cfg.patches, o.patch_mask_rate, rng),  # [B,P]
    }
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def make_batch(cfg: LCoInsConfig, tokenizer: CaptionTokenizer, options, step: int) -> dict[str, torch.Tensor]:
    """The deterministic batch of training step ``step``: B/2 scenes, then the same with pseudo captions."""
    o = options.family_options
    half = options.batch_size // 2
    scenes, n_plain = _scenes(cfg, options, step, half)
    rng = np.random.default_rng([options.seed, 13, step])
    pseudo = [recolour(s, rng) for s in scenes]
    arrays = synthetic.stack(scenes, np.zeros((half, cfg.max_words), np.int64), cfg.max_words)
    del arrays["occm"], arrays["tokens"]  # L-CoDe's supervision; L-CoIns has none on the words
    arrays["L"] = _gray_inputs(scenes, n_plain, o, rng)
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
    """Joint: smooth-L1 over both halves; L_ctr pairs half 1 (real captions) with half 2 (pseudo captions)."""
    o = options.family_options
    if o.stage == "pretrain-text":
        return pretrain.text_losses(model, batch, options)
    if o.stage == "pretrain-image":
        return pretrain.image_losses(model, batch, options)
    ab, ctr, _ = model.forward_train(batch["L"], batch["tokens"], pair_halves=o.counter_weight != 0.0)
    ab_loss = ab_smooth_l1(ab, batch["ab"], batch["objects"], o.object_weight)
    ctr = ctr if ctr is not None else ab_loss.new_zeros(())
    return {"ab": ab_loss, "ctr": ctr, "total": ab_loss + o.counter_weight * ctr}
