"""Seeded instance scenes: two instances of one shape in different colours, told apart by the caption.

"the left square is red and the right square is blue", "a small pink circle and a big green
circle": each instance is named by position (left/right, top/bottom) or by size (small/big), so a
model has to tie a colour to *one* of two identical nouns. A third object of another shape is
sometimes added (named or not), and the background is often named.

Unlike ``synthetic.make_scene``, luminance here follows the usual correlation between colour and
gray level (yellow bright, blue dark; ``NATURAL_L``) in most training scenes, and contradicts it
(yellow dark, blue bright) in the rest: the case luminance augmentation is for. The test split has
half of each, flagged per scene. Held-out colour-object pairs (``synthetic.HELD_OUT``) never occur.

Scene ``i`` depends only on ``(seed, split, i)`` and uses its own random stream (a four-part seed),
so ``synthetic.make_scene`` output is unchanged for every seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import synthetic
from .synthetic import BACKGROUND, COLOURS, HELD_OUT, PALETTE, SHAPES, SPLITS, Scene, SceneObject

# Typical CIE L of each colour in photographs: the correlation a model could exploit instead of the words.
NATURAL_L: dict[str, float] = {
    "yellow": 86.0, "pink": 74.0, "orange": 68.0, "gray": 56.0, "green": 54.0,
    "red": 46.0, "brown": 38.0, "purple": 36.0, "blue": 32.0,
}
POSITIONS = {"x": ("left", "right"), "y": ("top", "bottom")}
SIZES = ("small", "big")
CONTRADICT_RATE = {"train": 0.25, "test": 0.5}
_STREAM = 1  # fourth seed part: instance scenes never share a random stream with make_scene


@dataclass(frozen=True)
class InstanceScene:
    scene: Scene  # objects[:2] are the two instances; descriptors name them
    descriptors: tuple[str, ...]  # per instance: "left"/"right"/"top"/"bottom"/"small"/"big"
    contradicts: bool  # the instances' gray levels go against NATURAL_L
    kind: str  # "position" or "size"


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), SPLITS[split], int(index), _STREAM])


def _fits(spot, placed, size) -> bool:
    cy, cx, r = spot
    inside = r <= cy <= size - r and r <= cx <= size - r
    return inside and all((cy - y) ** 2 + (cx - x) ** 2 >= (r + q + 1.5) ** 2 for y, x, q in placed)


def _place_instances(rng, kind: str, axis: str, size: int):
    """Two (cy, cx, r): clearly apart along ``axis`` (position) or clearly different radii (size)."""
    for _ in range(500):
        if kind == "size":
            radii = [rng.uniform(0.09, 0.12) * size, rng.uniform(0.19, 0.24) * size]
        else:
            radii = list(rng.uniform(0.12, 0.18, size=2) * size)
        spots = [(float(rng.uniform(r, size - r)), float(rng.uniform(r, size - r)), float(r)) for r in radii]
        if not _fits(spots[1], spots[:1], size):
            continue
        if kind == "position":
            k = 1 if axis == "x" else 0
            spots.sort(key=lambda s: s[k])  # first = left / top
            if spots[1][k] - spots[0][k] < 0.3 * size:
                continue
        return spots
    raise RuntimeError("could not place two instances")  # never happens at the sizes used


def _instance_phrase(rng, d: str, colour: str, shape: str, kind: str, short: bool) -> list[str]:
    form = 1 if short else int(rng.integers(0, 3))
    if form == 0:
        return ["the", d, shape, "is", colour]
    if form == 1 or kind == "size":
        return ["the" if kind == "position" else synthetic.article(d), d, colour, shape]
    return ["the", colour, shape, "on", "the", d]


def _caption(rng, instances, extra, bg: str | None, kind: str, max_words: int):
    """-> (text, words, pairs, extra_named, bg_named); drops the extra object, then the background,
    then uses short forms until the caption fits in ``max_words``."""
    for attempt in range(8):
        use_extra = extra is not None and attempt < 3
        use_bg = bg is not None and attempt < 5
        short = attempt >= 5
        words: list[str] = []
        pairs: list[tuple[int, int]] = []
        for k, (d, colour, shape) in enumerate(instances):
            if k:
                words.append("and")
            phrase = _instance_phrase(rng, d, colour, shape, kind, short)
            pairs.append((len(words) + phrase.index(shape), len(words) + phrase.index(colour)))
            words += phrase
        if use_extra:
            phrase = ["and"] + synthetic.phrase(rng, extra[1], extra[0], int(rng.integers(0, 4)))
            pairs.append((len(words) + phrase.index(extra[0]), len(words) + phrase.index(extra[1])))
            words += phrase
        if use_bg:
            if short or rng.random() < 0.5:
                tail = ["on", synthetic.article(bg), bg, BACKGROUND]
            else:
                tail = ["and", "the", BACKGROUND, "is", bg]
            pairs.append((len(words) + tail.index(BACKGROUND), len(words) + tail.index(bg)))
            words += tail
        if len(words) <= max_words:
            return " ".join(words), tuple(words), tuple(pairs), use_extra, use_bg
    raise ValueError(f"no caption fits {max_words} words")


def _colours(rng, shapes: list[str], n: int) -> list[str]:
    for _ in range(200):
        colours = [str(c) for c in rng.choice(COLOURS, size=n, replace=False)]
        if not any((s, c) in HELD_OUT for s, c in zip(shapes, colours)):
            return colours
    raise RuntimeError("no colours without a held-out pair")


def make_instance_scene(seed: int, split: str, index: int, image_size: int, max_words: int) -> InstanceScene:
    """Instance scene ``index`` of ``split`` ("train" or "test"); deterministic in its arguments."""
    if split not in CONTRADICT_RATE:
        raise ValueError(f"instance scenes have splits {tuple(CONTRADICT_RATE)}, not {split!r}")
    rng = _rng(seed, split, index)
    size = image_size
    shape = str(rng.choice(SHAPES))
    kind = "position" if rng.random() < 0.6 else "size"
    axis = "x" if rng.random() < 0.7 else "y"
    spots = _place_instances(rng, kind, axis, size)
    descriptors = list(POSITIONS[axis]) if kind == "position" else list(SIZES)
    shapes = [shape, shape]
    if rng.random() < 0.5:  # a third object of another shape
        r = rng.uniform(0.10, 0.15) * size
        for _ in range(100):
            spot = (float(rng.uniform(r, size - r)), float(rng.uniform(r, size - r)), float(r))
            if _fits(spot, spots, size):
                spots.append(spot)
                shapes.append(str(rng.choice([s for s in SHAPES if s != shape])))
                break
    colours = _colours(rng, shapes, len(shapes))
    bg_colour = str(rng.choice([c for c in COLOURS if c not in colours]))
    contradicts = bool(rng.random() < CONTRADICT_RATE[split])

    def object_l(colour: str) -> float:
        natural = NATURAL_L[colour]
        centre = 100.0 - natural if contradicts else natural  # yellow dark, blue bright when contradicting
        return float(np.clip(centre + rng.uniform(-6, 6), 22.0, 92.0))

    obj_ls = [object_l(c) for c in colours]
    for _ in range(200):  # every object keeps a visible edge against the background
        bg_l = float(rng.uniform(15.0, 95.0))
        if all(abs(v - bg_l) >= synthetic.MIN_L_CONTRAST for v in obj_ls):
            break
    L = np.full((size, size), bg_l, dtype=np.float32)
    ab = np.empty((2, size, size), dtype=np.float32)
    ab[0], ab[1] = PALETTE[bg_colour]
    masks = np.zeros((len(shapes), size, size), dtype=bool)
    for k, (s, colour, (cy, cx, r), obj_l) in enumerate(zip(shapes, colours, spots, obj_ls)):
        m = synthetic.shape_mask(s, cy, cx, r, size)
        L[m] = obj_l
        jitter = rng.uniform(-synthetic.AB_JITTER, synthetic.AB_JITTER, size=2)
        ab[0][m] = PALETTE[colour][0] + jitter[0]
        ab[1][m] = PALETTE[colour][1] + jitter[1]
        masks[k] = m
    L += rng.normal(0.0, 1.0, size=L.shape).astype(np.float32)
    np.clip(L, 0.0, 100.0, out=L)

    order = [0, 1] if rng.random() < 0.5 else [1, 0]  # which instance the caption names first
    instances = [(descriptors[k], colours[k], shape) for k in order]
    extra = (shapes[2], colours[2]) if len(shapes) > 2 and rng.random() < 0.5 else None
    bg = bg_colour if rng.random() < 0.5 else None
    caption, words, pairs, extra_named, bg_named = _caption(rng, instances, extra, bg, kind, max_words)
    objects = tuple(SceneObject(s, c, k < 2 or extra_named) for k, (s, c) in enumerate(zip(shapes, colours)))
    scene = Scene(L, ab, masks, objects, bg_colour, bg_named, caption, words, pairs)
    return InstanceScene(scene, tuple(descriptors), contradicts, kind)


def make_instance_scenes(seed: int, split: str, start: int, count: int, image_size: int, max_words: int):
    return [make_instance_scene(seed, split, i, image_size, max_words) for i in range(start, start + count)]


def swap_instance_colours(inst: InstanceScene) -> tuple[str, tuple[str, str]]:
    """The same caption with the two instances' colours exchanged; -> (caption, new instance colours)."""
    a, b = inst.scene.objects[0].colour, inst.scene.objects[1].colour
    words = [b if w == a else a if w == b else w for w in inst.scene.words]
    for i, w in enumerate(words[1:], 1):  # keep articles grammatical
        if words[i - 1] in ("a", "an") and w in COLOURS:
            words[i - 1] = synthetic.article(w)
    return " ".join(words), (b, a)
