"""The exemplar family: conditioner, network properties, training, export, in-process colorize, scorers.

Tiny configs and real scikit-image photos; every figure asserted is a property of the method (the
attention finds a moved region, the prior picks the reference's colour, L survives colorization),
not a value tuned to pass. ``test_exemplar_serving.py`` serves the same export; the slow test at the
end holds the shipped weights to the product's target on the bundled held-out photos.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from langcolor.client import families
from langcolor.client.errors import ImageError, LangcolorError
from langcolor.client.lab import rgb_to_l, rgb_to_lab
from langcolor.client.spec import stage_specs
from langcolor.export.families.exemplar import baselines, conditioner, evaluation, photos, scenes
from langcolor.export.families.exemplar.config import REF_AB, REF_L, TrainingOptions
from langcolor.export.families.exemplar.pairs import PairOptions, PhotoPairs, eval_pairs, iou

NAME = "exemplar"


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def record():
    return families.get(NAME)


@pytest.fixture(scope="module")
def tiny(record):
    cfg = record.config("tiny")
    return cfg, cfg.geometry()


# ------------------------------------------------------------------------------ contract
def test_the_contract_takes_the_reference_at_the_encoder_and_its_colour_at_the_fusion(record):
    g = record.config("small").geometry()
    specs = stage_specs(g)
    assert specs["encoder"].input_names == ["L", REF_L]
    assert specs["fusion"].input_names[-1] == REF_AB and "L" not in specs["fusion"].input_names
    assert specs["decoder"].output_names == ["AB", "GATE"]  # the colour first, the gate for inspection
    assert g.condition_specs[0].value_range == (0.0, 100.0) and g.condition_specs[1].value_range == (-110.0, 110.0)
    assert {f.name: f.kind for f in record.inputs} == {"reference": families.IMAGE, "palette": families.TEXT}
    assert not any(f.required for f in record.inputs)  # one or the other, the conditioner says which


def test_the_bins_are_the_ab_cells_srgb_reaches():
    from langcolor.export.families.exemplar.network import ab_bins

    bins = ab_bins(10.0)
    assert bins.shape == (262, 2)  # of the 484 cells of the [-110, 110]^2 grid; Zhang's 313 include 51 unreachable
    rgb = np.random.default_rng(0).random((20000, 3), dtype=np.float32)
    ab = rgb_to_lab(rgb)[:, 1:]  # any sRGB colour lies in some bin's cell
    nearest = np.abs(ab[:, None, :] - bins[None]).max(-1).min(1)  # Chebyshev distance to the nearest centre
    assert nearest.max() <= 5.0 + 1e-3


# ------------------------------------------------------------------------------ conditioner
def test_a_reference_of_any_size_is_squashed_to_the_network_side(tiny):
    cfg, geom = tiny
    cond = conditioner.build(geom, {})
    half = np.zeros((90, 300, 3), np.uint8)
    half[:, :150] = (200, 30, 30)  # red left, blue right
    half[:, 150:] = (30, 60, 200)
    planes = cond.condition({"reference": _jpeg(half)}).tensors
    ref_l, ref_ab = planes[REF_L], planes[REF_AB]
    s = cfg.image_size
    assert ref_l.shape == (1, s, s) and ref_ab.shape == (2, s, s) and ref_l.dtype == np.float32
    assert ref_ab[0, :, : s // 2 - 2].mean() > 40 and ref_ab[1, :, s // 2 + 2 :].mean() < -40  # red a+, blue b-
    other_aspect = cond.condition({"reference": np.ascontiguousarray(np.repeat(half[::3], 9, axis=0))}).tensors
    assert np.abs(other_aspect[REF_AB] - ref_ab).mean() < 3.0  # an array, another aspect: the same squashed picture
    huge = np.asarray(Image.fromarray(half).resize((3000, 900), Image.Resampling.NEAREST))
    assert np.abs(cond.condition({"reference": huge}).tensors[REF_AB] - ref_ab).mean() < 3.0


def test_a_gray_reference_is_refused_and_a_toned_one_is_not(tiny):
    _, geom = tiny
    cond = conditioner.build(geom, {})
    camera = skdata.camera()[::4, ::4]  # [128, 128] gray
    for gray in (_png(camera), _jpeg(np.repeat(camera[..., None], 3, axis=2))):
        with pytest.raises(ImageError, match="carries no colour"):
            cond.condition({"reference": gray})
    sepia = (np.stack([camera * 1.0, camera * 0.85, camera * 0.6], -1)).astype(np.uint8)  # a toned print has colour
    assert cond.condition({"reference": _png(sepia)}).tensors[REF_AB][1].mean() > 5.0


def test_a_palette_is_rendered_as_swatches_in_order(tiny):
    cfg, geom = tiny
    cond = conditioner.build(geom, {})
    planes = cond.condition({"palette": "#ff0000, 00f #2E86C1"}).tensors  # case, separators, 3 digits, no '#'
    s = cfg.image_size
    want = rgb_to_lab(np.array([[255, 0, 0], [0, 0, 255], [46, 134, 193]], np.float32) / 255.0)  # [3, 3]
    edges = np.linspace(0, s, 4).round().astype(int)
    for k in range(3):
        cols = slice(edges[k], edges[k + 1])
        assert np.allclose(planes[REF_L][0, :, cols], want[k, 0], atol=0.5)
        assert np.allclose(planes[REF_AB][:, :, cols].reshape(2, -1).T, want[k, 1:], atol=0.5)


@pytest.mark.parametrize("text, message", [
    ("", "empty"), (" , ", "colour 1 is empty"), ("#ff0000,,#00ff00", "colour 2 is empty"), ("#12345", "colour 1 .* not a hex"), ("red,#00ff00", "colour 1"),
    ("#00ff00,#gg0000", "colour 2"), (",".join(["#123456"] * 17), "at most 16"), (b"\xff\xfe", "UTF-8"),
    ("#808080,#ffffff,#000", "every colour is gray"),
])
def test_a_bad_palette_is_refused_with_its_reason(tiny, text, message):
    with pytest.raises(conditioner.PaletteError, match=message):
        conditioner.build(tiny[1], {}).condition({"palette": text})


def test_reference_and_palette_go_alone(tiny):
    cond = conditioner.build(tiny[1], {})
    with pytest.raises(LangcolorError, match="not both"):
        cond.condition({"reference": _png(skdata.astronaut()), "palette": "#ff0000"})
    with pytest.raises(ImageError, match="needs a reference image .* or a palette"):
        cond.condition({})
    with pytest.raises(ImageError, match="reference: .*not an image"):
        cond.condition({"reference": b"GIF89a but not really"})


# ------------------------------------------------------------------------------ network
@pytest.fixture(scope="module")
def net(record, tiny):
    torch.manual_seed(0)
    cfg, geom = tiny
    return record.network().build(cfg, geom).eval()


def test_attention_finds_each_cell_where_it_moved(net):
    """SCM (eq. 1): with the keys a permutation of the queries, every cell reads its partner's colour,
    not the colour at its own position (no positional copying in the module itself)."""
    cfg = net.cfg
    g, d, n = cfg.grid, 64, cfg.grid**2  # 64-D: random unit vectors are far apart (cosines below ~0.5)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, d, n)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    perm = rng.permutation(n)
    k = q[:, :, perm]  # key j is query perm[j]
    values = rng.uniform(-60, 60, (1, 2, g, g)).astype(np.float32)
    ref_ab = np.repeat(np.repeat(values, cfg.image_size // g, 2), cfg.image_size // g, 3)  # [1,2,S,S], flat per cell
    with torch.no_grad():
        net.fusion.log_scale.fill_(math.log(1 / cfg.tau_min))
        c_r, _, _ = net.fusion.attend(torch.from_numpy(q.reshape(1, d, g, g)), torch.from_numpy(k.reshape(1, d, g, g)),
                                        torch.from_numpy(ref_ab))
    partner = np.argsort(perm)  # query x matches key partner[x]
    want = values.reshape(2, n)[:, partner].T  # [N, 2]
    assert np.abs(c_r[0].numpy() - want).max() < 0.5


def test_the_database_module_reads_the_reference_histogram_with_a_flat_classifier(net):
    """DCM (eq. 2-4): with equal logits the posterior is the reference's histogram R_H, so a reference of
    one colour gives that colour everywhere, computed in the graph from REF_AB."""
    cfg = net.cfg
    s, g = cfg.image_size, cfg.grid
    index = int(torch.nonzero((net.fusion.bins == torch.tensor([20.0, 20.0])).all(1))[0])
    target_bin = net.fusion.bins[index]  # an orange well inside the gamut: its neighbours surround it evenly
    ref_ab = target_bin.view(1, 2, 1, 1).expand(1, 2, s, s).contiguous()
    feat = torch.randn(1, cfg.enc_channels[-1], g, g)
    with torch.no_grad():
        hist = net.fusion.soft_histogram(ref_ab)  # [1, Q]
        saved = net.fusion.classifier.weight.clone(), net.fusion.classifier.bias.clone()
        net.fusion.classifier.weight.zero_()
        net.fusion.classifier.bias.zero_()
        c_d, post, _ = net.fusion.database(feat, torch.log(hist + cfg.prior_eps))
        net.fusion.classifier.weight.copy_(saved[0])
        net.fusion.classifier.bias.copy_(saved[1])
    assert int(hist.argmax()) == index and abs(float(hist.sum()) - 1.0) < 1e-5
    assert torch.allclose(c_d[0], target_bin.expand_as(c_d[0]), atol=1.0)


def test_the_network_answers_ab_and_a_gate_that_sums_to_one(net):
    s = net.cfg.image_size
    L, ref_l = torch.rand(3, 1, s, s) * 100, torch.rand(3, 1, s, s) * 100
    ref_ab = torch.rand(3, 2, s, s) * 120 - 60
    with torch.no_grad():
        ab, gate = net(L, ref_l, ref_ab)
        auto = net.forward_train(L)  # stage 1: no reference
    assert ab.shape == (3, 2, s, s) and ab.abs().max() <= 110.0
    assert torch.allclose(gate.sum(1), torch.ones(3, s, s), atol=1e-5) and gate.min() >= 0
    assert auto["ab"].shape == ab.shape and auto["gate"] is None


# ------------------------------------------------------------------------------ data
def test_training_pairs_from_real_photos_are_two_views_never_aligned(tiny):
    cfg, _ = tiny
    images = {"chelsea": skdata.chelsea() / 255.0, "coffee": skdata.coffee() / 255.0}
    pairs = PhotoPairs({k: v.astype(np.float32) for k, v in images.items()}, PairOptions(image_size=cfg.image_size))
    batch = pairs.batch(np.random.default_rng(0), 6)
    s = cfg.image_size
    assert batch["L"].shape == (6, 1, s, s) and batch["ref_ab"].shape == (6, 2, s, s)
    assert batch["L"].min() >= 0 and batch["L"].max() <= 100
    assert np.abs(batch["L"] - batch["ref_L"]).mean(axis=(1, 2, 3)).min() > 2.0  # another view, not a copy
    again = pairs.batch(np.random.default_rng(0), 6)
    assert all(np.array_equal(batch[k], again[k]) for k in batch)  # deterministic per generator


def test_evaluation_pairs_are_other_windows_of_the_held_out_scene():
    pairs = eval_pairs("test", per_photo=2, seed=0, only=["coffee", "motorcycle"])
    assert [p.photo for p in pairs] == ["coffee", "coffee", "motorcycle", "motorcycle"]
    for p in pairs:
        assert evaluation.PAIRS_PER_PHOTO >= 2 and 0.05 <= iou(p.target_box, p.ref_box) <= 0.4
    assert pairs[2].ref_view == 1  # the motorcycle's reference is the right stereo view
    assert set(photos.names("test")).isdisjoint(photos.names("train") + photos.names("val"))


def test_missing_debian_photos_say_how_to_fetch_them(tmp_path, monkeypatch):
    monkeypatch.setenv(photos.ROOTS_ENV, str(tmp_path / "nothing"))
    monkeypatch.setenv(photos.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(photos.PhotosMissingError, match="apt-get download plasma-workspace-wallpapers"):
        photos.load_photos(("val",))
    ok, missing = photos.available("test")
    assert ok == ["astronaut", "coffee", "motorcycle", "china"] and len(missing) == 4  # the bundled ones remain
    assert all("Debian package" in m for m in missing)


def test_training_never_takes_the_test_photos():
    with pytest.raises(LangcolorError, match="photo-splits"):
        TrainingOptions(photo_splits="train,test")


# ------------------------------------------------------------------------------ training and export
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny, synthetic scenes only (no photo files needed), two steps of each stage."""
    from langcolor.export.checkpoint import load_checkpoint
    from langcolor.export.train import TrainOptions, train

    opts = TrainOptions(config="tiny", steps=4, batch_size=4, lr=1e-3, family=NAME, checkpoint_every=2,
                        family_options=TrainingOptions(stage1_steps=2, synthetic_rate=1.0))
    result = train(opts, tmp_path_factory.mktemp("exemplar_run"), progress=False)
    return load_checkpoint(result.weights), opts


def test_training_runs_both_stages_from_deterministic_batches(trained, record):
    ckpt, opts = trained
    assert ckpt.family == NAME and ckpt.step == 4 and ckpt.assets == {} and ckpt.meta["data"] == "synthetic scenes"
    recipe = record.training()
    batches = recipe.data_source(ckpt.config, None, opts)
    first, again, later = batches(1), batches(1), batches(2)
    assert all(torch.equal(first[k], again[k]) for k in first)  # step k's batch: a resumed run sees it too
    assert int(first["stage"]) == 1 and "ref_L" not in first and int(later["stage"]) == 2 and "ref_L" in later
    model = ckpt.build_model().train()
    assert set(recipe.losses(model, first, opts)) == {"l1", "db_ce", "total"}
    assert set(recipe.losses(model, later, opts)) == {"l1", "db_ce", "hist", "sparse", "ref_l1", "gate_ce", "total"}


def test_export_is_parity_checked_and_colorizes_in_process(trained, tmp_path_factory):
    from langcolor.client.colorizer import Colorizer
    from langcolor.export.triton_repo import ExportEntry, write_repository

    ckpt, _ = trained
    root = tmp_path_factory.mktemp("exemplar_repo") / "repo"
    (exported,) = write_repository([ExportEntry.from_checkpoint(ckpt)], root)
    assert exported.parity.ok and {"encoder.Q", "fusion.ALPHA", "decoder.AB", "pipeline.AB", "pipeline.GATE"} <= set(
        exported.parity.worst())
    photo, ref = skdata.camera()[::5, ::4], skdata.astronaut()[::3, ::3]
    col = Colorizer(model=NAME, model_repository=root)
    result = col.colorize(_png(photo), reference=_jpeg(ref))
    assert result.rgb.shape == (*photo.shape, 3) and set(result.outputs) == {"AB", "GATE"}
    l_out = rgb_to_l(result.rgb.astype(np.float32) / 255.0)
    l_in = rgb_to_l(np.repeat(photo[..., None], 3, 2).astype(np.float32) / 255.0)
    assert np.abs(l_out - l_in).mean() < 0.5  # the photograph's own lightness comes back
    model = ckpt.build_model()
    planes = col.condition({"reference": _jpeg(ref)}).tensors
    with torch.no_grad():
        ab, _ = model(torch.from_numpy(col.prepare(_png(photo)).l_small[None]),
                      torch.from_numpy(planes[REF_L][None]), torch.from_numpy(planes[REF_AB][None]))
    assert np.abs(ab[0].numpy() - result.ab_small).max() < 1e-3  # ONNX in-process == PyTorch
    other = col.colorize(_png(photo), palette="#b03a2e,#2e86c1,#f1c40f")
    assert np.abs(other.ab_small - result.ab_small).mean() > 0.05  # the reference reaches the network
    with pytest.raises(ImageError, match="carries no colour"):
        col.colorize(_png(photo), reference=_png(photo))


# ------------------------------------------------------------------------------ the evaluation's scorers
def test_reinhard_paints_the_reference_mean_on_a_gray_target():
    ref = np.zeros((10, 20, 3), np.float32)
    ref[:, :10] = (0.8, 0.1, 0.1)
    ref[:, 10:] = (0.1, 0.2, 0.8)
    lab = rgb_to_lab(ref)
    out = baselines.reinhard(np.full((7, 5), 50.0, np.float32), ref)
    assert out.shape == (7, 5, 2)
    assert np.allclose(out, (lab[0, 0, 1:] + lab[0, -1, 1:]) / 2, atol=1e-3)


def test_welsh_copies_the_colour_of_the_matching_lightness_and_texture():
    """Reference: a dark smooth red half and a bright smooth blue half. The target has the same two
    lightnesses; every target pixel away from the edge takes the colour of its own half."""
    dark, bright = np.array([0.45, 0.05, 0.05], np.float32), np.array([0.55, 0.75, 1.0], np.float32)
    ref = np.zeros((40, 40, 3), np.float32)
    ref[:, :20], ref[:, 20:] = dark, bright
    ref_lab = rgb_to_lab(ref)
    target_l = np.where(np.arange(30)[None, :] < 12, ref_lab[0, 0, 0], ref_lab[0, -1, 0]) * np.ones((30, 1))
    out = baselines.welsh(target_l.astype(np.float32), ref)
    interior = np.r_[0:9, 15:30]  # 3 px from the edge, where the 5x5 std is that of a flat region
    want = np.where(np.arange(30)[interior] < 12, 0, 1)
    colours = np.stack([ref_lab[0, 0, 1:], ref_lab[0, -1, 1:]])
    got = np.abs(out[:, interior, None, :] - colours[None, None]).sum(-1).argmin(-1)  # [30, n]
    assert (got == want[None]).all()


def test_local_std_and_the_figures_on_hand_computed_cases():
    plane = np.array([[0, 0, 0], [0, 9, 0], [0, 0, 0]], np.float64)
    assert np.isclose(baselines.box_mean(plane, 3)[1, 1], 1.0)  # 9 / 9
    # A 5x5 window at the corner, mirrored (b a | a b c): rows and columns 1 appear twice, so 4 x 9 / 25.
    assert np.isclose(baselines.box_mean(plane, 5)[0, 0], 36 / 25)
    assert np.allclose(baselines.local_std(np.full((6, 7), 3.0)), 0.0)
    checker = np.indices((8, 8)).sum(0) % 2 * 10.0  # 5x5 windows of a checkerboard: 12 or 13 of 25 at 10
    assert np.allclose(baselines.local_std(checker)[2:-2, 2:-2], 10 * np.sqrt(12 * 13) / 25, atol=1e-4)
    a = np.zeros((4, 4, 2), np.float32)
    b = a.copy()
    b[..., 0] = 3.0
    b[..., 1] = 4.0
    assert baselines.delta_e(a, b) == pytest.approx(5.0)
    assert baselines.histogram_intersection(b, b) == pytest.approx(1.0)
    assert baselines.histogram_intersection(a, b + 30) == pytest.approx(0.0)
    assert baselines.colourfulness(np.full((5, 5, 3), 128, np.uint8)) == pytest.approx(0.0)


def test_synthetic_scoring_counts_the_colour_the_reference_asks_for():
    pairs = [scenes.make_pair(0, "test", i, 32, "free", "swap") for i in range(6)]
    truth = [p.ab for p in pairs]
    assert np.mean(scenes.instance_hits(pairs, truth, truth=True)) == 1.0
    assert np.mean(scenes.instance_hits(pairs, truth)) == 0.0  # a swap asks for another colour for every class
    palette = scenes.make_pair(0, "test", 0, 32, "set", "palette")
    assert all(c in scenes.CLASS_SETS[k] for k, c in palette.colours.items())
    present = {tuple(v) for v in palette.ref_ab.reshape(2, -1).T.round().tolist()}
    assert all(tuple(np.round(scenes.PALETTE[palette.expected[k]]).tolist()) in present for k in palette.colours)


def test_the_report_degrades_to_the_bundled_photos(trained, monkeypatch):
    ckpt, _ = trained
    monkeypatch.setattr(photos, "available", lambda split: (["coffee"], ["Path: not here (Debian package)"]))
    monkeypatch.setattr(evaluation, "PAIRS_PER_PHOTO", 1)
    report = evaluation.evaluate(ckpt.build_model(), ckpt.conditioner(), scenes=4, seed=0)
    text = "\n".join(report.summary_lines())
    assert report.photos == ("coffee",) and "not available here" in text and "Path: not here" in text
    table = report.table()
    assert set(table) == {"coffee", "mean"} and {"gray", "reinhard", "welsh", "network", "truth"} == set(table["mean"])
    assert "photo_gain_vs_best_baseline" in report.targets and report.synthetic["count"] == 4
    assert report.to_dict()["photo_delta_e"]["coffee"]["gray"] > 20  # coffee is colourful: gray is far off


# ------------------------------------------------------------------------------ the shipped weights
@pytest.mark.slow
def test_the_shipped_weights_beat_the_classical_methods_on_the_bundled_held_out_photos():
    from langcolor.export.checkpoint import default_weights_path, load_checkpoint

    path = default_weights_path(NAME)
    if not path.is_file():
        pytest.skip(f"no shipped weights at {path}")
    torch.set_num_threads(1)
    ckpt = load_checkpoint(path)
    names = [n for n in photos.names("test") if photos.by_name(n).source == "skimage"]
    scores = evaluation.score_photos(ckpt.build_model(), ckpt.conditioner(), names, seed=0)
    mean = {m: np.mean([s.delta_e for s in scores if s.method == m]) for m in ("reinhard", "welsh", "network",
                                                                                 "shuffled-network")}
    best = min(mean["reinhard"], mean["welsh"])
    assert mean["network"] <= (1 - evaluation.PHOTO_GAIN) * best, mean
    assert mean["shuffled-network"] > mean["network"] + 3.0, mean  # it colours from the reference it is given
