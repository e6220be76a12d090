"""Pretraining stages, standing in for the pretrained BERT and ViT the paper starts from.

``--stage pretrain-text``: BERT's masked-word objective on the scene generators' captions. A
sample is a caption alone (15% of its words hidden, and always one colour, noun or location word;
BERT's 80/10/10 replacement, whole words) or, as BERT's sentence pairs, the caption followed by one
phrase about one thing it names, in a phrasing of its own, with one word of the phrase hidden:
"the [MASK] square on the right" needs the colour bound to "right square" in "the left square is
red and the right square is blue"; "the blue square on the [MASK]" the other way round. A caption
alone cannot teach that (colours are drawn at random), which is why the pairs are there. The phrase
names one thing only: a whole second description named the other instance's colour too, and the
hidden one was found by elimination (the reader picked the right colour word 92% of the time, and
no probe found a binding in the tokens).

Unlike BERT, the language encoder reads each description on its own; a reader (pretraining only:
one attention hop, one head, no MLP, ``network.Reader``) attends across the two, and the hidden
words are predicted from its output. The grouping blocks read a caption the same way, from outside
it, so the binding has to be in single words' own tokens, where a linear key can find it. With every
layer attending across the pair (BERT's way), hidden colours were found 99% of the time, yet a linear
probe could not tell from a colour word's token whether it was the left or the right one (53%,
chance 50%): the binding lived in the attention between the descriptions, where the grouping blocks
cannot reach it. A full transformer block as the reader (4 heads and an MLP) left it at 64%.

``--stage pretrain-image``: masked-patch prediction (SimMIM): a share of the patches is replaced
by a learnt vector before the ViT, and a linear head predicts their gray pixels from the ViT's
output; optionally (``colour_weight``) the whole network also learns to colour with an empty
caption (the caption-free colorizer), which trains the upsampler.

Both read the same scene streams as joint training, with their own random streams for hiding.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from langcolor.client.spec import PAD_ID
from langcolor.client.tokenizer import CaptionTokenizer
from langcolor.export import instances, synthetic
from langcolor.export.losses import ab_smooth_l1

from .config import LCoInsConfig
from .diagnostics import pieces

LOCATIONS = frozenset(d for pair in instances.POSITIONS.values() for d in pair) | frozenset(instances.SIZES)
CONTENT = frozenset(synthetic.COLOURS) | frozenset(synthetic.SHAPES) | {synthetic.BACKGROUND} | LOCATIONS
_IGNORE = -100  # cross-entropy's ignore_index: positions whose word is not predicted


# ------------------------------------------------------------------------------------------ text
def facts(scene: synthetic.Scene, descriptors: tuple[str, ...] | None):
    """What a caption says: [(noun, colour, location word or None)] and the named background colour."""
    named = []
    for k, o in enumerate(scene.objects):
        if o.mentioned:
            named.append((o.shape, o.colour, descriptors[k] if descriptors is not None and k < 2 else None))
    return named, (scene.background if scene.background_mentioned else None)


def _phrase(rng, noun: str, colour: str, where: str | None) -> list[str]:
    """A phrase naming one object's colour (and location or size), in one of the generators' forms."""
    if where is None:
        return synthetic.phrase(rng, colour, noun, int(rng.integers(0, 4)))
    form = int(rng.integers(0, 3))
    if form == 0:
        return ["the", where, noun, "is", colour]
    if form == 1 or where in instances.SIZES:
        return [synthetic.article(where) if where in instances.SIZES else "the", where, colour, noun]
    return ["the", colour, noun, "on", "the", where]


def question(named, background: str | None, rng: np.random.Generator) -> tuple[list[str], str]:
    """One phrase about one thing the caption names, in a random phrasing, and the word of it to hide
    (its colour half the time, else its noun or location word)."""
    k = int(rng.integers(len(named) + (background is not None)))
    if k == len(named):
        words = ["the", synthetic.BACKGROUND, "is", background] if rng.random() < 0.5 else [background, synthetic.BACKGROUND]
        noun, colour, where = synthetic.BACKGROUND, background, None
    else:
        noun, colour, where = named[k]
        words = _phrase(rng, noun, colour, where)
    if rng.random() < 0.5:
        return words, colour
    others = [noun] + ([where] if where is not None else [])
    return words, others[int(rng.integers(len(others)))]


def _word_spans(tokenizer: CaptionTokenizer, caption: str) -> list[tuple[str, int, int]]:
    """(word, first piece, end) of each word of the caption."""
    spans, at = [], 0
    for w in tokenizer.words_of(caption):
        n = pieces(tokenizer, w)
        spans.append((w, at, at + n))
        at += n
    return spans


def text_batch(cfg: LCoInsConfig, tokenizer: CaptionTokenizer, options, step: int) -> dict[str, torch.Tensor]:
    """Step ``step``'s masked-word batch: tokens [B,2T] (second description or padding), segment ids,
    targets (word id where hidden, else -100), and how each hidden position is shown."""
    o = options.family_options
    B, T, W, S = options.batch_size, cfg.max_tokens, cfg.max_words, cfg.image_size
    n_inst = int(round(B * o.instance_rate))
    plain = synthetic.make_scenes(options.seed, "train", step * (B - n_inst), B - n_inst, S, W)
    inst = instances.make_instance_scenes(options.seed, "train", step * n_inst, n_inst, S, W)
    scenes = [(s, None) for s in plain] + [(i.scene, i.descriptors) for i in inst]
    rng = np.random.default_rng([options.seed, 29, step])
    tokens = np.full((B, 2 * T), PAD_ID, np.int64)
    targets = np.full((B, 2 * T), _IGNORE, np.int64)
    shown = np.zeros((B, 2 * T), np.int64)  # 0 = as is, 1 = the hidden-word vector, 2 = a random word
    for b, (scene, desc) in enumerate(scenes):
        named, background = facts(scene, desc)
        pair = bool(named or background) and rng.random() < o.pair_rate
        captions = [scene.caption]
        if pair:
            words, asked = question(named, background, rng)
            captions.append(" ".join(words))
        spans = []
        for seg, caption in enumerate(captions):
            ids = tokenizer.encode(caption).ids  # [T]
            tokens[b, seg * T : (seg + 1) * T] = ids
            spans += [(w, seg * T + a, seg * T + z) for w, a, z in _word_spans(tokenizer, caption)]
        if pair:  # only the asked word of the phrase: the rest of the pair is read as is
            hide = np.array([a >= T and w == asked for w, a, _ in spans])
        else:
            hide = rng.random(len(spans)) < o.word_mask_rate
            content = [k for k, (w, _, _) in enumerate(spans) if w in CONTENT]
            if content:
                hide[content[int(rng.integers(len(content)))]] = True  # always one word worth binding
        for k in np.flatnonzero(hide):
            _, a, z = spans[k]
            targets[b, a:z] = tokens[b, a:z]
            draw = rng.random()
            shown[b, a:z] = 1 if draw < 0.8 else (2 if draw < 0.9 else 0)
    random_words = rng.integers(2, tokenizer.vocab_size, size=tokens.shape)
    tokens_in = np.where(shown == 2, random_words, tokens)
    segments = np.repeat(np.array([[0] * T + [1] * T]), B, axis=0)
    return {k: torch.from_numpy(v) for k, v in
            {"tokens": tokens_in, "targets": targets, "hidden": shown == 1, "segments": segments}.items()}


def text_losses(model, batch: dict[str, torch.Tensor], options) -> dict[str, torch.Tensor]:
    lang, head = model.fusion.language, model.pretext
    tokens = batch["tokens"]  # [B,2T]
    B, T2 = tokens.shape
    mask = tokens != PAD_ID
    x = lang.embed(tokens)  # [B,2T,D]
    x = torch.where(batch["hidden"].unsqueeze(-1), head.hidden_word.to(x.dtype), x)
    x = x + lang.pos.repeat(1, 2, 1)  # each description its own positions
    D, T = x.shape[-1], T2 // 2
    h = lang.contextual(x.reshape(2 * B, T, D), mask.reshape(2 * B, T)).reshape(B, T2, D)  # one by one
    h = head.reader(h + head.segment[batch["segments"]], mask)  # [B,2T,D] across the two
    picked = batch["targets"] != _IGNORE  # [B,2T]
    logits = head.word_head(h[picked]) @ lang.embed.weight.T + head.word_bias  # [N,V]
    loss = F.cross_entropy(logits, batch["targets"][picked])
    accuracy = (logits.argmax(-1) == batch["targets"][picked]).float().mean().detach()
    return {"mlm": loss, "acc": accuracy, "total": loss}


# ----------------------------------------------------------------------------------------- image
def hidden_patches(batch_size: int, patches: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """bool [B,P]: each patch hidden with probability ``rate``, at least one per image."""
    hide = rng.random((batch_size, patches)) < rate
    hide[np.arange(batch_size), rng.integers(patches, size=batch_size)] = True
    return hide


def patch_pixels(L: torch.Tensor, patch: int) -> torch.Tensor:
    """L [B,1,S,S] in [0,100] -> each patch's pixels [B,P,patch*patch] in [-1,1], patches in the ViT's order."""
    B, _, S, _ = L.shape
    g = S // patch
    x = ((L - 50.0) / 50.0).reshape(B, g, patch, g, patch)  # [B,gy,py,gx,px]
    return x.permute(0, 1, 3, 2, 4).reshape(B, g * g, patch * patch)


def image_losses(model, batch: dict[str, torch.Tensor], options) -> dict[str, torch.Tensor]:
    """Masked-patch prediction on the ViT (+ ``colour_weight`` x the caption-free colorizer's ab loss)."""
    o = options.family_options
    cfg: LCoInsConfig = model.cfg
    L, hide = batch["L"], batch["hide"]  # [B,1,S,S], [B,P]
    features = model.encoder(L, hide=(hide, model.pretext.hidden_patch))  # [B,P,D]
    pred = model.pretext.patch_head(features[hide])  # [N,p*p]
    patch_loss = F.mse_loss(pred, patch_pixels(L, cfg.patch_size)[hide])
    parts = {"patch": patch_loss}
    total = patch_loss
    if o.colour_weight > 0:
        blank = torch.full((L.shape[0], cfg.max_tokens), PAD_ID, dtype=torch.long)
        ab = model.decoder(model.fusion(model.encoder(L), blank))  # [B,2,S,S], the caption-free path
        colour = ab_smooth_l1(ab, batch["ab"], batch["objects"], o.object_weight)
        parts["ab"] = colour
        total = total + o.colour_weight * colour
    return {**parts, "total": total}
