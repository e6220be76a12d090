"""Training the sketch colorizer on synthetic drawings: its batches and its losses.

Step ``k`` draws scenes from ``default_rng([seed, k])``, so a resumed run sees exactly the batches of an
uninterrupted one. Each scene is drawn at S times one of ``--render-scales`` and read through the
client's own path (``regions.to_network``, ``regions.propose``): the network trains on the objects
it will be offered in service. A scene whose objects the proposals do not recover one for one is
drawn again (it does not happen on the generator's layouts; the tests check it).

Per scene one foreground instruction (a trained form: single, part, location, all) and, for the first
``background_share`` of the batch, one background instruction too. Losses, as in the paper:

- matching: cross-entropy of the referring mask on **ink pixels only**;
- foreground: smooth-L1 on RGB (quadratic within a colour word's spread, ``COLOUR_UNIT``) inside the
  referred objects, given the true selection (the first ``colour_share`` of the batch);
- background: L1 on the named regions' paper only ("w/o FG"), cross-entropy of the sky / ground /
  foreground segmentation on every pixel, and BCE on which regions the instruction names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from langcolor.client.spec import TOKENIZER_FILE
from langcolor.client.tokenizer import CaptionTokenizer

from . import regions
from .config import SketchConfig
from .drawing import Scene, match_items, random_scene
from .instructions import Instruction, random_instruction, vocabulary_texts
from .network import FOREGROUND, GROUND, SKY, fg_image, pyramid
from .words import CATEGORIES, COLOUR_JITTER, colour_rgb
from .words import REGIONS as REGION_NAMES

FG_KINDS = ("single", "part", "location", "all")
FG_WEIGHTS = (0.15, 0.2, 0.45, 0.2)  # location most: it is the hard one; parts next: few pixels
COPIES, COPIES_P = (1, 2, 3), (0.35, 0.4, 0.25)
DISTRACTORS, DISTRACTORS_P = (0, 1, 2), (0.25, 0.45, 0.3)
COLOUR_UNIT = 16.0 / 255.0  # smooth-L1 is quadratic within 16 RGB levels: about a colour word's spread


def make_assets(cfg: SketchConfig, options) -> dict[str, str]:
    return {TOKENIZER_FILE: CaptionTokenizer.train(vocabulary_texts(), cfg.max_tokens).to_str()}


@dataclass
class Example:
    """One scene and one instruction at the network's side, with its targets."""

    sketch: np.ndarray  # [1,S,S]
    masks: np.ndarray  # [K,S,S]
    selection: np.ndarray  # [K]: the objects the instruction refers to
    colour: np.ndarray  # [3,S,S]: the referred objects' paper in their instructed colours
    colour_weight: np.ndarray  # [1,S,S]: that paper
    seg: np.ndarray  # [S,S] int64: sky, ground, foreground
    background: np.ndarray  # [3,S,S]: the named regions' paper in their colours
    background_weight: np.ndarray  # [1,S,S]
    regions: np.ndarray  # [2]: sky, ground named
    categories: np.ndarray  # [S,S] int64: 1 + category of the object each pixel belongs to, 0 for none


def _jittered(name: str, rng: np.random.Generator) -> np.ndarray:
    return np.clip(colour_rgb(name) + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3) / 255.0, 0.0, 1.0)


def example(scene: Scene, fg: Instruction, bg: Instruction | None, cfg: SketchConfig,
            rng: np.random.Generator, part_weight: float = 1.0) -> Example | None:
    s, k = cfg.image_size, cfg.max_instances
    ink = regions.to_network(scene.ink, s)
    props = regions.propose(ink > 0.5, k)
    owner = match_items(scene, props, s)
    if owner is None:
        return None
    selection = np.array([float(owner[j] in fg.targets) if j < props.count else 0.0 for j in range(k)], np.float32)
    colour = np.zeros((3, s, s), np.float32)
    weight = np.zeros((1, s, s), np.float32)
    for j in range(props.count):
        if not selection[j]:
            continue
        inside = props.interiors[j]
        colour[:, inside] = _jittered(fg.colour, rng)[:, None]
        if fg.part_colour:
            part = (_shrink_mean(scene.parts[owner[j]], s) > 0.5) & inside
            colour[:, part] = _jittered(fg.part_colour, rng)[:, None]
            weight[0, part] = part_weight  # a few pixels beside the body's many: weighted up
        weight[0, inside & (weight[0] == 0)] = 1.0
    objects = props.masks.any(0)
    rows = (np.arange(s) + 0.5) * scene.size / s < scene.horizon
    seg = np.where(objects, FOREGROUND, np.where(rows[:, None], SKY, GROUND)).astype(np.int64)
    background = np.zeros((3, s, s), np.float32)
    bg_weight = np.zeros((1, s, s), np.float32)
    named = np.zeros(2, np.float32)
    if bg is not None:
        paper = ~objects & (ink < 0.5)
        for r, (region, cls) in enumerate(zip(REGION_NAMES, (SKY, GROUND))):
            if region in bg.regions:
                named[r] = 1.0
                where = paper & (seg == cls)
                background[:, where] = _jittered(bg.regions[region], rng)[:, None]
                bg_weight[0, where] = 1.0
    categories = np.zeros((s, s), np.int64)
    for j in range(props.count):
        categories[props.masks[j]] = 1 + CATEGORIES.index(scene.items[owner[j]].category)
    return Example(ink[None], props.padded(k), selection, colour, weight, seg, background, bg_weight, named, categories)


def _shrink_mean(mask: np.ndarray, size: int) -> np.ndarray:
    """bool [H, W] -> float [size, size]: the share of each cell the mask covers."""
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BOX)) / 255.0


def draw_example(cfg: SketchConfig, rng: np.random.Generator, scales: tuple[int, ...], with_background: bool,
                 kinds: tuple[str, ...] = FG_KINDS, weights: tuple[float, ...] | None = FG_WEIGHTS,
                 part_weight: float = 1.0):
    """(scene, foreground instruction, background instruction or None, Example) of a fresh random scene."""
    while True:
        scale = int(rng.choice(scales))
        width = int(rng.integers(1, scale + 1))
        scene = random_scene(rng, cfg.image_size * scale, width, copies=int(rng.choice(COPIES, p=COPIES_P)),
                             distractors=int(rng.choice(DISTRACTORS, p=DISTRACTORS_P)))
        fg = random_instruction(scene, kinds, rng, weights)
        bg = random_instruction(scene, ("background",), rng) if with_background else None
        if fg is None:
            continue
        ex = example(scene, fg, bg, cfg, rng, part_weight)
        if ex is not None:
            return scene, fg, bg, ex


def data_source(cfg: SketchConfig, conditioner, options) -> Callable[[int], dict[str, torch.Tensor]]:
    tokenizer = conditioner.tokenizer
    o = options.family_options
    b = options.batch_size
    n_bg = max(1, int(round(b * o.background_share)))

    def batch(step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([options.seed, step])
        drawn = [draw_example(cfg, rng, o.scales, i < n_bg, part_weight=o.part_weight) for i in range(b)]
        exs = [d[3] for d in drawn]
        stack = lambda name: torch.from_numpy(np.stack([getattr(e, name) for e in exs]))  # noqa: E731
        out = {name: stack(name) for name in Example.__dataclass_fields__}
        out["tokens"] = torch.from_numpy(tokenizer.encode_batch([d[1].text for d in drawn]))
        out["bg_tokens"] = torch.from_numpy(tokenizer.encode_batch([d[2].text for d in drawn[:n_bg]]))
        return out

    return batch


def losses(model, batch: dict[str, torch.Tensor], options) -> dict[str, torch.Tensor]:
    o = options.family_options
    fusion, decoder = model.fusion, model.decoder
    sketch, masks, tokens = batch["sketch"], batch["masks"], batch["tokens"]

    # Instance matching: the referring mask, scored on ink only.
    feats, detail = model.encoder.cnn(sketch)
    ref = fusion.refer(feats, detail, sketch, tokens)  # [B,1,S,S]
    truth = (batch["selection"][:, :, None, None] * masks).amax(1, keepdim=True)  # [B,1,S,S]
    bce = F.binary_cross_entropy_with_logits(ref, truth, reduction="none")
    match = (bce * sketch).sum() / sketch.sum().clamp(min=1.0)
    logits = F.interpolate(model.category_head(feats), scale_factor=4.0, mode="nearest")  # [B,1+C,S,S]
    ce_ink = F.cross_entropy(logits, batch["categories"], reduction="none")  # [B,S,S]
    category = (ce_ink * sketch[:, 0]).sum() / sketch.sum().clamp(min=1.0)

    # Foreground colouring, given the true selection.
    n = max(1, int(round(sketch.shape[0] * o.colour_share)))
    area = truth[:n]
    fused, s2, s1 = fusion.colour_fg(sketch[:n], area, tokens[:n])
    rgb = decoder.fg(fused, s2, s1, pyramid(fg_image(sketch[:n], area), 2))  # [n,3,S,S]
    w = batch["colour_weight"][:n]
    per_pixel = F.smooth_l1_loss(rgb / COLOUR_UNIT, batch["colour"][:n] / COLOUR_UNIT, reduction="none", beta=1.0)
    colour = (per_pixel * w).sum() / (3 * w.sum().clamp(min=1.0))

    # Background colouring: L1 on the named regions' paper only, segmentation everywhere.
    m = batch["bg_tokens"].shape[0]
    objects = masks[:m].amax(1, keepdim=True)
    fused, s2, s1, region_logits = fusion.colour_bg(sketch[:m], objects, batch["bg_tokens"])
    bg_rgb, seg = decoder.bg(fused, s2, s1, torch.cat([sketch[:m], objects], 1))
    wb = batch["background_weight"][:m]
    l1 = ((bg_rgb - batch["background"][:m]).abs() * wb).sum() / (3 * wb.sum().clamp(min=1.0))
    ce = F.cross_entropy(seg, batch["seg"][:m])
    named = F.binary_cross_entropy_with_logits(region_logits, batch["regions"][:m])
    total = match + o.category_weight * category + colour + l1 + o.seg_weight * ce + o.region_weight * named
    return {"match": match, "category": category, "colour": colour, "bg": l1, "seg": ce, "named": named, "total": total}
