"""Synthetic scenes (deterministic, colour not given away by gray level) and the COCO-Stuff loader."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from langcolor.client.errors import LangcolorError
from langcolor.client.lab import rgb_to_lab
from langcolor.client.tokenizer import CaptionTokenizer
from langcolor.export import synthetic
from langcolor.export.families.lcode.coco import CocoCaptions, load_records

S, T = 64, 16


def test_scenes_are_deterministic_in_seed_split_and_index():
    a, b = synthetic.make_scene(3, "train", 17, S, T), synthetic.make_scene(3, "train", 17, S, T)
    assert np.array_equal(a.L, b.L) and np.array_equal(a.ab, b.ab) and a.caption == b.caption
    for other in (synthetic.make_scene(4, "train", 17, S, T), synthetic.make_scene(3, "test", 17, S, T),
                  synthetic.make_scene(3, "train", 18, S, T)):
        assert not np.array_equal(a.L, other.L)


def test_captions_name_the_true_colours_at_the_recorded_positions():
    tok = CaptionTokenizer.train(synthetic.training_captions(0, 500, S, T), T)
    for i in range(200):
        s = synthetic.make_scene(0, "train", i, S, T)
        assert tuple(tok.words_of(s.caption)) == s.words and len(s.words) <= T
        truth = {o.shape: o.colour for o in s.objects} | {synthetic.BACKGROUND: s.background}
        named = {s.words[n]: s.words[c] for n, c in s.pairs}
        assert all(truth[noun] == colour for noun, colour in named.items())
        assert {o.shape for o in s.objects if o.mentioned} == set(named) - {synthetic.BACKGROUND}
        assert (synthetic.BACKGROUND in named) == s.background_mentioned
        assert tok.encode(s.caption).unknown == ()
        occm = s.occm_target(T)
        assert occm.sum() == len(s.pairs) and all(occm[n, c] == 1 for n, c in s.pairs)


def test_masks_and_ground_truth_colours():
    for i in range(50):
        s = synthetic.make_scene(0, "train", i, S, T)
        assert s.masks.sum(0).max() <= 1  # objects never overlap
        for o, m in zip(s.objects, s.masks):
            assert m.sum() > 30
            mean_ab = s.ab[:, m].mean(1)
            assert np.abs(mean_ab - synthetic.PALETTE[o.colour]).max() <= synthetic.AB_JITTER + 1e-4
        assert np.allclose(s.ab[:, s.background_mask].mean(1), synthetic.PALETTE[s.background])
        assert 0 <= s.L.min() and s.L.max() <= 100


def test_held_out_pairs_never_train_and_always_test():
    for i in range(400):
        s = synthetic.make_scene(0, "train", i, S, T)
        assert not any((o.shape, o.colour) in synthetic.HELD_OUT for o in s.objects)
    for i in range(100):
        s = synthetic.make_scene(0, "heldout", i, S, T)
        assert any((o.shape, o.colour) in synthetic.HELD_OUT and o.mentioned for o in s.objects)


def test_gray_level_does_not_reveal_the_colour():
    lum, colour = [], []
    for i in range(600):
        s = synthetic.make_scene(1, "train", i, S, T)
        for o, m in zip(s.objects, s.masks):
            lum.append(s.L[m].mean())
            colour.append(synthetic.COLOURS.index(o.colour))
    lum, colour = np.array(lum), np.array(colour)
    # Share of luminance variance explained by the colour (eta squared): near zero.
    means = np.array([lum[colour == k].mean() for k in range(len(synthetic.COLOURS))])
    eta2 = sum((colour == k).sum() * (means[k] - lum.mean()) ** 2 for k in range(len(means))) / (
        ((lum - lum.mean()) ** 2).sum())
    assert eta2 < 0.03, eta2
    ab = np.array([synthetic.PALETTE[synthetic.COLOURS[k]] for k in colour])
    for channel in (0, 1):
        assert abs(np.corrcoef(lum, ab[:, channel])[0, 1]) < 0.1
    # Guessing the colour from the gray level (nearest class mean, fit on one half) is at chance.
    half = len(lum) // 2
    fit = np.array([lum[:half][colour[:half] == k].mean() for k in range(len(means))])
    guess = np.abs(lum[half:, None] - fit[None]).argmin(1)
    assert (guess == colour[half:]).mean() < 1.0 / len(means) + 0.07


# ------------------------------------------------------------------------------------------ COCO
@pytest.fixture()
def coco_fixture(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in (1, 2):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(images / f"{k:012d}.jpg", quality=95)
    doc = {
        "images": [{"id": 1, "file_name": "000000000001.jpg"}, {"id": 2, "file_name": "000000000002.jpg"}],
        "annotations": [
            {"image_id": 1, "caption": "A red car on green grass.", "color_object_pairs": [["car", "red"], ["grass", "green"]]},
            {"image_id": 1, "caption": "a car parked outside"},
            {"image_id": 2, "caption": "the sky is blue", "color_object_pairs": [["sky", "blue"]]},
            {"image_id": 2, "caption": "one two three four five six seven eight nine ten"},
        ],
    }
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps(doc))
    return images, captions


def test_coco_loader_reads_images_captions_and_pairs(coco_fixture):
    images, captions = coco_fixture
    records = load_records(images, captions)
    assert len(records) == 4 and records[0].pairs == (("car", "red"), ("grass", "green"))
    ds = CocoCaptions.from_folder(images, captions, image_size=16, max_tokens=8)
    assert len(ds) == 3  # the ten-word caption does not fit T = 8 and is skipped, not cut
    first = ds[0]
    assert first.L.shape == (1, 16, 16) and first.ab.shape == (2, 16, 16) and first.tokens.shape == (8,)
    words = ds.tokenizer.encode("A red car on green grass.").words
    assert first.occm[words.index("car"), words.index("red")] == 1
    assert first.occm[words.index("grass"), words.index("green")] == 1 and first.occm.sum() == 2
    assert ds[1].occm.sum() == 0  # no pairs annotated
    rgb = np.asarray(Image.open(images / "000000000001.jpg").convert("RGB").resize((16, 16), Image.Resampling.BOX))
    lab = rgb_to_lab(rgb / 255.0)
    assert np.allclose(first.L[0], lab[..., 0], atol=1e-3) and np.allclose(first.ab, lab[..., 1:].transpose(2, 0, 1), atol=1e-3)


def test_coco_loader_names_bad_inputs(coco_fixture, tmp_path):
    images, captions = coco_fixture
    with pytest.raises(LangcolorError, match="image folder"):
        load_records(tmp_path / "missing", captions)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": []}')
    with pytest.raises(LangcolorError, match="not a COCO captions file"):
        load_records(images, bad)
    (images / "000000000002.jpg").write_bytes(b"not a jpeg")
    ds = CocoCaptions.from_folder(images, captions, image_size=16, max_tokens=8)
    with pytest.raises(LangcolorError, match="cannot read training image"):
        ds[2]
