"""The sketch family through the product: training, export with parity, the in-process path, the CLI,
and (with the shipped weights) instructions followed object by object.

The tiny network is trained a few steps here (random-quality colours, real wiring); properties that
need a model that reads instructions use the shipped ``export/weights/sketch_small.pt``, exported into
a temporary repository once per module.
"""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from langcolor.client.cli import main as cli
from langcolor.export.families.sketch import drawing
from langcolor.export.families.sketch.config import FAMILY
from langcolor.export.families.sketch.words import PLURALS

S = 64


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _read(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _export(ckpt, root):
    from langcolor.export.triton_repo import ExportEntry, write_repository

    (exported,) = write_repository([ExportEntry.from_checkpoint(ckpt)], root)
    return exported


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from langcolor.export.checkpoint import load_checkpoint
    from langcolor.export.train import TrainOptions, train

    torch.set_num_threads(1)
    result = train(TrainOptions(config="tiny", steps=2, batch_size=4, family=FAMILY, checkpoint_every=2),
                   tmp_path_factory.mktemp("sketch_run"), progress=False)
    ckpt = load_checkpoint(result.weights)
    root = tmp_path_factory.mktemp("sketch_repo") / "repo"
    return ckpt, _export(ckpt, root), root, result


@pytest.fixture(scope="module")
def scene():
    return drawing.random_scene(np.random.default_rng(21), S * 4, 3, copies=2, distractors=1)


def test_tiny_trains_and_exports_with_parity_on_every_output(tiny):
    ckpt, exported, _, result = tiny
    assert np.isfinite(result.loss) and ckpt.family == FAMILY
    worst = exported.parity.worst()
    for name in ("NEW_CANVAS", "SELECTED", "REGIONS", "FG_RGB", "BG_RGB", "BG_SEG", "REFERRED"):
        assert f"pipeline.{name}" in worst
    assert "fusion.SELECTION" in worst and exported.parity.ok
    assert exported.manifest.geometry.image.name == "SKETCH"


def test_in_process_onnx_matches_pytorch_and_keeps_everything_else_exact(tiny, scene):
    from langcolor.client.colorizer import Colorizer
    from langcolor.export.families.sketch.evaluation import Runner
    from langcolor.export.families.sketch.instructions import Instruction

    ckpt, _, root, _ = tiny
    col = Colorizer(model=FAMILY, model_repository=root)
    canvas = np.random.default_rng(3).integers(0, 256, (*scene.ink.shape, 3), dtype=np.uint8)
    canvas[scene.ink] = 0
    result = col.colorize(_png(scene.rgb()), instruction="the left car is red", canvas=_png(canvas))
    (run,) = Runner(ckpt.build_model(), ckpt.conditioner()).run([(scene, Instruction("the left car is red", "location"), canvas)])
    assert np.abs(result.outputs["NEW_CANVAS"] - run.outputs["NEW_CANVAS"]).max() < 1e-4
    assert (result.outputs["SELECTED"] == run.outputs["SELECTED"]).all()
    assert np.abs(result.rgb.astype(int) - run.after.astype(int)).max() <= 1
    # whatever the random network selected, nothing outside it moved
    full = run.prepared.full
    chosen = [k for k in range(run.prepared.proposals.count) if result.outputs["SELECTED"][k] > 0.5]
    outside = ~np.isin(full.owner, chosen) & ~full.strokes
    assert (result.rgb[outside] == canvas[outside]).all() and (result.rgb[full.strokes] == 0).all()
    kinds = [n.kind for n in result.notes]
    assert ("selected" in kinds) != ("nothing-selected" in kinds)


def test_sketch_command_applies_instructions_in_order_and_continues_a_session(tiny, scene, tmp_path):
    _, _, root, _ = tiny
    src = tmp_path / "drawing.png"
    src.write_bytes(_png(scene.rgb()))
    repo = ["--model-repository", str(root)]
    both, first, second = tmp_path / "both.png", tmp_path / "first.png", tmp_path / "second.png"
    assert cli(["sketch", str(src), "-i", "the left car is red", "-i", "the sky is blue", "-o", str(both), *repo]) == 0
    assert cli(["sketch", str(src), "-i", "the left car is red", "-o", str(first), *repo]) == 0
    assert cli(["sketch", str(src), "--canvas", str(first), "-i", "the sky is blue", "-o", str(second), *repo]) == 0
    assert (_read(both) == _read(second)).all()  # a session continued from its canvas is the same session
    steps = tmp_path / "steps"
    assert cli(["sketch", str(src), "-i", "the left car is red", "-i", "the sky is blue", "-o", str(both),
                "--save-steps", str(steps), *repo]) == 0
    assert (_read(steps / "step01.png") == _read(first)).all() and (_read(steps / "step02.png") == _read(both)).all()


def test_interactive_sketch_reads_lines_survives_a_bad_one_and_writes_after_each(tiny, scene, tmp_path, monkeypatch, capsys):
    _, _, root, _ = tiny
    src, out, ref = tmp_path / "d.png", tmp_path / "live.png", tmp_path / "ref.png"
    src.write_bytes(_png(scene.rgb()))
    monkeypatch.setattr(sys, "stdin", io.StringIO("the left car is red\nzebra\n\nthe sky is blue\nquit\nthe ground is red\n"))
    assert cli(["sketch", str(src), "--interactive", "-o", str(out), "--model-repository", str(root)]) == 0
    said = capsys.readouterr().out
    assert "not applied" in said and "no word of the instruction is known" in said and "after 2 instruction(s)" in said
    assert cli(["sketch", str(src), "-i", "the left car is red", "-i", "the sky is blue", "-o", str(ref),
                "--model-repository", str(root)]) == 0
    assert (_read(out) == _read(ref)).all()  # the line after "quit" was not applied


def test_sketch_command_refuses_what_cannot_work(tiny, scene, tmp_path, capsys):
    _, _, root, _ = tiny
    src = tmp_path / "d.png"
    src.write_bytes(_png(scene.rgb()))
    assert cli(["sketch", str(src), "-o", str(tmp_path / "o.png"), "--model-repository", str(root)]) == 2
    assert "at least one --instruction" in capsys.readouterr().err
    small = tmp_path / "small.png"
    small.write_bytes(_png(np.zeros((10, 10, 3), np.uint8)))
    assert cli(["sketch", str(src), "--canvas", str(small), "-i", "the car is red", "-o", str(tmp_path / "o.png"),
                "--model-repository", str(root)]) == 2
    assert "the canvas is 10x10 but the drawing 256x256" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_the_generic_colorize_command_takes_the_sketch_inputs(tiny, scene, tmp_path):
    _, _, root, _ = tiny
    src, a, b = tmp_path / "d.png", tmp_path / "a.png", tmp_path / "b.png"
    src.write_bytes(_png(scene.rgb()))
    assert cli(["colorize", str(src), "--model", FAMILY, "--instruction", "the sky is blue", "-o", str(a),
                "--model-repository", str(root)]) == 0
    assert cli(["sketch", str(src), "-i", "the sky is blue", "-o", str(b), "--model-repository", str(root)]) == 0
    assert (_read(a) == _read(b)).all()


# --- with the shipped weights ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    from langcolor.export.checkpoint import default_weights_path, load_checkpoint

    path = default_weights_path(FAMILY, "small")
    if not path.is_file():
        pytest.skip("no shipped sketch weights")
    ckpt = load_checkpoint(path)
    root = tmp_path_factory.mktemp("sketch_shipped") / "repo"
    _export(ckpt, root)
    return ckpt, root


def _two_of_a_kind(seed: int):
    """A scene with two objects of one category side by side (left/right decidable), one distractor."""
    from langcolor.export.families.sketch.instructions import extreme, of_category

    rng = np.random.default_rng(seed)
    while True:
        scene = drawing.random_scene(rng, S * 4, 3, copies=2, distractors=1)
        cat = scene.items[0].category if len(of_category(scene, scene.items[0].category)) == 2 else scene.items[1].category
        members = of_category(scene, cat)
        if len(members) == 2 and extreme(scene, members, "left") is not None:
            return scene, cat, extreme(scene, members, "left"), extreme(scene, members, "right")


def _paper(scene, i):
    return scene.silhouettes[i] & ~scene.ink


def test_shipped_model_colours_the_named_instance_in_the_named_colour_and_follows_a_swap(shipped):
    from langcolor.client.colorizer import Colorizer
    from langcolor.export.families.sketch.evaluation import read_colour

    _, root = shipped
    col = Colorizer(model=FAMILY, model_repository=root)
    hits = []
    for seed in range(6):
        scene, cat, left, right = _two_of_a_kind(seed)
        for colour in ("red", "blue"):
            out = col.colorize(_png(scene.rgb()), instruction=f"the left {cat} is {colour}").rgb
            hits.append(read_colour(out, _paper(scene, left)) == colour
                        and (out[_paper(scene, right)] == 255).all())  # the other one stays bare paper
    assert np.mean(hits) >= 0.8, hits


def test_shipped_model_session_ends_with_each_objects_last_colour(shipped, tmp_path):
    from langcolor.export.families.sketch.evaluation import _region_mask, read_colour

    _, root = shipped
    scene, cat, left, right = _two_of_a_kind(40)
    src, out = tmp_path / "d.png", tmp_path / "o.png"
    src.write_bytes(_png(scene.rgb()))
    assert cli(["sketch", str(src), "-i", f"all the {PLURALS[cat]} are green", "-i", "the sky is blue",
                "-i", f"the right {cat} is orange", "-i", "the ground is brown", "-o", str(out),
                "--model-repository", str(root)]) == 0
    final = _read(out)
    assert read_colour(final, _paper(scene, left)) == "green"
    assert read_colour(final, _paper(scene, right)) == "orange"
    assert read_colour(final, _region_mask(scene, "sky")) == "blue"
    assert read_colour(final, _region_mask(scene, "ground")) == "brown"


def test_the_evaluations_scorers_give_known_answers(tiny, scene):
    from langcolor.export.families.sketch.evaluation import Runner, _local, _session, f1_of, read_colour
    from langcolor.export.families.sketch.instructions import Instruction

    patch = np.zeros((4, 4, 3), np.uint8)
    patch[:] = (215, 40, 40)
    everywhere = np.ones((4, 4), bool)
    assert read_colour(patch, everywhere) == "red"
    assert read_colour(np.full((4, 4, 3), 250, np.uint8), everywhere) == "paper"  # left uncoloured is no colour
    assert read_colour(patch, np.zeros((4, 4), bool)) is None
    assert f1_of(3, 0, 0) == 1.0 and f1_of(1, 1, 1) == 0.5 and f1_of(0, 0, 0) == 0.0
    rng = np.random.default_rng(0)
    for _ in range(20):
        steps = _session(scene, rng)
        assert 4 <= len(steps) <= 6
        assert any(set(a.targets) & set(b.targets) and a.colour != b.colour
                   for i, a in enumerate(steps) for b in steps[i + 1:])  # something is coloured again
    ckpt, _, _, _ = tiny
    (run,) = Runner(ckpt.build_model(), ckpt.conditioner()).run([(scene, Instruction("the sky is red", "background",
                                                                                     regions={"sky": "red"}), None)])
    assert _local(run)
    y, x = np.argwhere(run.prepared.full.owner >= 0)[0]  # an object's paper: a background instruction never touches it
    run.after[y, x] = 255 - run.after[y, x]
    assert not _local(run)


@pytest.mark.slow
def test_shipped_model_meets_every_target_of_the_evaluation(shipped):
    """The figures of ``langcolor evaluate --model sketch`` on fresh drawings (another seed than the
    model card's): every target met, the baselines far below."""
    from langcolor.export.families.sketch.evaluation import evaluate

    ckpt, _ = shipped
    report = evaluate(ckpt.build_model(), ckpt.conditioner(), scenes=96, seed=1)
    assert report.gates() == {k: True for k in report.gates()}, report.summary_lines()
    assert report.selection_f1["location"].category_rule < 0.7  # the location words carry the choice
    assert report.instance_colour.baseline < 0.1 and report.background_colour.baseline < 0.2
    held = report.selection_f1
    assert held["heldout colorize"].model >= 0.9 and held["heldout short"].model >= 0.85  # 0.992 / 0.902 on the card's 512
    # Two categories in one instruction were never trained and are not followed (0.554 on the card's 512:
    # mostly the last-named object alone); scored apart, out of the gates, yet above the instruction-free network.
    two = held["heldout 2 categories"]
    assert two.count > 0 and two.model > two.instruction_free + 0.3
