"""Does the network follow the caption? Scored on held-out synthetic scenes, beside a caption-free baseline.

Every figure is given twice: for the model with its caption and for the same network fed an
all-padding caption (the caption-free baseline), on the same gray images.

- caption following: share of named objects whose mean predicted ab inside the object mask is
  nearest (among the palette) to the named colour; ``seen`` on the test split (pairs seen in
  training), ``heldout`` for the colour-object pairs that never occur in training;
- background following: the same for a background whose colour the caption names;
- swap: the same gray image with every named colour replaced by another; share that follows the new one;
- mismatch: share of objects the caption does not name whose nearest palette colour is one the
  caption names for something else (lower is better; their true colour never is);
- PSNR (dB) and SSIM of the RGB image (true L + predicted ab) against the ground truth;
- instance accuracy (``instances.make_instance_scene``, test split): two instances of one shape,
  each named its own colour by position or size; share of instances whose predicted colour is the
  one named for *that* instance, over all instances, per scene (both right), on scenes whose gray
  levels follow or contradict the usual colour-luminance correlation, and with the two colours
  swapped in the caption. A model that cannot tell instances apart is capped near 50%. Also split
  by how far apart the two instances' gray levels are: ``distinct`` (median L at least
  ``synthetic.MIN_L_CONTRAST`` apart, a visible edge between them), ``similar``, and ``position only``
  (similar gray levels, named by position: nothing but where they are tells them apart);
- ``diagnostics``: figures a family's own evaluation adds (name -> value), printed after the rest.

Every caption family is scored on the same scenes: captions are drawn with at most ``max_words``
words (T = 16), and words a word-level tokenizer does not know are counted in ``unknown_words``.
A family's ``evaluation`` module exposes ``evaluate(model, conditioner, scenes, seed)``; caption
families use this one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from langcolor.client.lab import lab_to_rgb
from langcolor.client.spec import PAD_ID
from langcolor.client.tokenizer import CaptionTokenizer

from . import instances, synthetic

_PALETTE_AB = np.array([synthetic.PALETTE[c] for c in synthetic.COLOURS], dtype=np.float32)  # [K,2]


@dataclass(frozen=True)
class Score:
    model: float
    baseline: float  # the same network with an all-padding caption
    count: int  # objects (or images) scored


@dataclass(frozen=True)
class EvalReport:
    scenes: int  # per split
    seed: int
    seen: Score
    heldout: Score
    background: Score
    swap: Score
    mismatch: Score  # lower is better
    psnr: Score
    ssim: Score
    heldout_pairs: dict  # "colour shape" -> Score, caption following per held-out pair
    instance: Score  # instance accuracy, per instance
    instance_scenes: Score  # both instances of a scene right
    instance_natural: Score  # per instance, gray levels as usual (yellow bright, blue dark)
    instance_contradicting: Score  # per instance, gray levels against the usual correlation
    instance_swap: Score  # per instance, the two instance colours exchanged in the caption
    instance_by_kind: dict  # "position" / "size" -> Score
    unknown_words: dict  # word -> captions (test + instance) where the tokenizer did not know it
    instance_by_gray: dict = field(default_factory=dict)  # "distinct" / "similar" / "position only" -> Score
    diagnostics: dict = field(default_factory=dict)  # name -> float, added by a family's own evaluation

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary_lines(self) -> list[str]:
        """The figures as `langcolor evaluate` prints them, model beside the caption-free baseline."""
        lines = [_row("caption following seen", self.seen), _row("caption following held", self.heldout)]
        lines += [_row(f"  held: {pair}", score) for pair, score in self.heldout_pairs.items()]
        lines += [
            _row("background following", self.background),
            _row("swap test", self.swap),
            _row("mismatch (lower=better)", self.mismatch),
            _row("PSNR dB", self.psnr, percent=False),
            _row("SSIM", self.ssim, percent=False),
            _row("instance accuracy", self.instance),
            _row("  both instances right", self.instance_scenes),
            _row("  usual gray levels", self.instance_natural),
            _row("  contradicting gray", self.instance_contradicting),
        ]
        lines += [_row(f"  by {kind}", score) for kind, score in self.instance_by_kind.items()]
        lines += [_row(f"  {split} gray" if split != "position only" else f"  {split}", score)
                  for split, score in self.instance_by_gray.items()]
        lines.append(_row("instance swap test", self.instance_swap))
        lines += [f"  {name:<22} {value:7.3f}" for name, value in self.diagnostics.items()]
        if self.unknown_words:
            shown = ", ".join(f"{w} ({n})" for w, n in list(self.unknown_words.items())[:10])
            lines.append(f"  words unknown to the tokenizer (captions): {shown}")
        return lines

    # Figures compared side by side when several checkpoints are evaluated together.
    HEADLINE = ("seen", "heldout", "swap", "instance", "instance_scenes", "instance_contradicting")


def _row(name: str, score: Score, percent: bool = True) -> str:
    fmt = (lambda v: f"{100 * v:6.1f}%") if percent else (lambda v: f"{v:7.3f}")
    return f"  {name:<22} {fmt(score.model)}   baseline {fmt(score.baseline)}   (n={score.count})"


@torch.no_grad()
def predict_ab(model: torch.nn.Module, L: np.ndarray, tokens: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """L [N,1,S,S] in [0,100], tokens int64 [N,T] -> ab float32 [N,2,S,S]."""
    model.eval()
    out = []
    for i in range(0, len(L), batch_size):
        ab, _ = model(torch.from_numpy(L[i : i + batch_size]), torch.from_numpy(tokens[i : i + batch_size]))
        out.append(ab.numpy())
    return np.concatenate(out) if out else np.zeros((0, 2, *L.shape[2:]), np.float32)


def nearest_colour(mean_ab: np.ndarray) -> str:
    """(a, b) -> the palette colour nearest in ab."""
    return synthetic.COLOURS[int(np.argmin(((_PALETTE_AB - mean_ab) ** 2).sum(-1)))]


def _region_colour(ab: np.ndarray, mask: np.ndarray) -> str:  # ab [2,S,S], mask bool [S,S]
    return nearest_colour(ab[:, mask].mean(1))


def swap_caption(scene: synthetic.Scene, rng: np.random.Generator) -> tuple[str, dict[str, str]]:
    """Replace every named colour by a different one (never a held-out pair); -> (caption, noun -> colour)."""
    words = list(scene.words)
    taken = {o.colour for o in scene.objects} | {scene.background}
    new_colours: dict[str, str] = {}
    for noun_pos, colour_pos in scene.pairs:
        noun = words[noun_pos]
        choices = [c for c in synthetic.COLOURS if c not in taken and (noun, c) not in synthetic.HELD_OUT]
        new = str(rng.choice(choices))
        taken.add(new)
        words[colour_pos] = new
        new_colours[noun] = new
        if colour_pos > 0 and words[colour_pos - 1] in ("a", "an"):  # keep the article grammatical
            words[colour_pos - 1] = "an" if new[0] in "aeiou" else "a"
    return " ".join(words), new_colours


def ssim(x: np.ndarray, y: np.ndarray, win: int = 7, data_range: float = 1.0) -> float:
    """Mean SSIM of two [H,W,C] images (Wang et al. 2004), uniform 7x7 window, sample covariance,
    averaged over channels: the same definition as skimage.metrics.structural_similarity's defaults."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    n = win * win
    cov_norm = n / (n - 1)
    vals = []
    for ch in range(x.shape[-1]):
        a, b = x[..., ch].astype(np.float64), y[..., ch].astype(np.float64)
        mu_a, mu_b = _box(a, win), _box(b, win)
        va = cov_norm * (_box(a * a, win) - mu_a**2)
        vb = cov_norm * (_box(b * b, win) - mu_b**2)
        cab = cov_norm * (_box(a * b, win) - mu_a * mu_b)
        s = ((2 * mu_a * mu_b + c1) * (2 * cab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
        pad = (win - 1) // 2
        vals.append(s[pad:-pad, pad:-pad].mean())  # skimage crops the border the window does not cover
    return float(np.mean(vals))


def _box(img: np.ndarray, win: int) -> np.ndarray:
    """Mean over a win x win window centred on each pixel (reflect padding), as scipy's uniform_filter."""
    pad = win // 2
    p = np.pad(img, pad, mode="symmetric")
    c = np.cumsum(np.cumsum(p, 0), 1)
    c = np.pad(c, ((1, 0), (1, 0)))
    h, w = img.shape
    total = c[win : win + h, win : win + w] - c[:h, win : win + w] - c[win : win + h, :w] + c[:h, :w]
    return total / (win * win)


def psnr(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> float:
    mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def _rgb(L: np.ndarray, ab: np.ndarray) -> np.ndarray:  # L [S,S], ab [2,S,S] -> rgb [S,S,3]
    return lab_to_rgb(np.concatenate([L[..., None], ab.transpose(1, 2, 0)], axis=-1))


def _fraction(hits: list[bool]) -> float:
    return float(np.mean(hits)) if hits else float("nan")


def max_words(cfg) -> int:
    """Caption length of the evaluation scenes, in words: the same for both families (16)."""
    return int(getattr(cfg, "max_words", cfg.max_tokens))


def _unknown_words(tokenizer: CaptionTokenizer, captions: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for caption in captions:
        for word in set(tokenizer.encode(caption).unknown):
            counts[word] = counts.get(word, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def evaluate(model: torch.nn.Module, conditioner, scenes: int = 256, seed: int = 0) -> EvalReport:
    """Score a caption family's network; ``conditioner`` is its ``CaptionConditioner`` (the tokenizer)."""
    tokenizer: CaptionTokenizer = conditioner.tokenizer
    cfg = model.cfg
    size, T = cfg.image_size, max_words(cfg)
    test = synthetic.make_scenes(seed, "test", 0, scenes, size, T)
    held = synthetic.make_scenes(seed, "heldout", 0, scenes, size, T)
    rng = np.random.default_rng([seed, 99])
    swaps = [swap_caption(s, rng) for s in test]

    def run(scene_list, captions):
        L = np.stack([s.L for s in scene_list])[:, None]  # [N,1,S,S]
        tokens = tokenizer.encode_batch(captions)  # [N,T]
        blank = np.full_like(tokens, PAD_ID)
        return predict_ab(model, L, tokens), predict_ab(model, L, blank)

    test_ab, test_base = run(test, [s.caption for s in test])
    held_ab, held_base = run(held, [s.caption for s in held])
    swap_ab, _ = run(test, [c for c, _ in swaps])

    hits: dict[str, list[bool]] = {k: [] for k in ("seen", "seen0", "held", "held0", "bg", "bg0", "swap", "swap0", "mis", "mis0")}
    for s, ab, base, sab, (_, new) in zip(test, test_ab, test_base, swap_ab, swaps):
        named = {o.colour for o in s.objects if o.mentioned} | ({s.background} if s.background_mentioned else set())
        for o, m in zip(s.objects, s.masks):
            if not m.any():
                continue
            got, got0 = _region_colour(ab, m), _region_colour(base, m)
            if o.mentioned:
                hits["seen"].append(got == o.colour)
                hits["seen0"].append(got0 == o.colour)
                hits["swap"].append(_region_colour(sab, m) == new[o.shape])
                hits["swap0"].append(got0 == new[o.shape])
            elif named:
                hits["mis"].append(got in named)
                hits["mis0"].append(got0 in named)
        if s.background_mentioned:
            bg = s.background_mask
            hits["bg"].append(_region_colour(ab, bg) == s.background)
            hits["bg0"].append(_region_colour(base, bg) == s.background)
    per_pair: dict[str, tuple[list[bool], list[bool]]] = {}
    for s, ab, base in zip(held, held_ab, held_base):
        for o, m in zip(s.objects, s.masks):
            if o.mentioned and (o.shape, o.colour) in synthetic.HELD_OUT and m.any():
                hit, hit0 = _region_colour(ab, m) == o.colour, _region_colour(base, m) == o.colour
                hits["held"].append(hit)
                hits["held0"].append(hit0)
                pair = per_pair.setdefault(f"{o.colour} {o.shape}", ([], []))
                pair[0].append(hit)
                pair[1].append(hit0)

    inst = instances.make_instance_scenes(seed, "test", 0, scenes, size, T)
    inst_scenes = [i.scene for i in inst]
    swapped = [instances.swap_instance_colours(i) for i in inst]
    inst_ab, inst_base = run(inst_scenes, [s.caption for s in inst_scenes])
    inst_swap_ab, _ = run(inst_scenes, [c for c, _ in swapped])
    keys = ("inst", "both", "nat", "con", "iswap", "position", "size", "distinct", "similar", "position only")
    hits.update({k + z: [] for k in keys for z in ("", "0")})
    for i, ab, base, sab, (_, new) in zip(inst, inst_ab, inst_base, inst_swap_ab, swapped):
        both, both0 = True, True
        gap = abs(float(np.median(i.scene.L[i.scene.masks[0]])) - float(np.median(i.scene.L[i.scene.masks[1]])))
        gray = ["distinct"] if gap >= synthetic.MIN_L_CONTRAST else ["similar"] + (["position only"] if i.kind == "position" else [])
        for k in range(2):
            o, m = i.scene.objects[k], i.scene.masks[k]
            hit, hit0 = _region_colour(ab, m) == o.colour, _region_colour(base, m) == o.colour
            both, both0 = both and hit, both0 and hit0
            for key in ("inst", "con" if i.contradicts else "nat", i.kind, *gray):
                hits[key].append(hit)
                hits[key + "0"].append(hit0)
            hits["iswap"].append(_region_colour(sab, m) == new[k])
            hits["iswap0"].append(_region_colour(base, m) == new[k])
        hits["both"].append(both)
        hits["both0"].append(both0)
    unknown = _unknown_words(tokenizer, [s.caption for s in test] + [s.caption for s in inst_scenes])

    quality = {"psnr": ([], []), "ssim": ([], [])}
    for s, ab, base in zip(test, test_ab, test_base):
        truth = _rgb(s.L, s.ab)
        for pred, k in ((ab, 0), (base, 1)):
            rgb = _rgb(s.L, pred)
            quality["psnr"][k].append(psnr(rgb, truth))
            quality["ssim"][k].append(ssim(rgb, truth))

    def score(key: str) -> Score:
        return Score(_fraction(hits[key]), _fraction(hits[key + "0"]), len(hits[key]))

    def mean_score(key: str) -> Score:
        model_vals, base_vals = quality[key]
        return Score(float(np.mean(model_vals)), float(np.mean(base_vals)), len(model_vals))

    return EvalReport(
        scenes=scenes,
        seed=seed,
        seen=score("seen"),
        heldout=score("held"),
        background=score("bg"),
        swap=score("swap"),
        mismatch=score("mis"),
        psnr=mean_score("psnr"),
        ssim=mean_score("ssim"),
        heldout_pairs={k: Score(_fraction(v[0]), _fraction(v[1]), len(v[0])) for k, v in sorted(per_pair.items())},
        instance=score("inst"),
        instance_scenes=score("both"),
        instance_natural=score("nat"),
        instance_contradicting=score("con"),
        instance_swap=score("iswap"),
        instance_by_kind={k: score(k) for k in ("position", "size")},
        unknown_words=unknown,
        instance_by_gray={k: score(k) for k in ("distinct", "similar", "position only")},
    )
