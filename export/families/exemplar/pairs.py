"""Target/reference pairs cut from real photographs, for training and for evaluation.

A training pair is two views of one photo: the target is an axis-aligned window squashed to S x S
(as the client squashes a photo), the reference another window of another size, with a random
flip, rotation and perspective warp. It is never a pixel-aligned copy, so the network cannot learn
to copy colours by position; it has to find each target region in the reference.

``joint_hue_rate`` rotates the ab plane of BOTH views of a pair by the same random angle (chroma
then fitted to the gamut at each pixel's own L). The pair stays a correct correspondence problem
(the reference still holds the target's colours), but the colours are no longer those of the
training photo, so memorising "this texture is that colour" stops paying: with 17 training photos
that shortcut is the main risk. Jittering only the reference would instead teach the network that
the reference's colours are wrong.

Draws are deterministic given the caller's generator (training seeds one per step, so a resumed
run sees the batches an uninterrupted one would). ``eval_pairs`` cuts the fixed evaluation pairs:
a window of a held-out photo as the target and another window of the same scene, overlapping it
little and flipped half the time, as the reference (for the motorcycle, the other stereo view).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from langcolor.client.lab import fit_chroma_to_gamut, rgb_to_lab

from . import photos

_PYRAMID_MIN = 256  # px: the smallest pyramid level's short side
_MAX_TRIES = 50


@dataclass(frozen=True)
class PairOptions:
    image_size: int = 64  # S
    target_side: tuple[float, float] = (0.35, 0.8)  # target window side / photo short side
    ref_scale: tuple[float, float] = (0.7, 1.4)  # reference side / target side
    aspect: tuple[float, float] = (0.75, 1.33)  # window width / height
    max_rotation: float = 15.0  # degrees
    perspective: float = 0.08  # corner jitter, fraction of the window side
    flip_rate: float = 0.5
    max_iou: float = 0.6  # an unflipped reference overlapping more than this is redrawn
    joint_hue_rate: float = 0.5  # share of pairs whose two views get the same hue rotation


def _pyramid(rgb: np.ndarray) -> list[Image.Image]:
    """RGB float [H, W, 3] -> PIL uint8 images, each level half the previous, down to ~_PYRAMID_MIN."""
    img = Image.fromarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8))
    levels = [img]
    while min(levels[-1].size) >= 2 * _PYRAMID_MIN:
        levels.append(levels[-1].reduce(2))
    return levels


def _quad(cx: float, cy: float, w: float, h: float, angle: float, jitter: np.ndarray, flip: bool) -> np.ndarray:
    """Source corners [4, 2] (x, y) in PIL QUAD order: upper-left, lower-left, lower-right, upper-right."""
    base = np.array([[-w / 2, -h / 2], [-w / 2, h / 2], [w / 2, h / 2], [w / 2, -h / 2]])  # [4, 2]
    if flip:  # mirror: the output's left edge samples the window's right edge
        base = base[[3, 2, 1, 0]]
    base = base + jitter * np.array([w, h])
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return base @ np.array([[c, s], [-s, c]]) + np.array([cx, cy])


def _box(q: np.ndarray) -> tuple[float, float, float, float]:
    return q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max()


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / max(area(a) + area(b) - inter, 1e-9)


class PhotoPairs:
    """Draws training pairs from a fixed set of photos (held in memory as small pyramids)."""

    def __init__(self, images: dict[str, np.ndarray], options: PairOptions) -> None:
        assert images, "no photos"
        self.names = sorted(images)
        self.sizes = {n: images[n].shape[1::-1] for n in self.names}  # (W, H)
        self.pyramids = {n: _pyramid(images[n]) for n in self.names}
        self.opt = options

    @classmethod
    def from_splits(cls, splits: tuple[str, ...], options: PairOptions) -> "PhotoPairs":
        return cls(photos.load_photos(splits), options)

    def _window(self, name: str, rng: np.random.Generator, side: float, warp: bool, flip: bool) -> np.ndarray:
        """A quad [4, 2] inside photo ``name`` with short side ``side`` px (shrunk until it fits)."""
        W, H = self.sizes[name]
        o = self.opt
        for _ in range(_MAX_TRIES):
            aspect = math.exp(rng.uniform(math.log(o.aspect[0]), math.log(o.aspect[1])))
            w, h = side * math.sqrt(aspect), side / math.sqrt(aspect)
            angle = rng.uniform(-o.max_rotation, o.max_rotation) if warp else 0.0
            jitter = rng.uniform(-o.perspective, o.perspective, (4, 2)) if warp else np.zeros((4, 2))
            cx, cy = rng.uniform(0, W), rng.uniform(0, H)
            q = _quad(cx, cy, w, h, angle, jitter, flip)
            x0, y0, x1, y1 = _box(q)
            if x0 >= 0 and y0 >= 0 and x1 <= W and y1 <= H:
                return q
            side *= 0.95
        return _quad(W / 2, H / 2, min(W, H) / 2, min(W, H) / 2, 0.0, np.zeros((4, 2)), flip)

    def _render(self, name: str, q: np.ndarray) -> np.ndarray:
        """Quad -> Lab float32 [S, S, 3]: picked from the pyramid level near 2S px, warped, halved (antialiased)."""
        s = self.opt.image_size
        x0, y0, x1, y1 = _box(q)
        levels = self.pyramids[name]
        level = 0
        while level + 1 < len(levels) and min(x1 - x0, y1 - y0) / 2 ** (level + 1) >= 2 * s:
            level += 1
        scale = 2.0**level
        img = levels[level].transform((2 * s, 2 * s), Image.Transform.QUAD, tuple((q / scale).ravel()), Image.Resampling.BILINEAR)
        img = img.reduce(2)  # [S, S] box filter
        return rgb_to_lab(np.asarray(img, dtype=np.float32) / 255.0)  # [S, S, 3]

    def sample_target(self, rng: np.random.Generator) -> np.ndarray:
        """A target alone (stage 1: no reference), the photo's own colours. -> Lab [S, S, 3]."""
        name = self.names[rng.integers(len(self.names))]
        W, H = self.sizes[name]
        side = rng.uniform(*self.opt.target_side) * min(W, H)
        return self._render(name, self._window(name, rng, side, warp=False, flip=bool(rng.random() < self.opt.flip_rate)))

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """-> (target Lab [S, S, 3], reference Lab [S, S, 3])."""
        o = self.opt
        name = self.names[rng.integers(len(self.names))]
        W, H = self.sizes[name]
        side_t = rng.uniform(*o.target_side) * min(W, H)
        tq = self._window(name, rng, side_t, warp=False, flip=bool(rng.random() < o.flip_rate))
        for _ in range(_MAX_TRIES):
            flip = bool(rng.random() < o.flip_rate)
            side_r = min(side_t * rng.uniform(*o.ref_scale), 0.95 * min(W, H))
            rq = self._window(name, rng, side_r, warp=True, flip=flip)
            if flip or iou(_box(tq), _box(rq)) <= o.max_iou:
                break
        target, ref = self._render(name, tq), self._render(name, rq)
        if rng.random() < o.joint_hue_rate:
            target, ref = rotate_hue(target, ref, degrees=rng.uniform(-180.0, 180.0))
        return target, ref

    def batch(self, rng: np.random.Generator, batch_size: int, with_reference: bool = True) -> dict[str, np.ndarray]:
        """``batch_size`` pairs drawn with ``rng``: L, ab (and ref_L, ref_ab) float32 [B, C, S, S]."""
        pairs = [self.sample(rng) if with_reference else (self.sample_target(rng), None) for _ in range(batch_size)]
        t = np.stack([p[0] for p in pairs]).transpose(0, 3, 1, 2)  # [B, 3, S, S]
        out = {"L": t[:, :1], "ab": t[:, 1:]}
        if with_reference:
            r = np.stack([p[1] for p in pairs]).transpose(0, 3, 1, 2)  # [B, 3, S, S]
            out.update(ref_L=r[:, :1], ref_ab=r[:, 1:])
        return {k: np.ascontiguousarray(v) for k, v in out.items()}


def rotate_hue(*labs: np.ndarray, degrees: float) -> tuple[np.ndarray, ...]:
    """Rotate the ab plane of every Lab array ``[..., 3]`` by ``degrees``; chroma fitted to the gamut, L kept."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    out = []
    for lab in labs:
        rot = lab.copy()
        rot[..., 1] = c * lab[..., 1] - s * lab[..., 2]
        rot[..., 2] = s * lab[..., 1] + c * lab[..., 2]
        out.append(fit_chroma_to_gamut(rot))
    return tuple(out)


# --- evaluation pairs --------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalPair:
    photo: str
    index: int
    target_rgb: np.ndarray  # float32 [h, w, 3] in [0, 1], the photo's own pixels
    ref_rgb: np.ndarray  # float32 [h', w', 3]
    target_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the photo
    ref_box: tuple[int, int, int, int]
    ref_flipped: bool
    ref_view: int  # 1 where the reference comes from the photo's second (stereo) view


EVAL_TARGET_SIDE = (0.55, 0.7)  # of the photo's short side
EVAL_REF_SIDE = (0.55, 0.75)
EVAL_IOU = (0.05, 0.4)  # target/reference overlap: another layout of the same scene


def _eval_box(rng: np.random.Generator, W: int, H: int, side_range: tuple[float, float]) -> tuple[int, int, int, int]:
    side = rng.uniform(*side_range) * min(W, H)
    aspect = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    w, h = min(W, round(side * math.sqrt(aspect))), min(H, round(side / math.sqrt(aspect)))
    x0, y0 = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
    return x0, y0, x0 + w, y0 + h


def eval_pairs(split: str, per_photo: int = 4, seed: int = 0, only: list[str] | None = None) -> list[EvalPair]:
    """Fixed pairs per photo: target window and a reference window overlapping it by EVAL_IOU, flipped half
    the time. ``only``: the photos to use (those available); a photo's pairs do not depend on the others."""
    out = []
    for pi, name in enumerate(photos.names(split)):
        if only is not None and name not in only:
            continue
        rgb = photos.load_photo(name)
        view = 1 if photos.has_second_view(name) else 0
        ref_src = photos.load_photo(name, view=1) if view else rgb
        H, W = rgb.shape[:2]
        for k in range(per_photo):
            rng = np.random.default_rng([seed, pi, k])
            tb = _eval_box(rng, W, H, EVAL_TARGET_SIDE)
            for _ in range(1000):
                rb = _eval_box(rng, W, H, EVAL_REF_SIDE)
                if EVAL_IOU[0] <= iou(tb, rb) <= EVAL_IOU[1]:
                    break
            flip = bool(rng.random() < 0.5)
            ref = ref_src[rb[1] : rb[3], rb[0] : rb[2]]
            if flip:
                ref = ref[:, ::-1]
            target = rgb[tb[1] : tb[3], tb[0] : tb[2]]
            out.append(EvalPair(name, k, np.ascontiguousarray(target), np.ascontiguousarray(ref), tb, rb, flip, view))
    return out
