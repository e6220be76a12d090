"""The automatic family ``semantic``: network properties, the sampler, export and the product paths.

Fast tier: a ``tiny`` network trained a few steps (its colours mean nothing; causality, the mixture,
the sampler's seeding and batching, parity and the command line do not depend on training). The
figures of the shipped weights are checked in ``test_semantic_quality.py``; the server in
``test_semantic_serving.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from langcolor.client.cli import main
from langcolor.client.colorizer import Colorizer
from langcolor.client.errors import LangcolorError
from langcolor.client.lab import AB_SCALE, rgb_to_lab
from langcolor.export.families.semantic import conditioner as cond_mod
from langcolor.export.families.semantic import data, mixture, network, sampler
from langcolor.export.families.semantic.config import (
    AB_CANVAS, BINS, CONFIGS, COND, MIX, ROW, SEED, SEG, SEM_OVERRIDE, TEMPERATURE,
)

NAME = "semantic"


def _net(config: str = "tiny", seed: int = 0) -> network.SemanticNet:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    cfg = CONFIGS[config]
    net = network.build(cfg, cfg.geometry()).eval()
    with torch.no_grad():  # fresh weights give tiny outputs; make every path carry signal
        for p in net.decoder.parameters():
            p.mul_(3.0)
    return net


# ------------------------------------------------------------------------------- the network
@pytest.mark.parametrize("config", ["tiny", "small"])
def test_the_decoder_is_exactly_causal_in_raster_order(config):
    """Changing the canvas at position p changes no output at positions <= p, and does change later ones."""
    net = _net(config)
    q = net.cfg.chroma_size
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(2, net.cfg.cond_channels, q, q, generator=g)
    canvas = torch.randn(2, 2, q, q, generator=g) * 40
    with torch.no_grad():
        base = net.decoder.full(cond, canvas).flatten(2)  # [B,6M,Q*Q]
        for p in (0, 1, q - 1, q, q + 3, q * q // 2, q * q - 2):
            moved = canvas.clone()
            moved[:, :, p // q, p % q] += 60.0
            diff = (net.decoder.full(cond, moved).flatten(2) - base).abs().amax((0, 1))  # [Q*Q]
            assert diff[: p + 1].max().item() == 0.0, f"position {p} leaks into an output at or before it"
            assert diff[p + 1 :].max().item() > 1e-3, f"position {p} reaches no later output"
    # No blind spot: the pixel right above-right of the next row start is seen by it.
    assert diff.numel() == q * q


def test_the_row_step_gives_the_full_pass_numbers_at_every_row():
    net = _net("small")
    q = net.cfg.chroma_size
    g = torch.Generator().manual_seed(2)
    cond = torch.randn(3, net.cfg.cond_channels, q, q, generator=g)
    canvas = torch.randn(3, 2, q, q, generator=g) * 40
    with torch.no_grad():
        full = net.decoder.full(cond, canvas)  # [B,6M,Q,Q]
        for r in range(q):
            rows = torch.tensor([[r], [(r + 5) % q], [q - 1 - r]])  # each image its own row
            got = net.decoder(cond, canvas, rows)  # [B,6M,Q]
            for b in range(3):
                assert torch.equal(got[b], full[b, :, int(rows[b, 0])]), (r, b)


def test_the_mixture_is_a_distribution_over_the_bins():
    """exp(-nll) summed over all BINS x BINS (a, b) bins is 1, edge bins included."""
    torch.manual_seed(3)
    m = 3
    raw = torch.randn(1, 6 * m, 1, 1) * torch.tensor([2.0] * m + [0.5] * 2 * m + [1.0] * 2 * m + [1.0] * m).view(1, -1, 1, 1)
    raw[:, 3 * m : 5 * m] -= 2.5  # narrow logistics, some mass in the open edge bins
    mix = mixture.bound(raw, m)
    centres = torch.linspace(-1, 1, BINS)
    a, b = torch.meshgrid(centres, centres, indexing="ij")
    target = torch.stack([a, b])[None]  # [1,2,BINS,BINS]
    total = torch.exp(-mixture.nll(mix.expand(1, -1, BINS, BINS), target, m).double()).sum().item()
    assert abs(total - 1.0) < 2e-3, total


def test_the_sampler_draws_from_the_mixture():
    """Two logistics, weights 0.8 / 0.2: the draws' shares and means follow; b follows a through c."""
    m, n = 2, 20000
    mix = np.zeros((n, 6 * m), np.float32)
    mix[:, :m] = np.log([0.8, 0.2])
    mix[:, m : 2 * m] = [0.5, -0.5]  # mu_a
    mix[:, 2 * m : 3 * m] = [0.0, 0.2]  # mu_b before the coupling
    mix[:, 3 * m : 5 * m] = -4.0  # narrow
    mix[:, 5 * m :] = [0.6, 0.0]  # b = mu_b + 0.6 a on the first logistic
    u = np.random.default_rng(0).random((n, m + 2))
    ab = sampler.draw(mix, u, np.ones(n))
    first = ab[:, 0] > 0
    assert abs(first.mean() - 0.8) < 0.015
    assert abs(ab[first, 0].mean() - 0.5) < 0.01 and abs(ab[first, 1].mean() - 0.3) < 0.01
    assert abs(ab[~first, 1].mean() - 0.2) < 0.01
    cold = sampler.draw(mix[:4], u[:4], np.zeros(4))  # temperature 0: the likeliest logistic's means
    assert np.allclose(cold, [[0.5, 0.3]] * 4)


# ------------------------------------------------------------------------------- data
def test_scenes_tell_colour_by_shape_only():
    scenes = data.make_scenes(0, "train", 0, 300, 64)
    levels: dict[int, list[float]] = {}
    modes: dict[int, list[int]] = {}
    for s in scenes:
        for k, obj in enumerate(s.objects, start=1):
            levels.setdefault(obj.cls, []).append(float(np.median(s.L[s.instance_map == k])))
            modes.setdefault(obj.cls, []).append(obj.mode)
            assert (s.labels[s.instance_map == k] == obj.cls).all()
    means = [np.mean(v) for v in levels.values()]
    assert max(means) - min(means) < 8.0, means  # gray level independent of class (range 35-85)
    for cls, picks in modes.items():
        share = np.mean(picks)
        assert (0.35 < share < 0.65) if len(data.MODES[cls]) == 2 else share == 0


# ------------------------------------------------------------------------------- the conditioner
def test_seed_and_temperature_are_parsed_and_refused_with_a_message():
    c = cond_mod.SamplingConditioner(CONFIGS["tiny"].geometry())
    got = c.condition({"seed": b"7", "temperature": " 0.5 "})
    assert got.tensors[SEED].tolist() == [7] and got.tensors[TEMPERATURE].tolist() == [0.5]
    assert not got.tensors[SEM_OVERRIDE].any()
    default = c.condition({})
    assert default.tensors[SEED].tolist() == [0] and default.tensors[TEMPERATURE].tolist() == [1.0]
    for values, match in (({"seed": "-1"}, "seed must be"), ({"seed": "1.5"}, "seed must be"),
                          ({"seed": str(2**31)}, "seed must be"), ({"seed": ""}, "empty"),
                          ({"seed": b"\xff"}, "not UTF-8"), ({"temperature": "nan"}, "temperature must"),
                          ({"temperature": "inf"}, "temperature must"), ({"temperature": "2.5"}, "temperature must"),
                          ({"temperature": "-0.1"}, "temperature must"), ({"seed": "9" * 10000}, "10000 characters")):
        with pytest.raises(LangcolorError, match=match) as info:
            c.condition(values)
        assert len(str(info.value)) < 200


# ------------------------------------------------------------------------------- export and product
@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    from langcolor.export.checkpoint import load_checkpoint
    from langcolor.export.train import TrainOptions, train
    from langcolor.export.triton_repo import ExportEntry, write_repository

    torch.set_num_threads(1)
    result = train(TrainOptions(config="tiny", steps=3, batch_size=4, family=NAME, checkpoint_every=3),
                   tmp_path_factory.mktemp("semantic_run"), progress=False)
    root = tmp_path_factory.mktemp("semantic_repo") / "repo"
    entry = ExportEntry.from_checkpoint(load_checkpoint(result.weights), checkpoint=str(result.weights))
    (exported,) = write_repository([entry], root)
    return root, exported


def test_export_checks_every_stage_and_the_sampling_loop(repository):
    _, exported = repository
    worst = exported.parity.worst()
    assert exported.parity.ok
    assert {"encoder.EMB", "encoder.SEG_LOGITS", "fusion.COND", "decoder.MIX", "driver.AB", "driver.SEG"} <= set(worst)
    assert worst["driver.AB"] <= exported.parity.tolerances()["driver.AB"] and worst["driver.SEG"] == 0.0


def test_the_exported_decoder_is_causal_too(repository):
    import onnxruntime as ort

    root, exported = repository
    g = exported.manifest.geometry
    q = g.image_size // 4
    session = ort.InferenceSession(str(root / f"{NAME}_decoder" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    cond = rng.normal(size=(1, *next(t for t in g.modulated if t.name == COND).dims)).astype(np.float32) * 3
    canvas = rng.uniform(-60, 60, (1, 2, q, q)).astype(np.float32)

    def rows(c: np.ndarray) -> np.ndarray:  # [6M, Q*Q], every row by the row step
        return np.concatenate([session.run([MIX], {COND: cond, AB_CANVAS: c, ROW: np.array([[r]])})[0][0]
                               for r in range(q)], axis=1)

    base = rows(canvas)
    for p in (0, q + 1, q * q - 2):
        moved = canvas.copy()
        moved[:, :, p // q, p % q] += 60
        diff = np.abs(rows(moved) - base).max(0)
        assert diff[: p + 1].max() == 0.0 and diff[p + 1 :].max() > 1e-4, p


def test_seeded_samples_are_reproducible_diverse_and_batch_independent(repository):
    root, _ = repository
    from skimage import data as skdata

    photo = skdata.astronaut()[::6, ::6]
    col = Colorizer(model=NAME, model_repository=root)
    a, b, a2 = (col.colorize(photo, seed=s) for s in ("11", "12", "11"))
    assert np.array_equal(a.ab_small, a2.ab_small) and np.array_equal(a.rgb, a2.rgb)
    assert np.abs(a.ab_small - b.ab_small).mean() > 0.5
    assert a.outputs[SEG].shape == a.ab_small.shape[1:] and a.outputs[SEG].dtype == np.int64
    # Batched with other images, each keeps its own stream. (onnxruntime's multi-threaded kernels may
    # split a batch of 3 differently from a batch of 1 and round ~1e-8 apart, so AB is compared to a
    # tolerance far below one 8-bit step, and the images exactly.)
    many = col.colorize_many([(photo, {"seed": 12}), (skdata.camera()[::8, ::8], {"seed": 3}), (photo, {"seed": 11})])
    for got, want in ((many[0], b), (many[2], a)):
        assert np.abs(got.ab_small - want.ab_small).max() < 1e-3 and np.array_equal(got.rgb, want.rgb)
    cold = [col.colorize(photo, seed=s, temperature="0").ab_small for s in (1, 2)]
    assert np.array_equal(*cold)  # temperature 0 ignores the seed
    assert any(n.kind == "sampling" and "seed 11" in n.message for n in a.notes)


def test_the_override_reaches_the_colours_and_seg(repository):
    root, _ = repository
    col = Colorizer(model=NAME, model_repository=root)
    g = col.geometry
    q = g.image_size // 4
    L = np.full((1, *g.image.dims), 50.0, np.float32)
    base = {g.image.name: L, SEED: np.array([[5]]), TEMPERATURE: np.array([[0.0]], np.float32)}
    k = next(t for t in g.request_inputs if t.name == SEM_OVERRIDE).dims[0]
    outs = []
    for cls in (1, 2):
        override = np.zeros((1, k, q, q), np.float32)
        override[0, cls] = 1.0
        outs.append(col.infer({**base, SEM_OVERRIDE: override}))
        assert (outs[-1][SEG] == cls).all()
    assert np.abs(outs[0]["AB"] - outs[1]["AB"]).max() > 1e-3


def _save(tmp_path, array, name="photo.png"):
    path = tmp_path / name
    Image.fromarray(array).save(path)
    return path


def test_colorize_samples_writes_one_file_per_seed(repository, tmp_path, capsys, monkeypatch):
    from skimage import data as skdata

    root, _ = repository
    monkeypatch.chdir(tmp_path)
    photo = _save(tmp_path, skdata.camera()[::5, ::5])
    code = main(["colorize", str(photo), "--model", NAME, "--samples", "3", "--seed", "40", "-o", "out.png",
                 "--model-repository", str(root)])
    out = capsys.readouterr().out
    assert code == 0, out
    files = [tmp_path / f"out_{i}.png" for i in range(3)]
    assert all(f.is_file() for f in files) and not (tmp_path / "out.png").exists()
    images = [np.asarray(Image.open(f)) for f in files]
    assert not np.array_equal(images[0], images[1])
    l_in = rgb_to_lab(np.repeat(skdata.camera()[::5, ::5, None], 3, axis=2) / 255.0)[..., 0]
    assert np.abs(rgb_to_lab(images[2] / 255.0)[..., 0] - l_in).max() < 0.3  # the photo's own L
    assert main(["colorize", str(photo), "--model", NAME, "--seed", "41", "-o", "one.png",
                 "--model-repository", str(root)]) == 0
    assert np.array_equal(np.asarray(Image.open("one.png")), images[1])  # sample 1 is seed 41
    capsys.readouterr()
    for argv, match in ((["--model", NAME, "--samples", "0"], "--samples must be"),
                        (["--model", NAME, "--samples", "2", "--seed", "x"], "--seed must be an integer"),
                        (["--model", NAME, "--samples", "2", "--seed", str(2**31 - 1)], "seed must be an integer in"),
                        (["--samples", "2", "-c", "a red car"], "takes no seed")):  # the default family does not sample
        assert main(["colorize", str(photo), "-o", "x.png", "--model-repository", str(root), *argv]) == 2
        assert match in capsys.readouterr().err


def test_models_lists_no_condition_beside_the_knobs(repository, capsys):
    root, _ = repository
    assert main(["models", "--json", "--model-repository", str(root)]) == 0
    doc = next(d for d in json.loads(capsys.readouterr().out) if d["family"] == NAME)
    assert [(i["name"], i["required"]) for i in doc["inputs"]] == [("seed", False), ("temperature", False)]
    assert doc["available"] and doc["outputs"] == ["AB", SEG]
    assert [c["name"] for c in doc["conditions"]] == [SEED, TEMPERATURE, SEM_OVERRIDE]


def test_the_family_needs_nothing_but_the_photo_and_keeps_its_lightness(repository, tmp_path):
    root, _ = repository
    rgb = np.zeros((40, 56, 3), np.uint8)
    rgb[:, :, :] = np.linspace(10, 240, 56, dtype=np.uint8)[None, :, None]
    result = Colorizer(model=NAME, model_repository=root).colorize(rgb)
    l_in = rgb_to_lab(rgb / 255.0)[..., 0]
    assert result.rgb.shape == rgb.shape and np.abs(rgb_to_lab(result.rgb / 255.0)[..., 0] - l_in).max() < 0.3
    assert np.abs(result.ab_small).max() <= AB_SCALE


def test_batch_samples_writes_one_folder_per_seed_and_takes_seeds_from_a_manifest(repository, tmp_path, capsys):
    from skimage import data as skdata

    root, _ = repository
    src = tmp_path / "scans"
    src.mkdir()
    _save(src, skdata.camera()[::6, ::6], "a.png")
    _save(src, skdata.astronaut()[::6, ::6], "b.png")
    out = tmp_path / "out"
    assert main(["batch", str(src), "-o", str(out), "--model", NAME, "--samples", "2", "--seed", "5",
                 "--model-repository", str(root), "--no-progress"]) == 0
    capsys.readouterr()
    pictures = {(k, n): np.asarray(Image.open(out / f"sample_{k}" / n)) for k in (0, 1) for n in ("a.png", "b.png")}
    assert not np.array_equal(pictures[(0, "a.png")], pictures[(1, "a.png")])
    col = Colorizer(model=NAME, model_repository=root)
    assert np.array_equal(col.colorize(src / "b.png", seed="6").rgb, pictures[(1, "b.png")])  # sample 1 is seed 6
    # A manifest may give each image its own seed and temperature (one colouring each) ...
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,seed,temperature\na.png,6,\nb.png,5,0\n")
    one = tmp_path / "one"
    assert main(["batch", str(src), "-o", str(one), "--manifest", str(manifest), "--model", NAME,
                 "--model-repository", str(root), "--no-progress"]) == 0
    assert np.array_equal(np.asarray(Image.open(one / "a.png")), pictures[(1, "a.png")])
    assert np.array_equal(np.asarray(Image.open(one / "b.png")), col.colorize(src / "b.png", seed="5", temperature="0").rgb)
    # ... but not with --samples, which sets every image's seed.
    capsys.readouterr()
    assert main(["batch", str(src), "-o", str(tmp_path / "x"), "--manifest", str(manifest), "--model", NAME,
                 "--samples", "2", "--model-repository", str(root), "--no-progress"]) == 2
    assert "sets seeds per image" in capsys.readouterr().err


def test_the_benchmark_counts_the_sampling_loop_as_one_request(repository):
    """``langcolor bench``'s e2e for a driven family is the loop: the decoder once per chroma pixel."""
    from langcolor.benchmarks.flops import network_gflops_per_image
    from langcolor.benchmarks.models import BenchModel
    from langcolor.benchmarks.paths import E2E, onnxruntime_runner, pytorch_runner
    from langcolor.client.runtime import ModelBundle
    from langcolor.export.checkpoint import load_checkpoint

    root, exported = repository
    ckpt = load_checkpoint(exported.manifest.extra["checkpoint"])
    torch.set_num_threads(1)
    bm = BenchModel("tiny", ckpt.build_model(), ModelBundle.load(root, NAME), f"trained {ckpt.sha256[:12]}")
    q = bm.geometry.image_size // 4
    assert bm.stage_calls == {"encoder": 1, "fusion": 1, "decoder": q * q}
    assert bm.user_values == {}  # the defaults: no seed, no temperature given
    feeds = bm.inputs(2)
    flops = network_gflops_per_image(bm.model, {k: torch.from_numpy(v) for k, v in feeds.items()})
    assert flops["e2e"] == pytest.approx(flops["encoder"] + flops["fusion"] + q * q * flops["decoder"])
    ort_out = onnxruntime_runner(bm).stage_calls(feeds)[E2E]()
    torch_out = pytorch_runner(bm).stage_calls(feeds)[E2E]()
    assert set(ort_out) == {"AB", SEG} and ort_out["AB"].shape == (2, 2, q, q)
    assert np.abs(ort_out["AB"] - torch_out["AB"]).max() < 1e-3  # the same loop over either runtime
