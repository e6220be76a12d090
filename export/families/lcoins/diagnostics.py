"""Does the grouping find instances, and do the groups read the right colour words?

Measured on the instance scenes of the evaluation (``instances.make_instance_scenes``, test split),
each patch labelled by what covers most of its pixels (background or object k):

- ``grouping ARI``: adjusted Rand index between the hard group of each patch (eq. 11, the grouping
  layer, as ``LCoIns.forward`` returns it) and those labels, mean over scenes. 0 = chance, 1 = the
  groups are the regions;
- ``attention ARI``: the same for the group each patch attends to most in the last grouping block
  (eq. 8): the grouping the colours actually travel through;
- ``instances split``: share of scenes whose two instances fall in different majority groups (eq. 11);
- ``encoder ARI``: k-means (k = regions of the scene) on the encoder's patch features (FEATURES),
  against the labels: do the image tokens separate instances before any grouping?
- group <-> colour-word attention, last block: a caption reaches a patch through the groups, so the
  attention of patch j on word t is sum_g A_img->grp[j, g] A_grp->lag[g, t] (heads averaged). For each
  instance, mean over its patches of that attention on its own colour word and on the other instance's
  (``routed own`` / ``routed other``), and the share of instances whose own colour word gets more
  (``routed binding``, 50% = cannot tell them apart); ``group own`` / ``group other``: the attention
  of the instance's majority eq. 11 group itself (eq. 7) on the two colour words.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from langcolor.client.tokenizer import CaptionTokenizer
from langcolor.export import instances
from langcolor.export.evaluate import max_words


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """ARI of two labelings of the same items (Hubert and Arabie 1985); 1.0 when both are one cluster."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), np.int64)
    np.add.at(table, (ai, bi), 1)

    def pairs(x):
        return float((x * (x - 1) / 2).sum())

    index, rows, cols, total = pairs(table), pairs(table.sum(1)), pairs(table.sum(0)), pairs(np.array([len(a)]))
    expected = rows * cols / total if total else 0.0
    best = (rows + cols) / 2
    return 1.0 if best == expected else (index - expected) / (best - expected)


def patch_labels(masks: np.ndarray, patch: int) -> np.ndarray:
    """masks bool [K,S,S] -> int [P]: per patch, 0 for background or k + 1 for the object covering most pixels."""
    K, S, _ = masks.shape
    g = S // patch
    cover = masks.reshape(K, g, patch, g, patch).sum((2, 4)).reshape(K, g * g)  # [K,P] pixels per object
    background = patch * patch - cover.sum(0)  # [P]
    return np.argmax(np.concatenate([background[None], cover]), axis=0)  # [P]


@functools.lru_cache(maxsize=4096)
def pieces(tokenizer: CaptionTokenizer, word: str) -> int:
    """Word pieces of one word (WordPiece cuts each word on its own, whatever surrounds it)."""
    return tokenizer.encode(word).length


def word_starts(tokenizer: CaptionTokenizer, words: tuple[str, ...]) -> list[int]:
    """Token position of each word's first piece."""
    starts, at = [], 0
    for w in words:
        starts.append(at)
        at += pieces(tokenizer, w)
    return starts


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 20) -> np.ndarray:
    """Plain k-means on the rows of x [N,D] (k-means++ seeding); -> labels [N]."""
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d = np.min(((x[:, None] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
        centres.append(x[rng.choice(len(x), p=d / d.sum())] if d.sum() > 0 else x[rng.integers(len(x))])
    c = np.array(centres)
    for _ in range(iters):
        labels = np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), axis=1)
        c = np.array([x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
    return labels


@torch.no_grad()
def grouping_figures(model, tokenizer: CaptionTokenizer, scenes: int, seed: int, batch_size: int = 64) -> dict[str, float]:
    cfg = model.cfg
    inst = instances.make_instance_scenes(seed, "test", 0, scenes, cfg.image_size, max_words(cfg))
    model.eval()
    blocks = list(model.fusion.blocks)
    rng = np.random.default_rng([seed, 7])
    out: dict[str, list[float]] = {k: [] for k in ("ari", "att_ari", "split", "enc_ari", "own", "other", "bind", "g_own", "g_other")}
    for i in range(0, len(inst), batch_size):
        chunk = inst[i : i + batch_size]
        L = torch.from_numpy(np.stack([c.scene.L for c in chunk])[:, None])  # [B,1,S,S]
        tokens = torch.from_numpy(tokenizer.encode_batch([c.scene.caption for c in chunk]))  # [B,T]
        trace: list = []
        for b in blocks:
            b.trace = trace
        try:
            features = model.encoder(L)  # [B,P,D]
            _, groups = model(L, tokens)  # [B,P] eq. 11
        finally:
            for b in blocks:
                b.trace = None
        last = trace[-1]  # the forward pass's last block (the encoder call does not trace)
        grp_lag = last["grp_lag"].mean(1)  # [B,G,T]
        img_grp = last["img_grp"].mean(1)  # [B,P,G]
        routed = (img_grp @ grp_lag).numpy()  # [B,P,T]
        att_groups = img_grp.argmax(-1).numpy()  # [B,P]
        groups, feats = groups.numpy(), features.numpy()
        for b, c in enumerate(chunk):
            s = c.scene
            labels = patch_labels(s.masks, cfg.patch_size)  # [P]
            out["ari"].append(adjusted_rand_index(groups[b], labels))
            out["att_ari"].append(adjusted_rand_index(att_groups[b], labels))
            out["enc_ari"].append(adjusted_rand_index(kmeans(feats[b], len(np.unique(labels)), rng), labels))
            majority = [np.bincount(groups[b][labels == k + 1]).argmax() if (labels == k + 1).any() else -1 for k in range(2)]
            out["split"].append(float(majority[0] != majority[1] and min(majority) >= 0))
            starts = word_starts(tokenizer, s.words)
            colour_pos = {s.words[c_]: starts[c_] for _, c_ in s.pairs}
            for k in range(2):
                patches = labels == k + 1
                if not patches.any():
                    continue
                own, other = colour_pos[s.objects[k].colour], colour_pos[s.objects[1 - k].colour]
                r_own, r_other = routed[b][patches, own].mean(), routed[b][patches, other].mean()
                out["own"].append(r_own)
                out["other"].append(r_other)
                out["bind"].append(float(r_own > r_other))
                g = majority[k]
                out["g_own"].append(float(grp_lag[b, g, own]))
                out["g_other"].append(float(grp_lag[b, g, other]))
    names = {
        "ari": "grouping ARI", "att_ari": "attention ARI", "split": "instances split", "enc_ari": "encoder ARI",
        "own": "routed own colour", "other": "routed other colour", "bind": "routed binding",
        "g_own": "group own colour", "g_other": "group other colour",
    }
    return {names[k]: float(np.mean(v)) if v else float("nan") for k, v in out.items()}
