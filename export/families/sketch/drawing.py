"""Synthetic scene sketches: black outlines on white, a horizon, two to five objects.

Geometry is laid out in a 64-unit frame and drawn at ``size`` pixels with PIL (lines ``width`` pixels
wide), so the same scene can be drawn at the network's side or larger, as a user's drawing would be.
Objects never overlap and keep at least ``GAP`` units apart. The horizon line runs behind them: an
object either stays clear of it or crosses it with room on both sides, so the line never pinches
off a pocket of sky against an outline.

Each object records its filled silhouette and the silhouette of its named part (the roof of a house,
the windows of a car, the trunk of a tree), from which the evaluation and the training targets are
taken. Everything is deterministic in the ``rng`` given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from . import regions
from .words import CATEGORIES

FRAME = 64.0  # layout units: every size below is in 64ths of the picture's side
MARGIN = 2.5  # units kept clear along the picture's border
GAP = 4.0  # units between two objects' bounding boxes
HORIZON_CLEAR = 3.0  # units between the horizon and an object's top or bottom edge
HORIZON_RANGE = (20.0, 44.0)  # where the horizon may lie (units from the top)
_TRIES = 60


@dataclass(frozen=True)
class Item:
    """One drawn object: its category and its bounding box in layout units."""

    category: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0


@dataclass(frozen=True)
class Scene:
    size: int  # pixels per side
    ink: np.ndarray  # bool [H, W]: the drawing
    items: tuple[Item, ...]
    silhouettes: np.ndarray  # bool [n, H, W]: each object filled
    parts: np.ndarray  # bool [n, H, W]: its named part filled (empty for categories without one)
    horizon: float  # pixels from the top

    def rgb(self) -> np.ndarray:
        """uint8 [H, W, 3]: the drawing as a user would give it."""
        return np.repeat(np.where(self.ink, 0, 255).astype(np.uint8)[..., None], 3, axis=2)

    def sky(self) -> np.ndarray:
        """bool [H, W]: rows above the horizon (the sky's side), objects and ink included."""
        rows = (np.arange(self.size) + 0.5) < self.horizon
        return np.broadcast_to(rows[:, None], (self.size, self.size))


# --- shapes: (outline drawing, silhouette, part) in layout units ------------------------------------------


def _size_of(category: str, rng: np.random.Generator) -> tuple[float, float, dict]:
    """A random (width, height, shape parameters) of ``category``, in units."""
    if category == "circle":
        r = rng.uniform(5.0, 8.0)
        return 2 * r, 2 * r, {}
    if category == "square":
        a = rng.uniform(10.0, 15.0)
        return a, a, {}
    if category == "triangle":
        return rng.uniform(11.0, 16.0), rng.uniform(10.0, 14.0), {}
    if category == "star":
        r = rng.uniform(7.0, 9.5)
        return 2 * r, 2 * r, {}
    if category == "house":
        w, body, roof = rng.uniform(12.0, 16.0), rng.uniform(7.0, 10.0), rng.uniform(5.0, 8.0)
        return w, body + roof, {"roof": roof}
    if category == "car":
        w = rng.uniform(19.0, 25.0)
        return w, w * rng.uniform(0.5, 0.58), {}
    if category == "tree":
        r, trunk = rng.uniform(5.5, 7.5), rng.uniform(4.5, 7.0)
        return 2 * r, 2 * r + trunk, {"trunk": trunk}
    raise ValueError(category)


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    return [(cx + q * np.cos(a), cy + q * np.sin(a)) for q, a in zip(radii, angles)]


def _shapes(item: Item, params: dict) -> tuple[list, set[int]]:
    """(pieces in drawing order, indices of the pieces that form the named part). A piece is
    ("poly", points) or ("ellipse", box) in units; a later piece hides what an earlier one drew
    inside it (a tree's crown hides the top of its trunk)."""
    x0, y0, x1, y1 = item.box
    w, h = x1 - x0, y1 - y0
    cx, cy = item.centre
    c = item.category
    if c == "circle":
        return [("ellipse", (x0, y0, x1, y1))], set()
    if c == "square":
        return [("poly", [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])], set()
    if c == "triangle":
        return [("poly", [(x0, y1), (x1, y1), (cx, y0)])], set()
    if c == "star":
        return [("poly", _star(cx, cy, w / 2))], set()
    if c == "house":
        yr = y0 + params["roof"]
        body = ("poly", [(x0, yr), (x1, yr), (x1, y1), (x0, y1)])
        roof = ("poly", [(x0, yr), (x1, yr), (cx, y0)])
        return [body, roof], {1}
    if c == "car":
        yb = y0 + 0.45 * h  # cabin above, body below
        body = ("poly", [(x0, y1), (x1, y1), (x1, yb), (x1 - 0.16 * w, yb), (x1 - 0.3 * w, y0),
                         (x0 + 0.3 * w, y0), (x0 + 0.16 * w, yb), (x0, yb)])
        wy0, wy1 = y0 + 0.18 * h, yb - 0.02 * h
        windows = [("poly", [(a, wy0), (b, wy0), (b, wy1), (a, wy1)])
                   for a, b in ((x0 + 0.3 * w, cx - 0.04 * w), (cx + 0.04 * w, x1 - 0.3 * w))]
        return [body, *windows], {1, 2}
    if c == "tree":
        r = w / 2
        tw = max(4.5, 0.6 * r)  # wide enough that its paper survives shrinking to 64 px
        trunk = ("poly", [(cx - tw / 2, y0 + 1.6 * r), (cx + tw / 2, y0 + 1.6 * r), (cx + tw / 2, y1), (cx - tw / 2, y1)])
        crown = ("ellipse", (x0, y0, x1, y0 + 2 * r))
        return [trunk, crown], {0}
    raise ValueError(c)


class _Canvas:
    """PIL drawing in layout units at ``size`` pixels."""

    def __init__(self, size: int, width: int):
        self.size, self.width, self.k = size, width, size / FRAME
        self.ink = Image.new("L", (size, size), 0)
        self.draw = ImageDraw.Draw(self.ink)

    def _px(self, points):
        return [(x * self.k, y * self.k) for x, y in points]

    def _box(self, box):
        x0, y0, x1, y1 = box
        return [x0 * self.k, y0 * self.k, x1 * self.k - 1, y1 * self.k - 1]

    def fill(self, draw: ImageDraw.ImageDraw, piece, value: int) -> None:
        kind, geom = piece
        if kind == "ellipse":
            draw.ellipse(self._box(geom), fill=value)
        else:
            draw.polygon(self._px(geom), fill=value)

    def outline(self, piece) -> None:
        kind, geom = piece
        if kind == "ellipse":
            self.draw.ellipse(self._box(geom), outline=255, width=self.width)
        else:
            self.draw.polygon(self._px(geom), outline=255, width=self.width)

    def mask(self, pieces) -> np.ndarray:
        im = Image.new("L", (self.size, self.size), 0)
        d = ImageDraw.Draw(im)
        for p in pieces:
            self.fill(d, p, 255)
        return np.asarray(im) > 0


def _clear_of(box, others, gap: float) -> bool:
    x0, y0, x1, y1 = box
    return all(x1 + gap <= a0 or a1 + gap <= x0 or y1 + gap <= b0 or b1 + gap <= y0 for a0, b0, a1, b1 in others)


def _fits_horizon(box, horizon: float) -> bool:
    _, y0, _, y1 = box
    above, below = y1 <= horizon - HORIZON_CLEAR, y0 >= horizon + HORIZON_CLEAR
    across = y0 <= horizon - HORIZON_CLEAR and y1 >= horizon + HORIZON_CLEAR
    return above or below or across


def place(categories: list[str], rng: np.random.Generator, horizon: float) -> list[tuple[Item, dict]] | None:
    """Non-overlapping boxes for ``categories`` (None when they do not fit after a few tries)."""
    placed: list[tuple[Item, dict]] = []
    for c in categories:
        for _ in range(_TRIES):
            w, h, params = _size_of(c, rng)
            x0 = rng.uniform(MARGIN, FRAME - MARGIN - w)
            y0 = rng.uniform(MARGIN, FRAME - MARGIN - h)
            box = (x0, y0, x0 + w, y0 + h)
            if _clear_of(box, [it.box for it, _ in placed], GAP) and _fits_horizon(box, horizon):
                placed.append((Item(c, box), params))
                break
        else:
            return None
    return placed


def render(placed: list[tuple[Item, dict]], horizon: float, size: int, width: int) -> Scene:
    """Draw the horizon, then each object over it: its silhouette erased first (the line stops at its
    outline), then its pieces in order, each erasing what lies inside it before drawing its outline."""
    canvas = _Canvas(size, width)
    y = horizon * canvas.k
    canvas.draw.line([(0, y), (size, y)], fill=255, width=width)
    silhouettes, parts = [], []
    for item, params in placed:
        pieces, part = _shapes(item, params)
        for p in pieces:
            canvas.fill(canvas.draw, p, 0)
        for p in pieces:
            canvas.fill(canvas.draw, p, 0)
            canvas.outline(p)
        silhouettes.append(canvas.mask(pieces))
        hidden = [canvas.mask(pieces[i + 1:]) for i in sorted(part)]  # what later pieces cover
        part_mask = np.zeros((size, size), bool)
        for i, cover in zip(sorted(part), hidden):
            part_mask |= canvas.mask([pieces[i]]) & ~cover
        parts.append(part_mask)
    ink = np.asarray(canvas.ink) > 0
    return Scene(size, ink, tuple(it for it, _ in placed), np.stack(silhouettes), np.stack(parts), y)


def random_scene(rng: np.random.Generator, size: int, width: int, target: str | None = None,
                 copies: int = 1, distractors: int = 1) -> Scene:
    """A scene with ``copies`` objects of ``target`` (random when None) and ``distractors`` objects of
    other categories. Layouts that do not fit are drawn again."""
    while True:
        cat = target or str(rng.choice(CATEGORIES))
        others = [str(c) for c in rng.choice([c for c in CATEGORIES if c != cat], size=distractors)]
        horizon = rng.uniform(*HORIZON_RANGE)
        placed = place([cat] * copies + others, rng, horizon)
        if placed is not None:
            order = rng.permutation(len(placed))  # the target need not be drawn first
            return render([placed[i] for i in order], horizon, size, width)


def match_items(scene: Scene, proposals: regions.Proposals, size: int) -> list[int] | None:
    """The scene item of each proposal (by overlap at S), or None unless it is one object each."""
    if proposals.count != len(scene.items):
        return None
    shrunk = np.stack([regions.to_network(m, size) > 0 for m in scene.silhouettes])  # [n,S,S]
    overlap = (proposals.interiors[:, None] & shrunk[None]).sum((2, 3))  # [K,n]
    owner = overlap.argmax(1).tolist()
    return owner if sorted(owner) == list(range(len(scene.items))) else None
