"""The sketch family's client side, without a network: the instruction's route and notes, and the
full-resolution composite (what changes is exactly the selected objects' or named regions' paper).

The network's outputs are made up here, so each property is checked against a known answer.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from langcolor.client.errors import CaptionError, ImageError
from langcolor.client.spec import TOKENIZER_FILE
from langcolor.client.tokenizer import CaptionTokenizer
from langcolor.export.families.sketch import drawing, regions
from langcolor.export.families.sketch.codec import SKETCH_CODEC, bare_canvas
from langcolor.export.families.sketch.conditioner import build
from langcolor.export.families.sketch.config import CONFIGS
from langcolor.export.families.sketch.instructions import vocabulary_texts

CFG = CONFIGS["small"]
S, K = CFG.image_size, CFG.max_instances


@pytest.fixture(scope="module")
def setup():
    tok = CaptionTokenizer.train(vocabulary_texts(), CFG.max_tokens)
    assets = {TOKENIZER_FILE: tok.to_str().encode()}
    geom = CFG.geometry(tok.vocab_size)
    return geom, build(geom, assets)


@pytest.fixture(scope="module")
def scene():
    return drawing.random_scene(np.random.default_rng(11), S * 4, 3, copies=2, distractors=2)


def _png(rgb: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt)
    return buf.getvalue()


def _outputs(selected=(), regions_=(0, 0), fg=(255, 0, 0), bg=(0, 0, 255), sky_rows=None) -> dict:
    sel = np.zeros(K, np.float32)
    sel[list(selected)] = 1
    seg = np.zeros((3, S, S), np.float32)
    if sky_rows is not None:
        seg[0, :sky_rows], seg[1, sky_rows:] = 1, 1
    field = lambda c: np.broadcast_to(np.array(c, np.float32)[:, None, None] / 255, (3, S, S)).copy()  # noqa: E731
    return {"SELECTED": sel, "REGIONS": np.array(regions_, np.float32), "FG_RGB": field(fg), "BG_RGB": field(bg),
            "BG_SEG": seg}


def test_the_route_is_the_papers_keyword_rule_and_notes_say_how_it_was_read(setup):
    geom, cond = setup
    fg = cond.condition({"instruction": "The left car is RED!"})
    assert fg.tensors["BACKGROUND"].tolist() == [0] and fg.notes == ()
    bg = cond.condition({"instruction": "the sky is blue and the ground is green"})
    assert bg.tensors["BACKGROUND"].tolist() == [1] and [n.kind for n in bg.notes] == ["background"]
    mixed = cond.condition({"instruction": "the sky is blue and the car is red"})
    assert mixed.tensors["BACKGROUND"].tolist() == [1] and "mixed" in [n.kind for n in mixed.notes]
    odd = cond.condition({"instruction": "colorize the taxi with red", "canvas": b"ignored here"})
    assert [n.words for n in odd.notes if n.kind == "unknown-words"] == [("colorize", "taxi")]
    assert "no-colour" in [n.kind for n in cond.condition({"instruction": "the car is teal"}).notes]
    with pytest.raises(CaptionError, match="needs an instruction"):
        cond.condition({"canvas": b""})
    with pytest.raises(CaptionError, match="no word"):
        cond.condition({"instruction": "zebra"})


def test_prepare_finds_the_objects_and_starts_from_the_bare_drawing(setup, scene):
    geom, _ = setup
    p = SKETCH_CODEC.prepare(_png(scene.rgb()), {}, geom)
    assert drawing.match_items(scene, p.proposals, S) is not None
    feeds = SKETCH_CODEC.feeds(p, geom)
    assert {k: v.shape for k, v in feeds.items()} == {"SKETCH": (1, S, S), "INST_MASKS": (K, S, S), "CANVAS": (3, S, S)}
    assert feeds["INST_MASKS"][len(scene.items):].sum() == 0
    assert (p.canvas == bare_canvas(scene.ink)).all() and p.size == (S * 4, S * 4)


def test_foreground_colour_lands_on_the_selected_objects_paper_and_nowhere_else(setup, scene):
    geom, _ = setup
    rng = np.random.default_rng(0)
    canvas = rng.integers(0, 256, (S * 4, S * 4, 3), dtype=np.uint8)  # any previous picture
    p = SKETCH_CODEC.prepare(scene.rgb(), {"canvas": _png(canvas)}, geom)
    slot = 1
    out, notes = SKETCH_CODEC.finish(p, _outputs(selected=[slot]))
    item = drawing.match_items(scene, p.proposals, S)[slot]
    paper = scene.silhouettes[item] & ~scene.ink
    assert (out[paper] == (255, 0, 0)).all()  # every pixel of the object's paper, up to the outline
    rest = ~paper & ~scene.ink
    assert (out[rest] == canvas[rest]).all()  # everything else exactly as it was
    assert (out[scene.ink] == 0).all()
    assert notes[-1].kind == "selected" and notes[-1].words == (str(slot + 1),)


def test_background_colour_fills_the_named_region_only(setup, scene):
    geom, _ = setup
    p = SKETCH_CODEC.prepare(scene.rgb(), {}, geom)
    sky_rows = int(round(scene.horizon * S / scene.size))
    out, notes = SKETCH_CODEC.finish(p, _outputs(regions_=(1, 0), sky_rows=sky_rows))
    labels, border = regions.paper_regions(scene.ink)
    background = border[labels] & (labels > 0)
    sky = background & scene.sky()
    assert (out[sky] == (0, 0, 255)).all()
    assert (out[~sky] == p.canvas[~sky]).all()  # the ground, the objects, the ink: untouched
    assert notes[-1].kind == "regions" and notes[-1].words == ("sky",)


def test_nothing_selected_leaves_the_picture_as_it_was(setup, scene):
    geom, _ = setup
    p = SKETCH_CODEC.prepare(scene.rgb(), {}, geom)
    out, notes = SKETCH_CODEC.finish(p, _outputs())
    assert (out == p.canvas).all() and notes[-1].kind == "nothing-selected"


def test_a_jpeg_drawing_with_soft_edges_gives_the_same_objects(setup, scene):
    geom, _ = setup
    png = SKETCH_CODEC.prepare(_png(scene.rgb()), {}, geom)
    jpeg = SKETCH_CODEC.prepare(_png(scene.rgb(), "JPEG"), {}, geom)
    assert jpeg.proposals.count == png.proposals.count == len(scene.items)


def test_drawings_and_canvases_that_cannot_be_read_are_refused(setup, scene):
    geom, _ = setup
    with pytest.raises(ImageError, match="no ink"):
        SKETCH_CODEC.prepare(np.full((40, 40, 3), 255, np.uint8), {}, geom)
    with pytest.raises(ImageError, match="ink"):
        SKETCH_CODEC.prepare(np.zeros((40, 40, 3), np.uint8), {}, geom)  # a black square is no drawing
    with pytest.raises(ImageError, match="canvas is 100x80 but the drawing 256x256"):
        SKETCH_CODEC.prepare(scene.rgb(), {"canvas": np.zeros((80, 100, 3), np.uint8)}, geom)
    with pytest.raises(ImageError, match="canvas"):
        SKETCH_CODEC.prepare(scene.rgb(), {"canvas": b"not an image"}, geom)


def test_a_drawing_without_closed_outlines_says_only_the_background_can_be_coloured(setup):
    geom, _ = setup
    lines = np.full((64, 64, 3), 255, np.uint8)
    lines[30] = 0
    p = SKETCH_CODEC.prepare(lines, {}, geom)
    assert p.proposals.count == 0 and [n.kind for n in p.notes] == ["no-objects"]


def test_the_held_out_two_category_form_names_one_object_of_each_in_known_words(scene):
    from langcolor.export.families.sketch.instructions import make, of_category, possible

    tok = CaptionTokenizer.train(vocabulary_texts(), CFG.max_tokens)
    options = possible(scene, "two")
    assert options and all(len(of_category(scene, c)) == 1 for pair in options for c in pair)
    ins = make(scene, "two", options[0], np.random.default_rng(0))
    a, b = options[0]
    assert ins.text.startswith(f"the {a} and the {b} are ")
    assert sorted(ins.targets) == sorted(of_category(scene, a) + of_category(scene, b))
    assert set(tok.words_of(ins.text)) <= set(tok.vocabulary)  # held out as a form, not as words
