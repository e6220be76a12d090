"""How the sketch family reads a drawing and writes its answer: the one path for every caller.

The CLI, ``Colorizer``, the batch pipeline and the ``colorize`` endpoint call the same four methods
(``Family.codec``), as the Lab families call ``photo.LabCodec``. A drawing has no lightness to keep:

- ``prepare``: decode the drawing (any size), take its ink, shrink it to S (a cell is ink if any of
  its pixels is), find its objects (``regions.propose``) and sort its full-resolution paper into
  those objects and the background (``regions.assign``); decode the previous canvas (same size as
  the drawing) or start from the bare drawing;
- ``feeds``: ``SKETCH``, ``INST_MASKS`` and ``CANVAS`` at S;
- ``finish``: composite at full resolution. Only the paper of the selected objects (or of the named
  background regions) takes the network's colour, read at S and brought up bilinearly, each region
  from its own area; every other pixel keeps the previous canvas exactly; ink is black. Notes say
  which objects (numbered left to right) or regions were coloured;
- ``encode``: PNG (lossless: a session's canvases stay exact) or JPEG, with the drawing's metadata.

The session is stateless: the client keeps the canvas and sends it with the next instruction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from langcolor.client import photo
from langcolor.client.errors import ImageError
from langcolor.client.families import Note
from langcolor.client.imageio import DEFAULT_MAX_PIXELS

from . import regions
from .config import BG_RGB, BG_SEG, CANVAS, FG_RGB, INST_MASKS, REGIONS, SELECTED, SKETCH
from .words import REGIONS as REGION_NAMES

MAX_INK_SHARE = 0.5  # a "drawing" that is mostly ink is a photograph or a negative, not line art


@dataclass(frozen=True)
class PreparedSketch:
    full: regions.FullResolution  # the drawing at its own size: ink, objects, background regions
    proposals: regions.Proposals  # its objects at S
    canvas: np.ndarray  # uint8 [H, W, 3]: the picture so far
    sketch: np.ndarray  # float32 [1, S, S]: ink at S
    masks: np.ndarray  # float32 [K, S, S]
    canvas_small: np.ndarray  # float32 [3, S, S] in [0, 1]
    notes: tuple[Note, ...]  # what reading the drawing found worth saying
    exif: bytes | None
    icc: bytes | None

    @property
    def size(self) -> tuple[int, int]:  # (W, H)
        return self.canvas.shape[1], self.canvas.shape[0]


def bare_canvas(ink: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3]: the drawing itself, black ink on white, where a session starts."""
    return np.repeat(np.where(ink, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def shrink(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, size, size] in [0, 1], area-averaged."""
    small = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BOX), np.float32) / 255.0
    return np.ascontiguousarray(small.transpose(2, 0, 1))


def _where(proposals: regions.Proposals, k: int) -> str:
    """'left, bottom' and the like: where object ``k`` sits in the picture."""
    s = proposals.interiors.shape[-1]
    y, x = np.argwhere(proposals.interiors[k]).mean(0) / s
    horizontal = "left" if x < 1 / 3 else "right" if x > 2 / 3 else "centre"
    vertical = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else "middle"
    return f"{horizontal}, {vertical}"


def sample(field: np.ndarray, area: np.ndarray, ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Colours at full-resolution pixels (``ys``, ``xs`` of an image of ``shape``) from ``field``
    [3, S, S], read only from ``area`` (bool [S, S]): cells outside it take their nearest inside cell
    first, so no colour from across an outline bleeds in. Bilinear between cell centres. -> [N, 3]"""
    s = field.shape[-1]
    if area.any():
        _, (iy, ix) = regions.scipy_ndimage().distance_transform_edt(~area, return_indices=True)
        field = field[:, iy, ix]
    h, w = shape
    fy = np.clip((ys + 0.5) * s / h - 0.5, 0, s - 1)
    fx = np.clip((xs + 0.5) * s / w - 0.5, 0, s - 1)
    y0, x0 = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, s - 1), np.minimum(x0 + 1, s - 1)
    wy, wx = (fy - y0)[:, None], (fx - x0)[:, None]
    at = lambda yy, xx: field[:, yy, xx].T  # noqa: E731  [N, 3]
    return (at(y0, x0) * (1 - wy) * (1 - wx) + at(y0, x1) * (1 - wy) * wx
            + at(y1, x0) * wy * (1 - wx) + at(y1, x1) * wy * wx)


def _paint(out: np.ndarray, target: np.ndarray, field: np.ndarray, area: np.ndarray) -> None:
    ys, xs = np.nonzero(target)
    if ys.size:
        rgb = sample(field, area, ys, xs, target.shape)
        out[ys, xs] = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


class SketchCodec:
    def prepare(self, source: photo.Source, values, geometry, max_pixels: int = DEFAULT_MAX_PIXELS) -> PreparedSketch:
        loaded = photo.load(source, max_pixels)
        ink = regions.strokes_of(loaded.rgb)
        share = float(ink.mean())
        if share == 0.0:
            raise ImageError("the drawing has no ink: give dark lines on white paper")
        if share > MAX_INK_SHARE:
            raise ImageError(f"the drawing is {100 * share:.0f}% ink: give dark lines on white paper, not a photograph")
        s = geometry.image_size
        slots = next(t for t in geometry.condition_specs if t.name == INST_MASKS).dims[0]
        sketch = regions.to_network(ink, s)
        proposals = regions.propose(sketch > 0.5, slots)
        full = regions.assign(ink, proposals, s)
        notes = []
        if proposals.count == 0:
            notes.append(Note("no-objects", "the drawing has no closed outline: only the sky and the ground can be coloured"))
        if proposals.dropped:
            notes.append(Note("too-many-objects", f"{proposals.dropped} smaller closed outlines beyond the {slots} largest "
                              "cannot be coloured"))
        canvas = self._canvas(values.get("canvas") if values else None, ink, max_pixels)
        return PreparedSketch(full, proposals, canvas, sketch[None], proposals.padded(slots), shrink(canvas, s),
                              tuple(notes), loaded.exif, loaded.icc)

    @staticmethod
    def _canvas(given, ink: np.ndarray, max_pixels: int) -> np.ndarray:
        if given is None:
            return bare_canvas(ink)
        try:
            loaded = photo.load(given, max_pixels)
        except ImageError as e:
            raise ImageError(f"canvas: {e}") from e
        if loaded.rgb.shape[:2] != ink.shape:
            h, w = ink.shape
            ch, cw = loaded.rgb.shape[:2]
            raise ImageError(f"the canvas is {cw}x{ch} but the drawing {w}x{h}: give the picture this drawing produced")
        return np.clip(np.rint(loaded.rgb * 255.0), 0, 255).astype(np.uint8)

    def feeds(self, prepared: PreparedSketch, geometry) -> dict[str, np.ndarray]:
        return {SKETCH: prepared.sketch, INST_MASKS: prepared.masks, CANVAS: prepared.canvas_small}

    def finish(self, prepared: PreparedSketch, outputs, threads: int = 1) -> tuple[np.ndarray, tuple[Note, ...]]:
        """One drawing's outputs -> (uint8 [H, W, 3] the new canvas, notes)."""
        full, props = prepared.full, prepared.proposals
        out = prepared.canvas.copy()
        chosen = [k for k in range(props.count) if outputs[SELECTED][k] > 0.5]
        named = [REGION_NAMES[r] for r in range(len(REGION_NAMES)) if outputs[REGIONS][r] > 0.5]
        notes = list(prepared.notes)
        if chosen:
            area = props.interiors[chosen].any(0)  # [S, S]: where the foreground network's colour is read
            _paint(out, np.isin(full.owner, chosen), np.asarray(outputs[FG_RGB]), area)
            listed = ", ".join(f"#{k + 1} ({_where(props, k)})" for k in chosen)
            notes.append(Note("selected", f"coloured {len(chosen)} of {props.count} objects: {listed}",
                              tuple(str(k + 1) for k in chosen)))
        elif named:
            self._paint_background(out, prepared, outputs, named)
            notes.append(Note("regions", f"coloured the {' and the '.join(named)}", tuple(named)))
        else:
            notes.append(Note("nothing-selected", "the instruction matched nothing in the drawing: the picture is unchanged"))
        out[full.strokes] = 0
        return out, tuple(notes)

    @staticmethod
    def _paint_background(out: np.ndarray, prepared: PreparedSketch, outputs, named: list[str]) -> None:
        """Each background region of the full-resolution paper is the sky or the ground as most of it
        is at S (the segmentation branch's verdict), so the boundary follows the drawn horizon."""
        full = prepared.full
        seg = np.asarray(outputs[BG_SEG])  # [3, S, S]
        s = seg.shape[-1]
        sky_small = seg[0] >= seg[1]  # [S, S]
        free_small = (prepared.masks.max(0) < 0.5) & (prepared.sketch[0] < 0.5)
        h, w = full.background.shape
        sky_full = sky_small[regions.grid_index(h, s)[:, None], regions.grid_index(w, s)[None, :]]
        labels = full.background.ravel()
        n = int(labels.max()) + 1
        votes = np.bincount(labels, weights=sky_full.ravel().astype(np.float64), minlength=n)
        sizes = np.bincount(labels, minlength=n)
        is_sky = votes * 2 >= np.maximum(sizes, 1)  # per background region
        field = np.asarray(outputs[BG_RGB])
        for name in named:
            want = name == REGION_NAMES[0]
            ids = np.nonzero((is_sky == want) & (sizes > 0))[0]
            ids = ids[ids > 0]
            target = np.isin(full.background, ids)
            _paint(out, target, field, free_small & (sky_small == want))

    def encode(self, prepared: PreparedSketch, rgb: np.ndarray, format: str = "PNG", **options) -> bytes:
        return photo.encode(prepared, rgb, format, **options)


SKETCH_CODEC = SketchCodec()
