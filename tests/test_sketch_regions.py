"""The sketch family's objects come from the drawing itself: its closed outlines.

Fast, torch-free: the proposals recover the generator's objects one for one at every drawing scale
(the training relies on it), multi-part objects stay one object, outlines a pixel apart stay two, a
closed outline stays closed however far it is shrunk, and the full-resolution paper is sorted into
exactly those objects and the background.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from langcolor.export.families.sketch import drawing, regions

S = 64


def _ink(size: int, draw_fn, width: int = 1) -> np.ndarray:
    im = Image.new("L", (size, size), 0)
    draw_fn(ImageDraw.Draw(im), width)
    return np.asarray(im) > 0


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_proposals_recover_every_generated_object_one_for_one(scale):
    rng = np.random.default_rng(scale)
    for _ in range(60):
        width = int(rng.integers(1, scale + 1))
        scene = drawing.random_scene(rng, S * scale, width, copies=int(rng.integers(1, 4)), distractors=int(rng.integers(0, 3)))
        props = regions.propose(regions.to_network(scene.ink, S) > 0.5, 8)
        assert drawing.match_items(scene, props, S) is not None, [it.category for it in scene.items]
        # slots run left to right, as the notes number them
        xs = [np.argwhere(props.interiors[k]).mean(0)[1] for k in range(props.count)]
        assert xs == sorted(xs)


def test_a_house_car_and_tree_are_one_object_each_despite_their_inner_lines():
    rng = np.random.default_rng(0)
    for category in ("house", "car", "tree"):
        placed = drawing.place([category], rng, horizon=60.0)
        scene = drawing.render(placed, 60.0, S * 2, 2)
        labels, border = regions.paper_regions(scene.ink)
        enclosed = {int(v) for v in np.unique(labels[~border[labels] & (labels > 0)])}
        assert len(enclosed) >= 2, category  # body and roof / windows / trunk: several enclosed regions ...
        props = regions.propose(regions.to_network(scene.ink, S) > 0.5, 8)
        assert props.count == 1, category  # ... one object
        full = regions.assign(scene.ink, props, S)
        assert {int(full.owner[labels == v][0]) for v in enclosed} == {0}, category


def test_outlines_one_pixel_apart_are_two_objects_and_touching_ones_one():
    def squares(gap):
        return lambda d, w: (d.rectangle([10, 10, 20, 20], outline=255), d.rectangle([21 + gap, 10, 31 + gap, 20], outline=255))

    assert regions.propose(_ink(S, squares(1)), 8).count == 2
    assert regions.propose(_ink(S, squares(0)), 8).count == 1  # shared outline: one object of two parts


def test_a_closed_outline_stays_closed_when_shrunk_by_any_factor():
    for side in (100, 333, 1000):
        ink = _ink(side, lambda d, w: d.ellipse([side * 0.2, side * 0.2, side * 0.7, side * 0.6], outline=255))
        small = regions.to_network(ink, S) > 0.5
        assert regions.propose(small, 8).count == 1, side


def test_full_resolution_paper_goes_to_its_object_or_the_background():
    rng = np.random.default_rng(5)
    scene = drawing.random_scene(rng, S * 4, 3, copies=2, distractors=2)
    props = regions.propose(regions.to_network(scene.ink, S) > 0.5, 8)
    owner = drawing.match_items(scene, props, S)
    full = regions.assign(scene.ink, props, S)
    assert full.orphans == 0
    for k, item in enumerate(owner):
        paper = scene.silhouettes[item] & ~scene.ink
        assert (full.owner[paper] == k).all()  # every enclosed pixel of the object, no other
        assert not (full.owner[~scene.silhouettes[item]] == k).any()
    outside = ~scene.silhouettes.any(0) & ~scene.ink
    assert (full.background[outside] > 0).all() and (full.owner[outside] == -1).all()
    assert (full.owner[scene.ink] == -1).all() and (full.background[scene.ink] == 0).all()


def test_only_the_largest_objects_fit_the_slots():
    def many(d, w):
        for i in range(4):
            for j in range(3):
                a = 3 + i * 15
                d.rectangle([a, 3 + j * 20, a + 6 + i, 13 + j * 20], outline=255)

    props = regions.propose(_ink(S, many), 8)
    assert props.count == 8 and props.dropped == 4
    areas = sorted(int(m.sum()) for m in props.interiors)  # interiors (5 + column) x 9 pixels
    assert areas == [54, 54, 63, 63, 63, 72, 72, 72]  # dropped: the narrowest column and one of the next
    assert props.padded(10).shape == (10, S, S) and props.padded(10)[8:].sum() == 0


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_stroke_width_reads_the_line_width(width):
    ink = _ink(S * 2, lambda d, w: (d.rectangle([10, 10, 90, 60], outline=255, width=w),
                                  d.ellipse([20, 70, 110, 120], outline=255, width=w)), width)
    assert regions.stroke_width(ink) == width


def test_ink_is_dark_in_every_channel_not_a_dark_hue():
    rgb = np.array([[[0, 0, 0], [100, 100, 100], [40, 90, 215], [130, 80, 35], [255, 255, 255], [20, 20, 160]]],
                   np.float32) / 255.0
    assert regions.strokes_of(rgb).tolist() == [[True, True, False, False, False, False]]
