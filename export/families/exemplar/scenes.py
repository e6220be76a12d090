"""Seeded synthetic exemplar pairs: shape classes whose colour is set per scene, drawn twice.

A scene gives each of its shape classes one colour of the project's palette. Target and reference
show the same classes in the same colours, in independent layouts (other positions, sizes, counts),
and every instance's L is drawn independently of its colour: neither the gray level nor the position
says which colour a shape has, only finding the same class in the reference does.

Each class also has a two-colour set (``CLASS_SETS``). ``mode="set"`` scenes colour each class with a
member of its set, ``mode="free"`` with any palette colour. A palette reference (``ref="palette"``) is
a few flat swatches with no shapes: only the bin classifier's class prior times the palette's
histogram (paper 003, eq. 2-4) can then pick the right member of the set. Training shows the bin
classifier set-mode scenes only (free colours would teach it a broad class -> colour distribution,
under which the palette's prior cannot single out the set member).

Reference kinds: ``scene`` (another layout), ``aligned`` (the target's own layout: for the
positional-copy check only, never for training), ``swap`` (another layout, the colours permuted among
the classes), ``palette`` and ``palette_swap`` (the other member of each class's set).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from langcolor.export.synthetic import PALETTE, shape_mask

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
CLASS_SETS: dict[str, tuple[str, str]] = {
    "circle": ("red", "blue"),
    "square": ("green", "yellow"),
    "triangle": ("orange", "purple"),
    "cross": ("pink", "brown"),
}
COLOURS: tuple[str, ...] = tuple(c for c in PALETTE if c != "gray")  # the background is gray
MODES = ("set", "free")
REFS = ("scene", "aligned", "swap", "palette", "palette_swap")
SPLITS = {"train": 0, "test": 1}
L_OBJECT = (35.0, 85.0)
L_BACKGROUND = (20.0, 92.0)
MIN_L_CONTRAST = 12.0  # object vs background: every shape has a visible edge
AB_JITTER = 3.0  # per-instance chroma jitter, Lab units
PALETTE_L = (50.0, 75.0)  # each swatch's flat lightness
MIN_INSTANCE_PIXELS = 4  # smaller (mostly hidden) instances are not scored


@dataclass(frozen=True)
class Instance:
    cls: str
    mask: np.ndarray  # bool [S, S], visible pixels


@dataclass(frozen=True)
class Pair:
    L: np.ndarray  # [S, S] target L
    ab: np.ndarray  # [2, S, S] target ab (the truth)
    ref_L: np.ndarray  # [S, S]
    ref_ab: np.ndarray  # [2, S, S]
    instances: tuple[Instance, ...]  # the target's
    colours: dict[str, str]  # class -> the colour the target truly has
    expected: dict[str, str]  # class -> the colour the reference asks for (differs from colours for swaps)


def _rng(seed: int, split: str, index: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), SPLITS[split], int(index), salt])


def _layout(rng: np.random.Generator, classes: list[str], size: int) -> list[tuple[str, float, float, float]]:
    """1-2 instances per class, non-overlapping where possible: (class, cy, cx, r), r 11-20% of the side."""
    wanted = [c for c in classes for _ in range(int(rng.integers(1, 3)))]
    rng.shuffle(wanted)
    placed: list[tuple[str, float, float, float]] = []
    for cls in wanted:
        for _ in range(100):
            r = rng.uniform(0.11, 0.20) * size
            cy, cx = rng.uniform(r, size - r, size=2)
            if all((cy - y) ** 2 + (cx - x) ** 2 >= (r + q + 1.0) ** 2 for _, y, x, q in placed):
                placed.append((cls, float(cy), float(cx), float(r)))
                break
    for cls in classes:  # every class at least once, even if it has to overlap
        if not any(p[0] == cls for p in placed):
            r = 0.12 * size
            placed.append((cls, *rng.uniform(r, size - r, size=2).tolist(), r))
    return placed


def _render(rng: np.random.Generator, layout, colours: dict[str, str], size: int):
    """-> (L [S,S], ab [2,S,S], instances); each instance's L independent of its colour."""
    bg_l = rng.uniform(*L_BACKGROUND)
    gy, gx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    L = (bg_l + rng.uniform(-6, 6) * gy + rng.uniform(-6, 6) * gx).astype(np.float32)  # [S,S], a gentle ramp
    ab = np.zeros((2, size, size), np.float32)  # gray background
    instances = []
    taken = np.zeros((size, size), bool)
    for cls, cy, cx, r in layout:
        m = shape_mask(cls, cy, cx, r, size) & ~taken
        while True:
            obj_l = rng.uniform(*L_OBJECT)
            if abs(obj_l - bg_l) >= MIN_L_CONTRAST:
                break
        L[m] = obj_l
        jitter = rng.uniform(-AB_JITTER, AB_JITTER, size=2)
        ab[0][m], ab[1][m] = PALETTE[colours[cls]][0] + jitter[0], PALETTE[colours[cls]][1] + jitter[1]
        taken |= m
        instances.append(Instance(cls, m))
    L += rng.normal(0.0, 1.0, size=L.shape).astype(np.float32)
    return np.clip(L, 0.0, 100.0), ab, tuple(instances)


def palette_swatches(rng: np.random.Generator, colours: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertical swatches of ``colours`` plus a gray one, in random order, each at its own flat L."""
    names = list(colours) + ["gray"]
    rng.shuffle(names)
    L = np.empty((size, size), np.float32)
    ab = np.empty((2, size, size), np.float32)
    edges = np.linspace(0, size, len(names) + 1).round().astype(int)
    for name, x0, x1 in zip(names, edges[:-1], edges[1:]):
        L[:, x0:x1] = rng.uniform(*PALETTE_L)
        ab[0, :, x0:x1], ab[1, :, x0:x1] = PALETTE[name]
    return L, ab


def make_pair(seed: int, split: str, index: int, size: int, mode: str = "free", ref: str = "scene") -> Pair:
    """Pair ``index``; the target (classes, colours, layout, L) depends only on (seed, split, index, mode)."""
    assert mode in MODES and ref in REFS, (mode, ref)
    rng = _rng(seed, split, index, MODES.index(mode))
    classes = [str(c) for c in rng.choice(CLASSES, size=int(rng.integers(2, 4)), replace=False)]
    if mode == "set":
        colours = {c: CLASS_SETS[c][int(rng.integers(2))] for c in classes}
    else:
        colours = dict(zip(classes, (str(c) for c in rng.choice(COLOURS, size=len(classes), replace=False))))
    layout = _layout(rng, classes, size)
    L, ab, instances = _render(rng, layout, colours, size)

    ref_rng = _rng(seed, split, index, 10 + REFS.index(ref))
    expected = dict(colours)
    if ref == "swap":  # a cyclic shift: every class gets another class's colour
        expected = dict(zip(classes, [colours[c] for c in classes[1:] + classes[:1]]))
    if ref == "palette_swap":
        expected = {c: next(x for x in CLASS_SETS[c] if x != colours[c]) for c in classes}
    if ref in ("palette", "palette_swap"):
        ref_L, ref_ab = palette_swatches(ref_rng, [expected[c] for c in classes], size)
    elif ref == "aligned":
        ref_L, ref_ab, _ = _render(ref_rng, layout, expected, size)  # the same layout, fresh L per instance
    else:
        ref_L, ref_ab, _ = _render(ref_rng, _layout(ref_rng, classes, size), expected, size)
    return Pair(L, ab, ref_L, ref_ab, instances, colours, expected)


def training_batch(seed: int, step: int, count: int, size: int, free_rate: float, palette_rate: float,
                   with_reference: bool = True) -> dict[str, np.ndarray]:
    """``count`` training pairs of ``step`` (never aligned). Stage 1 (``with_reference`` False) draws set-mode
    scenes only: an automatic colorizer can learn each class's set, never a free colour.

    Besides the tensors: ``db`` (1 where the bin classifier may learn from the pair: set-mode scenes)
    and ``scm`` (1 where the attention can find the colours: scene references, not palettes)."""
    rng = np.random.default_rng([seed, 77, step])
    pairs, db, scm = [], [], []
    for i in range(count):
        palette = with_reference and rng.random() < palette_rate
        free = with_reference and not palette and rng.random() < free_rate
        mode, ref = ("free" if free else "set"), ("palette" if palette else "scene")
        pairs.append(make_pair(seed, "train", step * count + i, size, mode, ref))
        db.append(0.0 if free else 1.0)
        scm.append(0.0 if palette else 1.0)
    out = {"L": np.stack([p.L for p in pairs])[:, None], "ab": np.stack([p.ab for p in pairs]),
           "db": np.array(db, np.float32), "scm": np.array(scm, np.float32)}
    if with_reference:
        out.update(ref_L=np.stack([p.ref_L for p in pairs])[:, None], ref_ab=np.stack([p.ref_ab for p in pairs]))
    return out


def nearest_colour(ab_mean: np.ndarray, candidates: tuple[str, ...] = COLOURS) -> str:
    return min(candidates, key=lambda c: float(np.hypot(*(np.asarray(PALETTE[c]) - ab_mean))))


def instance_hits(pairs: list[Pair], predictions: list[np.ndarray], truth: bool = False) -> list[bool]:
    """Per scored target instance: is its mean predicted ab nearest to the colour the reference asks for
    (``truth``: to the target's own colour)?"""
    hits = []
    for p, pred in zip(pairs, predictions):  # pred [2, S, S]
        wanted = p.colours if truth else p.expected
        for inst in p.instances:
            if inst.mask.sum() < MIN_INSTANCE_PIXELS:
                continue
            hits.append(nearest_colour(pred[:, inst.mask].mean(1)) == wanted[inst.cls])
    return hits
