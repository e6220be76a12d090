"""Seeded synthetic scenes for automatic colorization: shapes on a background, with per-pixel classes.

Only the shape tells the colour. Each instance's gray level (and the background's) is drawn
independently of its class, so a network that colours by luminance fails; one that recognises the
shape and knows its class's colour succeeds. Two classes are bimodal (a circle is red or blue, a
ring orange or purple, 50/50 per instance): no deterministic colorizer can be right on those, a
sampler should pick one colour per instance and paint the whole instance with it.

Semantics are learnt from these synthetic labels only. Scene ``i`` of a split depends only on
``(seed, split, i)``, so a training run can resume mid-stream and evaluation scenes never occur in
training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from langcolor.export.synthetic import AB_JITTER, PALETTE, shape_mask

from .config import CLASS_COLOURS, CLASSES

SPLITS = {"train": 10, "test": 11}  # seeds the scene stream; apart from the caption families' splits
L_OBJECT = (35.0, 85.0)  # an instance's gray level, independent of its class
L_BACKGROUND = (20.0, 92.0)
MIN_L_CONTRAST = 12.0  # instance vs background, so every shape has a visible edge
L_NOISE = 1.0  # per-pixel gray noise (std, L units): inputs are never perfectly flat
RADIUS = (0.14, 0.24)  # instance radius, as a share of the image side
MAX_OBJECTS = 3

# Every colour mode of every class, a*, b* in Lab units: MODES[k] is the list for class k.
MODES: tuple[np.ndarray, ...] = tuple(np.array([PALETTE[c] for c in CLASS_COLOURS[name]], np.float32)
                                      for name in CLASSES)
ALL_MODES = np.concatenate(MODES)  # [N,2], the nearest-colour reference of the evaluation
MODE_CLASS = np.concatenate([np.full(len(m), k) for k, m in enumerate(MODES)])  # [N] the class of each mode


@dataclass(frozen=True)
class Instance:
    cls: int  # class index, 1..K-1 (0 is the background)
    mode: int  # which of the class's colours it took


@dataclass(frozen=True)
class Scene:
    L: np.ndarray  # float32 [S,S], CIE L in [0, 100]
    ab: np.ndarray  # float32 [2,S,S], a*, b* in Lab units
    labels: np.ndarray  # int64 [S,S], the class of every pixel (0 = background)
    instance_map: np.ndarray  # int64 [S,S], 0 = background, k = objects[k-1]
    objects: tuple[Instance, ...]


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), SPLITS[split], int(index)])


def _place(rng: np.random.Generator, n: int, size: int) -> list[tuple[float, float, float]]:
    """Up to n non-overlapping (cy, cx, r), at least two pixels apart."""
    placed: list[tuple[float, float, float]] = []
    for _ in range(200):
        if len(placed) == n:
            break
        r = rng.uniform(*RADIUS) * size
        cy, cx = rng.uniform(r, size - r, size=2)
        if all((cy - y) ** 2 + (cx - x) ** 2 >= (r + q + 2.0) ** 2 for y, x, q in placed):
            placed.append((float(cy), float(cx), float(r)))
    return placed


def _colour(rng: np.random.Generator, cls: int, mode: int) -> np.ndarray:
    return MODES[cls][mode] + rng.normal(0.0, AB_JITTER, 2).astype(np.float32)  # [2]


def make_scene(seed: int, split: str, index: int, size: int) -> Scene:
    rng = _rng(seed, split, index)
    spots = _place(rng, int(rng.integers(1, MAX_OBJECTS + 1)), size)
    classes = rng.integers(1, len(CLASSES), size=len(spots))
    bg_l = rng.uniform(*L_BACKGROUND)
    L = np.full((size, size), bg_l, np.float32)
    ab = np.empty((2, size, size), np.float32)
    ab[:] = _colour(rng, 0, 0)[:, None, None]
    labels = np.zeros((size, size), np.int64)
    instance_map = np.zeros((size, size), np.int64)
    objects = []
    for k, ((cy, cx, r), cls) in enumerate(zip(spots, classes), start=1):
        mask = shape_mask(CLASSES[cls], cy, cx, r, size)  # bool [S,S]
        level = rng.uniform(*L_OBJECT)
        while abs(level - bg_l) < MIN_L_CONTRAST:
            level = rng.uniform(*L_OBJECT)
        mode = int(rng.integers(0, len(MODES[cls])))
        L[mask] = level
        ab[:, mask] = _colour(rng, int(cls), mode)[:, None]
        labels[mask] = cls
        instance_map[mask] = k
        objects.append(Instance(int(cls), mode))
    L = np.clip(L + rng.normal(0.0, L_NOISE, L.shape), 0.0, 100.0).astype(np.float32)
    return Scene(L, ab, labels, instance_map, tuple(objects))


def make_scenes(seed: int, split: str, start: int, count: int, size: int) -> list[Scene]:
    return [make_scene(seed, split, i, size) for i in range(start, start + count)]


def block_mode(ids: np.ndarray, q: int, count: int) -> np.ndarray:
    """int [S,S] -> int64 [q,q]: the most frequent id in each (S/q)x(S/q) block (ties: the lowest id)."""
    s = ids.shape[0]
    f = s // q
    onehot = np.eye(count, dtype=np.int32)[ids]  # [S,S,count]
    votes = onehot.reshape(q, f, q, f, count).sum((1, 3))  # [q,q,count]
    return votes.argmax(-1).astype(np.int64)


def block_mean(x: np.ndarray, q: int) -> np.ndarray:
    """[C,S,S] -> [C,q,q]: the mean of each block (the chroma target at a quarter of the side)."""
    c, s, _ = x.shape
    f = s // q
    return x.reshape(c, q, f, q, f).mean((2, 4)).astype(np.float32)


@dataclass(frozen=True)
class ChromaScene:
    """A scene at the chroma resolution: what the losses and the evaluation compare against."""

    ab: np.ndarray  # float32 [2,Q,Q]
    labels: np.ndarray  # int64 [Q,Q], majority class per block
    instances: np.ndarray  # int64 [Q,Q], majority instance per block (0 = background)
    pure: np.ndarray  # bool [Q,Q], the whole block belongs to that instance (no edge mixing)


def chroma(scene: Scene, q: int) -> ChromaScene:
    n = len(scene.objects) + 1
    instances = block_mode(scene.instance_map, q, n)
    f = scene.L.shape[0] // q
    same = scene.instance_map.reshape(q, f, q, f) == instances[:, None, :, None]  # [q,f,q,f]
    return ChromaScene(block_mean(scene.ab, q), block_mode(scene.labels, q, len(CLASSES)), instances,
                       same.all((1, 3)))


def stack(scenes: list[Scene], q: int) -> dict[str, np.ndarray]:
    """Scenes -> arrays: L [B,1,S,S], ab [B,2,Q,Q], seg [B,Q,Q] int64, instances [B,Q,Q] int64."""
    small = [chroma(s, q) for s in scenes]
    return {
        "L": np.stack([s.L for s in scenes])[:, None],
        "ab": np.stack([c.ab for c in small]),
        "seg": np.stack([c.labels for c in small]),
        "instances": np.stack([c.instances for c in small]),
    }


def nearest_mode(mean_ab: np.ndarray) -> int:
    """Index into ALL_MODES of the colour nearest to ``mean_ab`` [2]."""
    return int(np.argmin(((ALL_MODES - mean_ab[None]) ** 2).sum(-1)))
