"""Benchmark machinery: statistics against numpy, the FLOP counter against a hand count and against
torch's FlopCounterMode on every registered family's ``tiny`` network, inputs generated from each
family's contract, a tiny in-process run of a throwaway family registered here (a reference photo
instead of a caption: no family is special to the benchmarks), and tiny real runs of every registered
family (random-weight ``tiny`` networks, a real tritonserver) whose JSON carries every required key.
Nothing here asserts a speed."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import types
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pytest

from langcolor.benchmarks.stats import Budget, measure, percentile, stability, summarize
from langcolor.client import families

FAMILIES = families.names()  # every registered family, the default first
OTHER = "another_family"  # a family name the targets know nothing about


# --- statistics -----------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0, 1, 25, 50, 95, 99, 100])
def test_percentile_matches_numpy(q):
    rng = np.random.default_rng(1)
    for data in (rng.lognormal(size=37), rng.uniform(size=1000), np.array([3.0]), np.arange(10.0)):
        assert percentile(data, q) == pytest.approx(float(np.percentile(data, q)), rel=1e-12, abs=1e-12)


def test_summarize_percentiles_throughput_and_units():
    lat_s = np.linspace(0.010, 0.020, 101)  # 10..20 ms
    st = summarize(lat_s, batch=4)
    assert st.p50_ms == pytest.approx(15.0)
    assert st.p95_ms == pytest.approx(19.5)
    assert st.p99_ms == pytest.approx(19.9)
    assert st.n == 101
    # one caller: images / sum of latencies
    assert st.throughput == pytest.approx(101 * 4 / lat_s.sum())
    # many callers: images / wall clock of the window
    st8 = summarize(lat_s, batch=1, concurrency=8, wall_s=0.5)
    assert st8.throughput == pytest.approx(101 / 0.5)


def test_stability_accepts_tight_series_and_flags_bimodal():
    rng = np.random.default_rng(0)
    tight = 10.0 + rng.normal(0.0, 0.2, size=200)
    assert stability(tight).stable
    # two interleaved modes (a neighbour's job on and off): median between modes, IQR huge
    bimodal = np.where(rng.random(200) < 0.5, 10.0, 20.0) + rng.normal(0.0, 0.1, size=200)
    verdict = stability(bimodal)
    assert not verdict.stable and "IQR" in verdict.reason
    # a step half-way (the machine got busier): caught by the drift between halves
    step = np.concatenate([np.full(100, 10.0), np.full(100, 13.0)]) + rng.normal(0.0, 0.05, size=200)
    verdict = stability(step)
    assert not verdict.stable and "drifts" in verdict.reason
    assert not stability([1.0, 1.0]).stable  # too few samples for any verdict


def test_measure_warms_up_and_stops_within_budget():
    calls = []
    st = measure(lambda: calls.append(1), batch=2, budget=Budget(warmup=3, min_repeats=10, max_repeats=30, max_seconds=5.0, round_size=5))
    assert 10 <= st.n <= 30
    assert len(calls) == st.n + 3  # the warm-up calls are not in the statistics
    assert st.batch == 2


# --- FLOP counter ---------------------------------------------------------------------------------


def test_flop_counter_matches_hand_count():
    """Every hooked layer type by its formula, and a product outside any layer (attention scores and
    weighted values on activations) through FlopCounterMode."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from langcolor.benchmarks.flops import count_flops

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)  # 8x8 -> 8x8
            self.deconv = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)  # 8x8 -> 16x16
            self.fc = nn.Linear(4 * 16 * 16, 10)
            self.lstm = nn.LSTM(10, 6, batch_first=True)

        def forward(self, x):
            y = self.deconv(torch.relu(self.conv(x)))
            z = self.fc(y.flatten(1))  # [B, 10]
            out, _ = self.lstm(z.unsqueeze(1).repeat(1, 5, 1))  # [B, T=5, 6]
            att = torch.softmax(out @ out.transpose(1, 2), dim=-1)  # [B, 5, 5]: no layer carries it
            return att @ out  # [B, 5, 6]

    B = 2
    conv = 2 * (B * 8 * 8 * 8) * (3 * 3 * 3)  # outputs x (C_in k k) MACs
    deconv = 2 * (B * 8 * 8 * 8) * (4 * 4 * 4)  # inputs x (C_out k k) MACs
    fc = 2 * B * (4 * 16 * 16) * 10
    lstm = 2 * B * 5 * 4 * (10 + 6) * 6  # steps x 4 gates x (in + hidden) x hidden MACs
    attention = 2 * (B * 5 * 5 * 6) * 2  # scores and weighted values: B x 5 x 5 outputs of 6 MACs each
    assert count_flops(Net().eval(), torch.zeros(B, 3, 8, 8)) == conv + deconv + fc + lstm + attention


def test_peak_is_the_best_library_and_consistent_with_its_time():
    pytest.importorskip("torch")
    from langcolor.benchmarks.flops import measure_peak

    n = 256
    peak = measure_peak(n=n, repeats=2)
    assert peak.gflops == pytest.approx(2 * n**3 / peak.seconds / 1e9, rel=1e-9)  # FLOPs of one n x n product / its time
    assert {"torch", "numpy"} <= set(peak.by_library)
    assert max(peak.by_library.values()) == pytest.approx(peak.gflops, abs=0.006)  # by_library is rounded to 0.01
    assert peak.threads >= 1 and peak.n == n


def _random_network(name: str, config: str = "tiny"):
    from langcolor.export.checkpoint import Checkpoint

    return Checkpoint.random(name, config, seed=0).build_model()


def _reference_flops_per_image(model, feeds) -> dict[str, float]:
    """An independent count: torch's dispatcher-level FlopCounterMode alone, stage by stage, with
    oneDNN off so that an LSTM runs as the matrix products the counter sees."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from langcolor.client.spec import STAGES, stage_specs

    from langcolor.export.onnx_export import sample_input

    specs = stage_specs(model.geometry)
    tensors, out = dict(feeds), {}
    batch, rng = next(iter(feeds.values())).shape[0], np.random.default_rng(1)
    for stage in STAGES:  # what only a driven family's driver feeds (a canvas), drawn in range
        for t in specs[stage].inputs:
            if t.name not in tensors and t.name not in {o.name for s in STAGES for o in specs[s].outputs}:
                tensors[t.name] = torch.from_numpy(sample_input(t, batch, rng))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TF32 acceleration on top of oneDNN.*")  # said on every flags() switch
        with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
            for stage in STAGES:
                args = [tensors[n] for n in specs[stage].input_names]
                with FlopCounterMode(display=False) as counter:
                    result = getattr(model, stage)(*args)
                out[stage] = counter.get_total_flops() / args[0].shape[0] / 1e9
                results = result if isinstance(result, tuple) else (result,)
                tensors.update(zip(specs[stage].output_names, results))
    return out


@pytest.mark.parametrize("name", FAMILIES)
def test_flops_match_flop_counter_mode(name):
    """Hooked layers by formula + every other product through FlopCounterMode equal FlopCounterMode
    alone, per stage, to 1e-9 relative: both count every multiply-add of the same products, so any
    difference is a wrong formula, or a product missed or counted twice. Per-image figures do not
    depend on the batch they were counted at."""
    torch = pytest.importorskip("torch")
    from langcolor.benchmarks.flops import network_gflops_per_image
    from langcolor.client.spec import ensemble_spec
    from langcolor.export.onnx_export import sample_input

    model = _random_network(name)
    rng = np.random.default_rng(0)
    spec = ensemble_spec(model.geometry)
    feeds3 = {t.name: torch.from_numpy(sample_input(t, 3, rng)) for t in spec.inputs}
    feeds1 = {k: v[:1] for k, v in feeds3.items()}
    ours = network_gflops_per_image(model, feeds3)
    ref = _reference_flops_per_image(model, feeds3)
    for stage in ("encoder", "fusion", "decoder"):
        assert ref[stage] > 0, stage
        assert ours[stage] == pytest.approx(ref[stage], rel=1e-9), stage
    from langcolor.benchmarks.models import stage_calls_per_request

    calls = stage_calls_per_request(model, {k: v[:1].numpy() for k, v in feeds3.items()})  # 1 each unless driven
    assert ours["e2e"] == pytest.approx(sum(ref[s] * calls[s] for s in ref), rel=1e-9)
    assert network_gflops_per_image(model, feeds1) == pytest.approx(ours, rel=1e-9)


# --- targets and report ---------------------------------------------------------------------------


def _row(path, p50, thr, conc=1, family=None):
    row = {"path": path, "config": "full", "stage": "e2e", "batch": 1, "concurrency": conc, "p50_ms": p50,
           "throughput": thr, "stable": True}
    if family:
        row["family"] = family
    return row


def test_targets_ratios():
    from langcolor.benchmarks.targets import evaluate_targets

    rows = [_row("pytorch", 200.0, 5.0), _row("onnxruntime", 100.0, 10.0), _row("triton-grpc", 120.0, 8.0),
            _row("triton-grpc", 900.0, 12.0, conc=8)]
    t = {x["name"].split(",")[0]: x for x in evaluate_targets(rows)}
    assert t["onnxruntime vs pytorch eager"]["value"] == pytest.approx(2.0) and t["onnxruntime vs pytorch eager"]["met"]
    assert t["triton gRPC vs in-process onnxruntime"]["value"] == pytest.approx(1.2)
    assert not t["triton gRPC vs in-process onnxruntime"]["met"]
    assert t["triton throughput"]["value"] == pytest.approx(1.5) and t["triton throughput"]["met"]
    # rows written before runs recorded their family are the default family's, and bind it
    assert all(x["binding"] and x["family"] == families.DEFAULT_FAMILY for x in t.values())


def test_targets_use_only_the_runs_family_and_bind_only_the_default():
    from langcolor.benchmarks.targets import evaluate_targets, targets_note

    default = families.DEFAULT_FAMILY
    rows = [_row("pytorch", 200.0, 5.0, family=default), _row("onnxruntime", 100.0, 10.0, family=default),
            _row("pytorch", 90.0, 11.0, family=OTHER), _row("onnxruntime", 100.0, 10.0, family=OTHER)]
    mine = {x["name"].split(",")[0]: x for x in evaluate_targets(rows, family=default)}
    other = {x["name"].split(",")[0]: x for x in evaluate_targets(rows, family=OTHER)}
    assert mine["onnxruntime vs pytorch eager"]["value"] == pytest.approx(2.0)
    assert all(x["binding"] for x in mine.values())
    assert other["onnxruntime vs pytorch eager"]["value"] == pytest.approx(0.9)  # not mixed with the default's rows
    assert not other["onnxruntime vs pytorch eager"]["met"]
    assert all(not x["binding"] and x["family"] == OTHER for x in other.values())
    assert other["triton throughput"]["value"] is None  # no Triton rows for it
    assert default in targets_note(OTHER) and "Reference only" in targets_note(OTHER)
    assert "binding" in targets_note(default) and "Reference only" not in targets_note(default)
    for note in (targets_note(OTHER), targets_note(default)):  # things are named by what they are, not by a ticket
        assert not re.search(r"\bissues?\b|#\d", note, re.IGNORECASE), note


def test_bench_model_option_and_config_checked_before_measuring(tmp_path):
    from langcolor.benchmarks import bench
    from langcolor.client.errors import LangcolorError

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert parser.parse_args([]).model == families.DEFAULT_FAMILY
    for name in FAMILIES:
        assert parser.parse_args(["--model", name]).model == name
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "vgg"])
    args = parser.parse_args(["--model", FAMILIES[-1], "--configs", "small,huge", "--output", str(tmp_path / "x.json")])
    with pytest.raises(LangcolorError, match="huge"):
        bench.run(args)
    assert not (tmp_path / "x.json").exists()


def _check_inputs_follow_the_contract(bm, batch: int) -> dict:
    """``bm.inputs`` is the ensemble's inputs, valid for it, with the conditioner's tensors when it
    accepted the representative user input; -> the feeds."""
    from langcolor.client.runtime import check_inputs
    from langcolor.client.spec import ensemble_spec

    feeds = bm.inputs(batch)
    assert list(feeds) == ensemble_spec(bm.geometry).input_names
    check_inputs(feeds, bm.geometry)  # shapes, dtypes, finite values within every declared range
    image = feeds[bm.geometry.image.name]
    lo, hi = bm.geometry.image.value_range or (0.0, 1.0)
    assert image.std() > 0.01 * (hi - lo) and np.abs(np.diff(image, axis=-1)).mean() < 0.5 * image.std()  # smooth, not flat, not noise
    assert np.array_equal(bm.inputs(batch)[bm.geometry.image.name], image)  # the same for every path
    tensors = bm.conditioner.condition(bm.user_values).tensors if bm.user_values is not None else {}
    if all(t.name in tensors for t in bm.geometry.condition_specs):  # else drawn in range (a codec makes the rest)
        for t in bm.geometry.condition_specs:
            assert all(np.array_equal(row, tensors[t.name]) for row in feeds[t.name]), t.name
    return feeds


@pytest.mark.parametrize("name", FAMILIES)
def test_small_uses_shipped_weights_and_matching_repository(tmp_path, name):
    """``small``: the shipped checkpoint; the committed repository when it holds that checkpoint's
    hash as a python-target export, else a fresh export of them. Its inputs follow the contract and
    the representative user input is one the family's conditioner accepts."""
    pytest.importorskip("torch")
    from langcolor.benchmarks.models import load_model
    from langcolor.client import names
    from langcolor.client.paths import default_model_repository
    from langcolor.client.spec import ModelManifest
    from langcolor.export.checkpoint import default_weights_path, load_checkpoint
    from langcolor.export.triton_config import parse

    path = default_weights_path(name, "small")
    if not path.is_file():
        pytest.skip(f"no shipped {name} weights")
    ckpt = load_checkpoint(path)
    bm = load_model("small", tmp_path, family=name)
    assert bm.family == name and bm.geometry.family == name and bm.geometry == ckpt.geometry
    assert bm.weights == f"trained {ckpt.sha256[:12]}"
    assert type(bm.model) is type(ckpt.build_model())
    manifest = ModelManifest.load(bm.repository / name / "1" / "langcolor.json")
    assert manifest.weights_sha256 == ckpt.sha256  # whichever repository was picked holds these weights
    assert manifest.assets == {k: hashlib.sha256(v.encode()).hexdigest() for k, v in ckpt.assets.items()}
    for stage in ("encoder", "fusion", "decoder"):  # ... on the stages the bundled tritonserver runs
        assert parse((bm.repository / f"{name}_{stage}" / "config.pbtxt").read_text()).backend == names.BACKEND
    shipped = default_model_repository()
    if bm.repository != shipped:
        assert bm.repository == tmp_path / f"repo_{name}_small"
    assert bm.user_values is not None  # the shipped weights read the benchmark's representative input
    _check_inputs_follow_the_contract(bm, 2)


def test_colorize_endpoint_families_are_read_from_its_config(tmp_path):
    from langcolor.benchmarks.server_paths import colorize_families

    assert colorize_families(tmp_path) == ()
    (tmp_path / "colorize").mkdir()
    config = tmp_path / "colorize" / "config.pbtxt"
    param = 'parameters {{\n  key: "{}"\n  value: {{ string_value: "{}" }}\n}}\n'
    config.write_text('name: "colorize"\n')
    assert colorize_families(tmp_path) == (families.DEFAULT_FAMILY,)  # the first endpoints served the default only
    config.write_text('name: "colorize"\n' + param.format("ensemble", "beta"))
    assert colorize_families(tmp_path) == ("beta",)  # an endpoint without MODEL: its ensemble only
    config.write_text('name: "colorize"\n' + param.format("ensemble", "alpha") + param.format("families", "alpha,beta"))
    assert colorize_families(tmp_path) == ("alpha", "beta")  # default first
    config.write_text('name: "colorize"\n' + param.format("ensemble", "beta") + param.format("families", "alpha,beta"))
    assert colorize_families(tmp_path) == ("beta", "alpha")


def test_perf_analyzer_input_data_carries_every_input(tmp_path):
    from langcolor.benchmarks.perf_analyzer import write_input_data

    feeds = {"L": np.array([[[[1.23456, 2.0], [3.0, 4.0]]]], np.float32),  # [1,1,2,2]
             "IDS": np.array([[5, 7, 0]], np.int64)}  # [1,3]
    data = json.loads(write_input_data(tmp_path / "in.json", feeds).read_text())["data"]
    assert data == [{"L": {"content": [1.2346, 2.0, 3.0, 4.0], "shape": [1, 2, 2]},
                     "IDS": {"content": [5, 7, 0], "shape": [3]}}]
    with pytest.raises(AssertionError):
        write_input_data(tmp_path / "two.json", {"L": np.zeros((2, 1, 2, 2), np.float32)})


def test_perf_analyzer_window_rule():
    from langcolor.benchmarks.perf_analyzer import window_stability

    assert window_stability([(100.0, 5000.0), (104.0, 5100.0), (98.0, 5050.0)], 10)[0]
    stable, why = window_stability([(100.0, 5000.0), (140.0, 5100.0), (98.0, 5050.0)], 10)
    assert not stable and "throughput" in why
    assert not window_stability([(100.0, 5000.0)], 10)[0]


# --- a family the benchmarks have never heard of ----------------------------------------------------

REFERENCE_FAMILY = "bench_reference_test"  # registered by the fixture below, for one test
REF_TENSOR = "REF_L"
WIDTH = 8


@dataclass(frozen=True)
class _RefConfig:
    name: str = "tiny"
    image_size: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _RefTraining:
    pass


def _reference_geometry(cfg: _RefConfig, assets):
    from langcolor.client.spec import BATCH, Condition, ModelGeometry, TensorSpec, ab_output, image_l
    from langcolor.client import names

    s = cfg.image_size
    ref = TensorSpec(REF_TENSOR, "float32", (BATCH, 1, s, s), (0.0, 100.0))
    feats = TensorSpec(names.FEATURES, "float32", (BATCH, WIDTH, s // 2, s // 2))
    modulated = TensorSpec(names.MODULATED, "float32", (BATCH, WIDTH, s // 2, s // 2))
    return ModelGeometry(REFERENCE_FAMILY, s, image_l(s), (Condition(ref, "fusion"),), (feats,), (modulated,),
                         (ab_output(s),))


class _RefConditioner:
    """``reference`` (an image file's bytes) -> its L at the network's size."""

    def __init__(self, geometry, assets):
        self.geometry = geometry

    def condition(self, values):
        from langcolor.client import photo
        from langcolor.client.errors import LangcolorError
        from langcolor.client.families import Conditioned

        if values.get("reference") is None:
            raise LangcolorError("needs a reference photo")
        return Conditioned({REF_TENSOR: photo.prepare(values["reference"], self.geometry.image_size).l_small})

    def describe(self) -> dict:
        return {}


def _reference_network_module():
    import torch
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, WIDTH, 3, stride=2, padding=1)

        def forward(self, L):
            return torch.relu(self.conv(L / 50.0 - 1.0))  # [B,W,S/2,S/2]

    class Fusion(nn.Module):
        """Every image position attends to every reference position: a product no layer carries."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, WIDTH, 3, stride=2, padding=1)

        def forward(self, features, ref_l):
            ref = self.conv(ref_l / 50.0 - 1.0).flatten(2).transpose(1, 2)  # [B,P,W]
            q = features.flatten(2).transpose(1, 2)  # [B,P,W]
            att = torch.softmax(q @ ref.transpose(1, 2), dim=-1)  # [B,P,P]
            return features + (att @ ref).transpose(1, 2).reshape(features.shape)  # [B,W,S/2,S/2]

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(WIDTH, 2, 4, stride=2, padding=1)

        def forward(self, modulated):
            return torch.tanh(self.up(modulated)) * 110.0  # [B,2,S,S]

    class Net(nn.Module):
        def __init__(self, cfg, geometry):
            super().__init__()
            self.cfg, self.geometry = cfg, geometry
            self.encoder, self.fusion, self.decoder = Encoder(), Fusion(), Decoder()

    module = types.ModuleType(f"{REFERENCE_FAMILY}.network")
    module.build = lambda cfg, geometry: Net(cfg, geometry).eval()
    return module


@pytest.fixture
def reference_family():
    """A throwaway family registered for one test: the photo and a reference photo in, no caption."""
    pytest.importorskip("torch")
    package = types.ModuleType(REFERENCE_FAMILY)
    package.__path__ = []
    training = types.ModuleType(f"{REFERENCE_FAMILY}.training")
    training.make_assets = lambda cfg, options: {}
    modules = {REFERENCE_FAMILY: package, f"{REFERENCE_FAMILY}.network": _reference_network_module(),
               f"{REFERENCE_FAMILY}.training": training}
    sys.modules.update(modules)
    record = families.Family(
        name=REFERENCE_FAMILY, title="a test family", summary="colours a photo like a reference photo",
        inputs=(families.InputField("reference", families.IMAGE, "a colour photo to take the colours from"),),
        configs={"tiny": _RefConfig()}, config_from_dict=lambda raw: _RefConfig(**raw),
        geometry=_reference_geometry, conditioner=_RefConditioner, training_options=_RefTraining,
        package=REFERENCE_FAMILY,
    )
    families.register(record)
    try:
        yield record
    finally:
        families.unregister(REFERENCE_FAMILY)
        for name in modules:
            sys.modules.pop(name, None)


def test_in_process_bench_of_a_family_with_a_reference_photo(tmp_path, reference_family):
    """Registered here, unknown to every benchmark module: a run measures it by its declared
    contract. Its condition is a reference photo through its conditioner, there are no tokens
    anywhere, every stage is timed on its own inputs, and its attention (a product outside any layer)
    is in the FLOP count."""
    torch = pytest.importorskip("torch")
    from langcolor.benchmarks.models import export_random
    from langcolor.benchmarks.runner import BenchOptions, run_bench

    out = tmp_path / "run.json"
    options = BenchOptions.make(True, family=REFERENCE_FAMILY, configs=("tiny",),
                                paths=("pytorch", "onnxruntime", "prepost"), batches=(1, 2), tune=False,
                                photo_sizes=("0.3MP",), workdir=tmp_path / "work")
    doc = run_bench(options, out)
    assert json.loads(out.read_text())["results"] == doc["results"]
    info = doc["models"]["tiny"]
    assert info["family"] == REFERENCE_FAMILY and info["conditions"] == {REF_TENSOR: [1, 32, 32]}
    assert list(info["inputs"]) == ["reference"] and info["inputs"]["reference"].startswith("<image")
    assert "max_tokens" not in info and "caption" not in info
    assert "Reference only" in doc["targets_note"] and all(not t["binding"] for t in doc["targets"])

    # the inputs: the photo-like L and the reference photo's L, from the family's own conditioner
    bm = export_random("tiny", tmp_path / "work" / f"repo_{REFERENCE_FAMILY}_tiny", family=REFERENCE_FAMILY)
    feeds = _check_inputs_follow_the_contract(bm, 2)
    assert set(feeds) == {"L", REF_TENSOR} and bm.user_values is not None

    # FLOPs per image: two 3x3 convolutions to W x 16 x 16, attention over 256 x 256 positions, the
    # 4x4 transposed convolution to 2 x 32 x 32; and the same as FlopCounterMode's own count
    P = 16 * 16
    conv = 2 * (WIDTH * P) * (1 * 3 * 3)
    attention = 2 * (P * P * WIDTH) * 2  # scores and weighted values
    deconv = 2 * (WIDTH * P) * (2 * 4 * 4)
    flops = doc["flops"]["tiny"]
    assert flops["encoder"] * 1e9 == pytest.approx(conv, rel=1e-5)
    assert flops["fusion"] * 1e9 == pytest.approx(conv + attention, rel=1e-5)
    assert flops["decoder"] * 1e9 == pytest.approx(deconv, rel=1e-5)
    ref = _reference_flops_per_image(bm.model, {k: torch.from_numpy(v) for k, v in bm.inputs(1).items()})
    assert flops["e2e"] == pytest.approx(sum(ref.values()), rel=1e-5)

    rows = doc["results"]
    assert all(r["family"] == REFERENCE_FAMILY for r in rows)
    seen = {(r["path"], r["stage"], r["batch"]) for r in rows}
    for path in ("pytorch", "onnxruntime"):
        assert {(path, s, 1) for s in ("encoder", "fusion", "decoder", "e2e")} | {(path, "e2e", 2)} <= seen, path
    steps = {r["stage"] for r in rows if r["path"] == "client-prepost"}
    assert steps == {"decode", "prepare", "condition", "reconstruct", "encode_png", "encode_jpeg"}


# --- tiny real runs ---------------------------------------------------------------------------------


def _check_rows(rows: list[dict]) -> set[tuple]:
    """The rows of a tiny bench run over pytorch, onnxruntime and triton-grpc at batches (1, 2) and
    concurrency (1, 2): every row complete, percentiles ordered, throughput positive; each path has
    every stage at batch 1 and e2e at batch 2; gRPC ran at concurrency 2. -> (path, stage, batch,
    concurrency) of every row."""
    from langcolor.benchmarks.report import REQUIRED_ROW_KEYS

    for r in rows:
        missing = [k for k in REQUIRED_ROW_KEYS if k not in r]
        assert not missing, (missing, r)
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["throughput"] > 0
    seen = {(r["path"], r["stage"], r["batch"], r["concurrency"]) for r in rows}
    for path in ("pytorch", "onnxruntime", "triton-grpc"):
        assert {(path, s, 1, 1) for s in ("encoder", "fusion", "decoder", "e2e")} <= seen, path
        assert (path, "e2e", 2, 1) in seen
    assert ("triton-grpc", "e2e", 1, 2) in seen
    return seen


@pytest.mark.server
@pytest.mark.parametrize("name", FAMILIES)
def test_tiny_bench_run(tmp_path, name):
    """``--model <family>`` end to end on the family's random-weight tiny network: its own repository
    holds only that family (so every Triton row went through ``<family>`` and ``<family>_<stage>``,
    and its colorize endpoint colours that family), FLOPs equal torch's count, every row says its
    family, the JSON carries every required key, and the targets bind only the default family."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("pytriton")
    from langcolor.benchmarks import bench
    from langcolor.benchmarks.models import export_random
    from langcolor.benchmarks.report import readme_tables
    from langcolor.client.spec import ModelManifest

    out = tmp_path / "run.json"
    work = tmp_path / "work"
    args = argparse.Namespace(
        model=name, quick=True, output=out, configs=("tiny",), paths=("pytorch", "onnxruntime", "triton-grpc", "colorize"),
        batches=(1, 2), concurrency=(1, 2), tune=False, no_plots=False, workdir=work,
    )
    assert bench.run(args) == 0
    doc = json.loads(out.read_text())
    default = name == families.DEFAULT_FAMILY
    assert doc["machine"]["cpu_model"] and doc["versions"]["onnxruntime"] and doc["git_revision"]
    assert doc["peak"]["gflops"] > 0 and doc["peaks"]["fp32"] == round(doc["peak"]["gflops"], 2)
    assert doc["peaks"].get("bf16", 1) > 0 and isinstance(doc["machine"]["matrix_isa"], list)
    assert doc["family"] == name and ("Reference only" in doc["targets_note"]) != default
    repo = work / f"repo_{name}_tiny"
    geometry = ModelManifest.load(repo / name / "1" / "langcolor.json").geometry
    model_info = doc["models"]["tiny"]
    assert model_info["family"] == name and model_info["weights"] == "random, seed 0"
    assert model_info["repository"] == str(repo) and model_info["image_size"] == geometry.image_size
    assert model_info["feature_shape"] == list(geometry.feature_shape)
    assert model_info["conditions"] == {t.name: list(t.dims) for t in geometry.request_inputs}
    served = sorted(p.name for p in repo.iterdir())
    # <family>_impl: the Python model behind the family's model (its driver's loop, or the fused chain)
    assert served == sorted(["colorize", "colorize_impl", name, f"{name}_encoder", f"{name}_fusion",
                             f"{name}_decoder", f"{name}_impl"]), served

    # the JSON's FLOPs are the independent count on the very network measured (same seed, kept assets)
    bm = export_random("tiny", repo, family=name)
    ref = _reference_flops_per_image(bm.model, {k: torch.from_numpy(v) for k, v in bm.inputs(1).items()})
    for stage in ("encoder", "fusion", "decoder"):
        assert doc["flops"]["tiny"][stage] == pytest.approx(ref[stage], rel=1e-5)  # JSON keeps 6 significant digits

    rows = doc["results"]
    assert all(r["family"] == name and r["config"] == "tiny" for r in rows)
    # every row says what runs the network, and whether it is what a user gets without flags
    runtimes = {r["path"]: r["runtime"] for r in rows}
    assert runtimes["pytorch"] == "pytorch" and runtimes["onnxruntime"] == "onnxruntime"
    assert runtimes["triton-grpc"] == "triton/onnxruntime"
    assert {r["default"] for r in rows if r["path"] == "pytorch"} == {False}
    assert {r["default"] for r in rows if r["path"] in ("onnxruntime", "triton-grpc")} == {True}  # tune=False: no variants
    seen = _check_rows(rows)
    assert ("colorize", "e2e", 1, 1) in seen and ("client+ensemble", "e2e", 1, 1) in seen  # this repo's colorize serves it
    e2e = [r for r in rows if r["path"] == "onnxruntime" and r["stage"] == "e2e" and r["batch"] == 1][0]
    assert e2e["gflops_per_image"] == pytest.approx(doc["flops"]["tiny"]["e2e"], rel=1e-5)
    assert len(doc["targets"]) == 3  # computed, not measured: the targets are for `full`
    assert all(t["family"] == name and t["binding"] == default and t["value"] is None for t in doc["targets"])
    for suffix in ("-latency-vs-batch.png", "-throughput-vs-concurrency.png", "-stages.png"):
        png = tmp_path / f"run{suffix}"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    tables = readme_tables(doc)
    assert f"Model family `{name}`" in tables and "| triton-grpc | tiny |" in tables
    assert ("reference only" in tables) != default
