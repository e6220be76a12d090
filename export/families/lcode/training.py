"""L-CoDe training: synthetic scenes (or COCO-Stuff-style data), smooth-L1 on ab + BCE on the OCCM.

Data are drawn on the fly and deterministically: step ``k`` trains on training scenes
``k*B .. (k+1)*B - 1`` of the seed, so a resumed run sees exactly the batches an uninterrupted one
would. ``langcolor.export.train`` runs the loop; this module supplies the family's pieces.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from langcolor.client.spec import PAD_ID, TOKENIZER_FILE
from langcolor.client.tokenizer import CaptionTokenizer
from langcolor.export import synthetic
from langcolor.export.losses import ab_smooth_l1

from .config import LCoDeConfig


def _coco(cfg: LCoDeConfig, options, tokenizer: CaptionTokenizer | None = None):
    from .coco import CocoCaptions

    o = options.family_options
    return CocoCaptions.from_folder(o.coco_images, o.coco_captions, cfg.image_size, cfg.max_tokens, tokenizer)


def make_assets(cfg: LCoDeConfig, options) -> dict[str, str]:
    """The word-level tokenizer: from the training captions of the seed (or the COCO captions)."""
    o = options.family_options
    if o.coco_images:
        return {TOKENIZER_FILE: _coco(cfg, options).tokenizer.to_str()}
    captions = synthetic.training_captions(options.seed, o.vocab_scenes, cfg.image_size, cfg.max_tokens)
    return {TOKENIZER_FILE: CaptionTokenizer.train(captions, cfg.max_tokens).to_str()}


def data_name(options) -> str:
    return "coco" if options.family_options.coco_images else "synthetic"


def data_source(cfg: LCoDeConfig, conditioner, options) -> Callable[[int], dict[str, torch.Tensor]]:
    """step -> the deterministic batch of that step."""
    tokenizer = conditioner.tokenizer
    o = options.family_options
    coco = _coco(cfg, options, tokenizer) if o.coco_images else None
    b = options.batch_size

    def batch(step: int) -> dict[str, torch.Tensor]:
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
        drop = rng.random(b) < o.caption_free_rate  # [B] samples shown without a caption
        arrays["tokens"][drop] = PAD_ID
        arrays["occm"][drop] = 0.0
        return {k: torch.from_numpy(v) for k, v in arrays.items()}

    return batch


def losses(model, batch: dict[str, torch.Tensor], options) -> dict[str, torch.Tensor]:
    o = options.family_options
    ab, occm_logits, pair_mask = model.forward_train(batch["L"], batch["tokens"])  # [B,2,S,S], [B,T,T]
    ab_loss = ab_smooth_l1(ab, batch["ab"], batch["objects"], o.object_weight)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(occm_logits, batch["occm"], reduction="none")  # [B,T,T]
    occm_loss = (bce * pair_mask).sum() / pair_mask.sum().clamp(min=1.0)
    return {"ab": ab_loss, "occm": occm_loss, "total": ab_loss + o.occm_weight * occm_loss}
