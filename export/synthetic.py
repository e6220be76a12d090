"""Seeded synthetic scenes: coloured shapes on a background, a caption, and the ground truth to score it.

The gray level never gives the colour away: each object's and the background's luminance is drawn
independently of its named colour, so only the caption can say which colour a shape should take.
Scenes are drawn directly in CIELab (L for the input, ab for the target), so "yellow" at L = 35 is a
dark olive in RGB but still yellow's chroma in ab.

Some colour-object pairs (``HELD_OUT``) never occur in a training scene; the ``heldout`` split puts at
least one of them in every scene, to measure colour-object coupling as the paper does ("purple horse").
Scene ``i`` of a split depends only on ``(seed, split, i)``, so a training run can resume mid-stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Palette: colour name -> (a*, b*) in Lab units. Pairwise distances >= 36 so the nearest colour is clear.
PALETTE: dict[str, tuple[float, float]] = {
    "red": (62.0, 45.0),
    "orange": (35.0, 68.0),
    "yellow": (-6.0, 78.0),
    "green": (-52.0, 45.0),
    "blue": (12.0, -58.0),
    "purple": (48.0, -42.0),
    "pink": (48.0, 2.0),
    "brown": (18.0, 30.0),
    "gray": (0.0, 0.0),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "ring", "cross")
BACKGROUND = "background"
# Never drawn in a training scene; each colour and each shape still occurs in other pairs.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("circle", "purple"), ("square", "yellow"), ("triangle", "blue"), ("diamond", "red"), ("circle", "orange")}
)
SPLITS = {"train": 0, "test": 1, "heldout": 2}

L_OBJECT = (28.0, 88.0)  # luminance ranges, independent of colour
L_BACKGROUND = (20.0, 92.0)
MIN_L_CONTRAST = 12.0  # object vs background, so every shape has a visible edge
AB_JITTER = 3.0  # per-object chroma jitter around the palette value, Lab units


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    mentioned: bool  # the caption names this object's colour


@dataclass(frozen=True)
class Scene:
    L: np.ndarray  # float32 [S,S], CIE L in [0, 100]
    ab: np.ndarray  # float32 [2,S,S], ground-truth a*, b*
    masks: np.ndarray  # bool [K,S,S], one per object, in `objects` order (visible pixels only)
    objects: tuple[SceneObject, ...]
    background: str  # the background's colour
    background_mentioned: bool
    caption: str
    words: tuple[str, ...]  # caption words (lowercase, no punctuation), positions index the OCCM
    pairs: tuple[tuple[int, int], ...]  # (noun word position, colour word position)

    @property
    def background_mask(self) -> np.ndarray:  # bool [S,S]
        return ~self.masks.any(0)

    def occm_target(self, max_tokens: int) -> np.ndarray:
        """Ground-truth OCCM, float32 [T,T]: 1 at (noun i, colour word j)."""
        target = np.zeros((max_tokens, max_tokens), dtype=np.float32)
        for i, j in self.pairs:
            target[i, j] = 1.0
        return target


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), SPLITS[split], int(index)])


def shape_mask(shape: str, cy: float, cx: float, r: float, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        h = r * 0.85
        return (np.abs(dy) <= h) & (np.abs(dx) <= h)
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= r * 1.15
    if shape == "ring":
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if shape == "cross":
        arm = 0.38 * r
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    if shape == "triangle":  # apex up, base at cy + r/2
        top, base = cy - r, cy + 0.6 * r
        half = (dy + r) / (1.6 * r) * r * 1.05  # half width grows from apex to base
        return (yy >= top) & (yy <= base) & (np.abs(dx) <= half)
    raise ValueError(shape)


def _assign_colours(rng: np.random.Generator, shapes: list[str], split: str) -> list[str]:
    """Distinct colours; training never uses a held-out pair, 'heldout' forces at least one."""
    for _ in range(100):
        colours = [str(c) for c in rng.choice(COLOURS, size=len(shapes), replace=False)]
        held = [(s, c) in HELD_OUT for s, c in zip(shapes, colours)]
        if split in ("train", "test") and not any(held):
            return colours
        if split == "heldout" and any(held):
            return colours
    # Force one held-out pair on the first shape that has one (every shape has at least one).
    first = next(k for k, s in enumerate(shapes) if any(h[0] == s for h in HELD_OUT))
    colours[first] = str(rng.choice(sorted(c for s, c in HELD_OUT if s == shapes[first])))
    rest = [c for c in COLOURS if c != colours[first]]
    for k in range(len(shapes)):
        if k != first:
            colours[k] = str(rng.choice(rest))
            rest.remove(colours[k])
    return colours


def _place(rng: np.random.Generator, n: int, size: int) -> list[tuple[float, float, float]]:
    """Up to n non-overlapping (cy, cx, r), radius 14-24% of the image side."""
    placed: list[tuple[float, float, float]] = []
    for _ in range(200):
        if len(placed) == n:
            break
        r = rng.uniform(0.14, 0.24) * size
        cy, cx = rng.uniform(r, size - r, size=2)
        if all((cy - y) ** 2 + (cx - x) ** 2 >= (r + q + 1.0) ** 2 for y, x, q in placed):
            placed.append((float(cy), float(cx), float(r)))
    return placed


# ---------------------------------------------------------------------------------------- captions
def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def phrase(rng, colour: str, noun: str, style: int) -> list[str]:
    """Word list naming one noun's colour; the colour word precedes or follows the noun."""
    if style == 0:
        return [article(colour), colour, noun]
    if style == 1:
        return ["the", colour, noun]
    if style == 2:
        return ["the", noun, "is", colour]
    return [colour, noun]


def _caption(rng: np.random.Generator, named: list[tuple[str, str]], bg: str | None, max_tokens: int):
    """-> (caption text, words, pairs); tries shorter forms until it fits in max_tokens words."""
    for attempt in range(6):
        style = int(rng.integers(0, 4)) if attempt < 3 else 3
        words: list[str] = []
        pairs: list[tuple[int, int]] = []
        pieces: list[str] = []
        for k, (noun, colour) in enumerate(named):
            if k:
                joiner = ["and"] if (k == len(named) - 1 or rng.random() < 0.5) else [","]
                if joiner != [","]:
                    words += joiner
                    pieces += joiner
                else:
                    pieces[-1] += ","
            part = phrase(rng, colour, noun, style)
            start = len(words)
            words += part
            pieces += part
            pairs.append((start + part.index(noun), start + part.index(colour)))
        if bg is not None:
            form = int(rng.integers(0, 3)) if attempt < 3 else 2
            if form == 0 and named:
                tail = ["on", article(bg), bg, BACKGROUND]
            elif form == 1 or not named:
                tail = ["the", BACKGROUND, "is", bg] if not named else ["and", "the", BACKGROUND, "is", bg]
            else:
                tail = [bg, BACKGROUND]
            start = len(words)
            words += tail
            pieces += tail
            pairs.append((start + tail.index(BACKGROUND), start + tail.index(bg)))
        if len(words) <= max_tokens:
            return " ".join(pieces), tuple(words), tuple(pairs)
    raise ValueError(f"no caption form fits {max_tokens} words for {named} + {bg}")


# ------------------------------------------------------------------------------------------ scenes
def make_scene(seed: int, split: str, index: int, image_size: int, max_tokens: int) -> Scene:
    """Scene ``index`` of ``split`` ("train", "test" or "heldout"); deterministic in its arguments."""
    rng = _rng(seed, split, index)
    size = image_size
    n = int(rng.integers(1, 4))  # 1-3 objects, distinct shapes so every noun names one object
    shapes = [str(s) for s in rng.choice(SHAPES, size=n, replace=False)]
    spots = _place(rng, n, size)
    shapes = shapes[: len(spots)]
    held_shapes = sorted({shape for shape, _ in HELD_OUT})
    if split == "heldout" and not set(shapes) & set(held_shapes):  # e.g. only a ring: swap in one that has a held-out pair
        shapes[0] = str(rng.choice(held_shapes))
    colours = _assign_colours(rng, shapes, split)
    bg_colour = str(rng.choice([c for c in COLOURS if c not in colours]))

    bg_l = rng.uniform(*L_BACKGROUND)
    L = np.full((size, size), bg_l, dtype=np.float32)
    ab = np.empty((2, size, size), dtype=np.float32)
    ab[0], ab[1] = PALETTE[bg_colour]
    gy, gx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    L += (rng.uniform(-6, 6) * gy + rng.uniform(-6, 6) * gx).astype(np.float32)  # soft background light

    masks = np.zeros((len(shapes), size, size), dtype=bool)
    for k, (shape, colour, (cy, cx, r)) in enumerate(zip(shapes, colours, spots)):
        m = shape_mask(shape, cy, cx, r, size)
        while True:  # luminance independent of colour, but with a visible edge
            obj_l = rng.uniform(*L_OBJECT)
            if abs(obj_l - bg_l) >= MIN_L_CONTRAST:
                break
        shade = rng.uniform(-5, 5) * (gy - (cy / size - 0.5)) / 0.25  # a little shading across the object
        L[m] = (obj_l + shade)[m]
        jitter = rng.uniform(-AB_JITTER, AB_JITTER, size=2)
        ab[0][m] = PALETTE[colour][0] + jitter[0]
        ab[1][m] = PALETTE[colour][1] + jitter[1]
        masks[k] = m
    L += rng.normal(0.0, 1.0, size=L.shape).astype(np.float32)  # sensor noise
    np.clip(L, 0.0, 100.0, out=L)

    # Which colours the caption names: all, some, or none of the objects; the background often.
    order = rng.permutation(len(shapes))
    n_named = int(rng.integers(1, len(shapes) + 1)) if rng.random() < 0.85 else 0
    named_idx = order[:n_named].tolist()  # mentioned in this random order
    if split == "heldout":  # every held-out pair is named, so each scene tests coupling
        named_idx += [k for k in order.tolist() if (shapes[k], colours[k]) in HELD_OUT and k not in named_idx]
    mention_bg = rng.random() < (0.5 if n_named else 1.0)
    named = [(shapes[k], colours[k]) for k in named_idx]
    caption, words, pairs = _caption(rng, named, bg_colour if mention_bg else None, max_tokens)

    objects = tuple(SceneObject(s, c, k in named_idx) for k, (s, c) in enumerate(zip(shapes, colours)))
    return Scene(L, ab, masks, objects, bg_colour, bool(mention_bg), caption, words, pairs)


def make_scenes(seed: int, split: str, start: int, count: int, image_size: int, max_tokens: int) -> list[Scene]:
    return [make_scene(seed, split, i, image_size, max_tokens) for i in range(start, start + count)]


def training_captions(seed: int, count: int, image_size: int, max_tokens: int) -> list[str]:
    """Captions of the first ``count`` training scenes: the tokenizer's vocabulary comes from these."""
    return [s.caption for s in make_scenes(seed, "train", 0, count, image_size, max_tokens)]


def stack(scenes: list[Scene], token_ids: np.ndarray, max_tokens: int) -> dict[str, np.ndarray]:
    """Batch arrays for training: L [B,1,S,S], ab [B,2,S,S], objects [B,1,S,S], tokens [B,T], occm [B,T,T]."""
    return {
        "L": np.stack([s.L for s in scenes])[:, None],
        "ab": np.stack([s.ab for s in scenes]),
        "objects": np.stack([s.masks.any(0) for s in scenes])[:, None].astype(np.float32),
        "tokens": token_ids.astype(np.int64),
        "occm": np.stack([s.occm_target(max_tokens) for s in scenes]),
    }
