"""Instance proposals taken from the drawing itself: the regions its strokes enclose.

The paper selects among instances found by a separately trained Mask R-CNN. Here the proposals come
from the line drawing (a stated departure): paper reachable from the image border without crossing
a stroke is background (sky, ground); every other stretch of paper is enclosed by strokes and
belongs to an object. Enclosed regions separated by a single line (a house's body and its roof, a
car's body and its windows, a tree's crown and trunk) are one object; objects whose outlines stay a
pixel or more apart at the network's side are separate ones.

Everything here is numpy + scipy.ndimage (no torch): the client, the server and training share it.

- ``strokes_of``: ink (dark in every channel) of a decoded drawing;
- ``to_network``: the strokes at the network's side S: a cell is ink if any of its pixels is, so a
  closed outline stays closed however far it is shrunk;
- ``propose``: the objects at side S, as masks (their enclosed paper and their own outline);
- ``assign``: the full-resolution paper: each enclosed region to the object it belongs to, and the
  background regions apart, so colour is composited at full resolution inside exact boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from langcolor.client.errors import ImageError

INK_THRESHOLD = 0.5  # a pixel is ink when R, G and B are all below this (0-1): dark, not coloured
MIN_INTERIOR = 2  # network pixels: an enclosed region smaller than this is no object (a stroke's gap)
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)  # 4-connectivity
_SQUARE = np.ones((3, 3), bool)  # 8-connectivity


def scipy_ndimage():
    try:
        from scipy import ndimage
    except ImportError as e:  # pragma: no cover - scipy ships with the test and train extras
        raise ImageError("reading a line drawing needs scipy (pip install scipy)") from e
    return ndimage


def strokes_of(rgb: np.ndarray) -> np.ndarray:
    """float [H, W, 3] in [0, 1] -> bool [H, W]: the ink. A coloured pixel is never ink, however dark
    its hue (a saturated blue has a bright channel); gray below half-way is."""
    return rgb.max(axis=-1) < INK_THRESHOLD


def to_network(strokes: np.ndarray, size: int) -> np.ndarray:
    """bool [H, W] -> float32 [size, size] in {0, 1}: a cell is ink when any pixel it covers is."""
    if strokes.shape == (size, size):
        return strokes.astype(np.float32)
    coverage = Image.fromarray(strokes.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BOX)
    return (np.asarray(coverage) > 0).astype(np.float32)


def _run_lengths(mask: np.ndarray) -> np.ndarray:
    """int32 [H, W]: for each True pixel, the length of the horizontal run of True it lies in."""
    padded = np.pad(mask, ((0, 0), (1, 1))).astype(np.int8)
    step = np.diff(padded, axis=1)  # +1 where a run starts, -1 one past where it ends
    starts, ends = np.nonzero(step.ravel() == 1)[0], np.nonzero(step.ravel() == -1)[0]
    out = np.zeros(mask.shape, np.int32)
    lengths = ends - starts
    out[mask] = np.repeat(lengths, lengths)  # runs come in the row-major order of their pixels
    return out


def stroke_width(strokes: np.ndarray) -> int:
    """The typical line width of a drawing in pixels: per ink pixel the shorter of its horizontal and
    vertical run of ink (a horizontal line's height, a vertical line's width), the median over all."""
    if not strokes.any():
        return 1
    across = np.minimum(_run_lengths(strokes), _run_lengths(strokes.T).T)[strokes]
    return int(np.clip(np.median(across), 1, 6))


def paper_regions(strokes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected stretches of paper (4-connected, so a one-pixel diagonal line separates them) ->
    (labels int32 [H, W], 0 on ink; bool per label (index 0 unused): does it touch the border)."""
    labels, n = scipy_ndimage().label(~strokes, structure=_CROSS)
    border = np.zeros(n + 1, bool)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        border[edge] = True
    border[0] = False
    return labels.astype(np.int32), border


@dataclass(frozen=True)
class Proposals:
    """The objects of a drawing at the network's side, left to right."""

    masks: np.ndarray  # bool [n, S, S]: each object's enclosed paper and its own outline
    interiors: np.ndarray  # bool [n, S, S]: the enclosed paper alone
    dropped: int  # objects beyond the K largest, not offered to the network

    @property
    def count(self) -> int:
        return int(self.masks.shape[0])

    def padded(self, slots: int) -> np.ndarray:
        """float32 [K, S, S]: the masks, zero slots after the last object."""
        out = np.zeros((slots, *self.masks.shape[1:]), np.float32)
        out[: self.count] = self.masks
        return out

    def slot_map(self) -> np.ndarray:
        """int16 [S, S]: the object each network pixel belongs to (interior first), -1 for none."""
        slot = np.full(self.masks.shape[1:], -1, np.int16)
        for layer in (self.interiors, self.masks):
            for k in range(self.count):
                slot[(slot < 0) & layer[k]] = k
        return slot


def propose(strokes: np.ndarray, slots: int) -> Proposals:
    """bool [S, S] ink at the network's side -> the objects it encloses, at most ``slots`` of them
    (the largest, by enclosed paper), ordered by their centre from left to right."""
    nd = scipy_ndimage()
    labels, border = paper_regions(strokes)
    enclosed = (labels > 0) & ~border[labels]
    width = stroke_width(strokes)
    # Regions separated by one line join (each grows by a line's width, so a shared edge as thick as
    # two lines still closes); outlines a pixel of paper apart do not. The mask then takes the whole
    # outline (a line's width and a pixel beyond, for lines thickened by shrinking).
    grown = nd.binary_dilation(enclosed, structure=_CROSS, iterations=width)
    groups, n = nd.label(grown, structure=_CROSS)
    masks, interiors = [], []
    for g in range(1, n + 1):
        interior = enclosed & (groups == g)
        if interior.sum() < MIN_INTERIOR:
            continue
        reach = nd.binary_dilation(interior, structure=_SQUARE, iterations=width + 1)
        interiors.append(interior)
        masks.append(interior | (reach & strokes))
    order = sorted(range(len(masks)), key=lambda i: -int(interiors[i].sum()))
    kept = order[:slots]
    side = strokes.shape
    centre = lambda i: tuple(np.argwhere(interiors[i]).mean(0)[::-1])  # noqa: E731  (x, y)
    kept.sort(key=centre)
    stack = lambda items: np.stack(items) if items else np.zeros((0, *side), bool)  # noqa: E731
    return Proposals(stack([masks[i] for i in kept]), stack([interiors[i] for i in kept]), len(order) - len(kept))


@dataclass(frozen=True)
class FullResolution:
    """The drawing's paper at its own resolution, sorted into objects and background."""

    strokes: np.ndarray  # bool [H, W]
    owner: np.ndarray  # int16 [H, W]: the object slot of each enclosed pixel; -1 for ink, background, orphans
    background: np.ndarray  # int32 [H, W]: the label of each background region (border-reaching paper), 0 elsewhere
    orphans: int  # enclosed regions that fell in no object's mask (too small to survive shrinking)


def grid_index(full: int, small: int) -> np.ndarray:
    """For each of ``full`` pixels, the index of the network pixel covering it."""
    return (np.arange(full) * small) // full


def assign(strokes: np.ndarray, proposals: Proposals, size: int) -> FullResolution:
    """Each enclosed region of the full-resolution paper goes to the object whose network mask covers
    most of it; border-reaching regions are background."""
    labels, border = paper_regions(strokes)
    h, w = strokes.shape
    slot_small = proposals.slot_map()  # [S, S]
    slot = slot_small[grid_index(h, size)[:, None], grid_index(w, size)[None, :]]  # [H, W]
    n_labels, n_slots = int(labels.max()) + 1, proposals.count + 1
    votes = np.bincount((labels.astype(np.int64) * n_slots + (slot + 1)).ravel(), minlength=n_labels * n_slots)
    votes = votes.reshape(n_labels, n_slots)[:, 1:]  # [labels, n]: pixels of each region on each object
    owner_of = np.full(n_labels, -1, np.int64)
    if proposals.count:
        owner_of = np.where(votes.max(axis=1) > 0, votes.argmax(axis=1), -1)
    enclosed = ~border
    enclosed[0] = False
    owner_of = np.where(enclosed, owner_of, -1).astype(np.int16)
    orphans = int((enclosed & (owner_of < 0)).sum())
    background = np.where(border[labels], labels, 0).astype(np.int32)
    return FullResolution(strokes, owner_of[labels], background, orphans)
