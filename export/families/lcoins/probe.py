"""Linear probes of the language encoder: does a colour word's token know its noun and its location word?

A caption colours an instance only if the token of "red" in "the left square is red and the right
square is blue" carries "square" and "left" (or the noun token carries "red"): nothing else in the
network ties them. Each probe is a multinomial logistic regression on the language encoder's output
at one word's first piece, fitted on training captions and scored on test captions of both scene
generators:

- ``colour->noun``: from each colour word, the noun it colours (6 shapes or "background");
- ``colour->location``: from the colour word of each instance, its location or size word (left,
  right, top, bottom, small, big). Both words of a pair are in every such caption, so a token that
  knows only the caption's words, not which one is its own, scores about 50%;
- ``noun->colour``: from each noun, its colour (9);
- ``location->colour``: from each instance's location or size word, its colour (9): the other way
  round, as useful to a patch that knows where it is.

Those read a label off one token with one global classifier. The grouping blocks need less: a
group that stands for "the left square" must find, among the caption's colour words, the one that
is its own, by a linear key, and a binding that holds only relative to the other colour word of the
same caption is enough for that. Masked-word pretraining learns exactly such a binding (its reader
picked the right colour word 92% of the time while ``colour->location`` stayed near 56%), so two
probes score the choice itself, one learnt vector per query word against every colour word's token:

- ``location picks colour``: instance captions; for each location or size word, which colour word
  is its instance's (chance: one over the caption's colour words, about 1/3);
- ``noun picks colour``: captions of the plain scenes (one object per noun); for each noun (or
  "background"), which colour word is its own.

Each probe is also fitted on the encoder's input (word + position embeddings, no context): the
control a contextual encoder has to beat.
"""

from __future__ import annotations

import numpy as np
import torch

from langcolor.client.tokenizer import CaptionTokenizer
from langcolor.export import instances, synthetic
from langcolor.export.evaluate import max_words

from .diagnostics import word_starts

NOUNS = synthetic.SHAPES + (synthetic.BACKGROUND,)
LOCATIONS = ("left", "right", "top", "bottom", "small", "big")
PROBES = ("colour->noun", "colour->location", "noun->colour", "location->colour")
PICKS = ("location picks colour", "noun picks colour")
_MAX_COLOURS = 5  # colour words in one caption: at most 3 objects and the background


def _examples(scenes: list[synthetic.Scene], descriptors: list[tuple[str, ...] | None], tokenizer: CaptionTokenizer):
    """-> tokens [N,T], and per probe a list of (caption index, token position, label)."""
    rows: dict[str, list] = {p: [] for p in PROBES + PICKS}
    for n, (s, desc) in enumerate(zip(scenes, descriptors)):
        starts = word_starts(tokenizer, s.words)
        colour_tokens = [starts[c] for _, c in s.pairs]  # candidates of the pick probes
        for target, (noun_pos, colour_pos) in enumerate(s.pairs):
            if desc is None:
                rows["noun picks colour"].append((n, colour_tokens, target, NOUNS.index(s.words[noun_pos])))
            else:
                k = next((k for k in range(2) if s.objects[k].colour == s.words[colour_pos]), None)
                if k is not None:
                    rows["location picks colour"].append((n, colour_tokens, target, LOCATIONS.index(desc[k])))
        for noun_pos, colour_pos in s.pairs:
            noun, colour = s.words[noun_pos], s.words[colour_pos]
            rows["colour->noun"].append((n, starts[colour_pos], NOUNS.index(noun)))
            rows["noun->colour"].append((n, starts[noun_pos], synthetic.COLOURS.index(colour)))
            if desc is not None:
                k = next((k for k in range(2) if s.objects[k].colour == colour), None)
                if k is not None:
                    rows["colour->location"].append((n, starts[colour_pos], LOCATIONS.index(desc[k])))
                    where = _phrase_word(s.words, colour_pos, desc[k])
                    rows["location->colour"].append((n, starts[where], synthetic.COLOURS.index(colour)))
    return tokenizer.encode_batch([s.caption for s in scenes]), rows


def _fit_and_score_picks(features_train, train_rows, features_test, test_rows, queries: int, steps: int = 300) -> float:
    """A learnt vector per query word scores each candidate token; -> share of test rows whose best is the target."""
    def arrays(features, rows):
        x = torch.zeros(len(rows), _MAX_COLOURS, features.shape[-1])
        valid = torch.zeros(len(rows), _MAX_COLOURS, dtype=torch.bool)
        for r, (n, cands, _, _) in enumerate(rows):
            x[r, : len(cands)] = features[n, cands]
            valid[r, : len(cands)] = True
        return x, valid, torch.tensor([t for *_, t, _ in rows]), torch.tensor([q for *_, q in rows])

    x_tr, v_tr, t_tr, q_tr = arrays(features_train, train_rows)
    x_te, v_te, t_te, q_te = arrays(features_test, test_rows)
    flat = x_tr[v_tr]
    mean, std = flat.mean(0), flat.std(0) + 1e-6
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(queries, x_tr.shape[-1]))
    opt = torch.optim.Adam([w], lr=0.05, weight_decay=1e-4)

    def scores(x, valid, q):
        s = (((x - mean) / std) * w[q].unsqueeze(1)).sum(-1)  # [N,C]
        return s.masked_fill(~valid, -1e4)

    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(scores(x_tr, v_tr, q_tr), t_tr).backward()
        opt.step()
    with torch.no_grad():
        return float((scores(x_te, v_te, q_te).argmax(1) == t_te).float().mean())


def _phrase_word(words: tuple[str, ...], colour_pos: int, word: str) -> int:
    """Position of ``word`` in the phrase of the colour word at ``colour_pos`` (the nearest occurrence)."""
    spots = [i for i, w in enumerate(words) if w == word]
    return min(spots, key=lambda i: abs(i - colour_pos))


def _scenes(seed: int, split: str, count: int, size: int, words: int):
    plain = synthetic.make_scenes(seed, split, 0, count, size, words)
    inst = instances.make_instance_scenes(seed, split, 0, count, size, words)
    return plain + [i.scene for i in inst], [None] * len(plain) + [i.descriptors for i in inst]


@torch.no_grad()
def _features(model, tokens: np.ndarray, contextual: bool) -> torch.Tensor:
    lang = model.fusion.language
    t = torch.from_numpy(tokens)
    if contextual:
        return lang(t)[0]  # [N,T,D]
    return lang.embed_norm(lang.embed(t) + lang.pos)  # [N,T,D] what the first block reads


def _fit_and_score(x_train, y_train, x_test, y_test, classes: int, steps: int = 300) -> float:
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    torch.manual_seed(0)
    probe = torch.nn.Linear(x_train.shape[1], classes)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(x_train), y_train).backward()
        opt.step()
    with torch.no_grad():
        return float((probe(x_test).argmax(1) == y_test).float().mean())


def probe_language(model, tokenizer: CaptionTokenizer, seed: int = 0, train_scenes: int = 1500,
                   test_scenes: int = 300) -> dict[str, float]:
    """-> {"probe colour->noun": acc, ..., "control colour->noun": acc, ...} on test captions."""
    cfg = model.cfg
    model.eval()
    size, words = cfg.image_size, max_words(cfg)
    train = _examples(*_scenes(seed, "train", train_scenes, size, words), tokenizer)
    test = _examples(*_scenes(seed, "test", test_scenes, size, words), tokenizer)
    classes = {"colour->noun": len(NOUNS), "colour->location": len(LOCATIONS), "noun->colour": len(synthetic.COLOURS),
               "location->colour": len(synthetic.COLOURS)}
    figures = {}
    for contextual, prefix in ((True, "probe"), (False, "control")):
        f_train, f_test = _features(model, train[0], contextual), _features(model, test[0], contextual)
        for name in PROBES:
            (i, t, y), (j, u, z) = np.array(train[1][name]).T, np.array(test[1][name]).T
            figures[f"{prefix} {name}"] = _fit_and_score(
                f_train[i, t], torch.from_numpy(y), f_test[j, u], torch.from_numpy(z), classes[name])
        for name, queries in zip(PICKS, (len(LOCATIONS), len(NOUNS))):
            figures[f"{prefix} {name}"] = _fit_and_score_picks(f_train, train[1][name], f_test, test[1][name], queries)
    return figures
