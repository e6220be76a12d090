"""Benchmark machinery: statistics against numpy, the FLOP counter against a hand count (and, for
L-CoIns, against torch's FlopCounterMode), and tiny real runs of both families (random-weight
``tiny`` networks, a real tritonserver) whose JSON carries every required key. Nothing here asserts
a speed."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from langcolor.benchmarks.stats import Budget, measure, percentile, stability, summarize


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
            return out

    B = 2
    conv = 2 * (B * 8 * 8 * 8) * (3 * 3 * 3)  # outputs x (C_in k k) MACs
    deconv = 2 * (B * 8 * 8 * 8) * (4 * 4 * 4)  # inputs x (C_out k k) MACs
    fc = 2 * B * (4 * 16 * 16) * 10
    lstm = 2 * B * 5 * 4 * (10 + 6) * 6  # steps x 4 gates x (in + hidden) x hidden MACs
    assert count_flops(Net().eval(), torch.zeros(B, 3, 8, 8)) == conv + deconv + fc + lstm


def test_peak_is_positive_and_plausible():
    pytest.importorskip("torch")
    from langcolor.benchmarks.flops import measure_peak

    peak = measure_peak(n=256, repeats=2)
    assert 0.1 < peak.gflops < 1e6  # GFLOP/s of some real machine


def _flop_counter_mode_per_image(model, L, tokens) -> dict[str, float]:
    """An independent count: torch's dispatcher-level FlopCounterMode (mm, bmm, addmm, convolution)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    with torch.no_grad():
        feats = model.encoder(L)
        modulated = model.fusion(feats, tokens)
        for stage, call in (("encoder", lambda: model.encoder(L)), ("fusion", lambda: model.fusion(feats, tokens)),
                            ("decoder", lambda: model.decoder(modulated))):
            with FlopCounterMode(display=False) as counter:
                call()
            out[stage] = counter.get_total_flops() / L.shape[0] / 1e9
    return out


@pytest.mark.parametrize("config", ["tiny", "small"])
def test_lcoins_flops_match_flop_counter_mode(config):
    """Hooks (QKV/proj/MLP Linear, patch-embedding Conv2d, decoder convs) + the attention products counted
    from P, T, G equal torch's own count per stage. Tolerance 1e-9 relative: both count every multiply-add
    of the same matmuls and convolutions, so any difference is a missed or double-counted product."""
    torch = pytest.importorskip("torch")
    from langcolor.benchmarks.flops import lcoins_attention_flops, network_gflops_per_image
    from langcolor.export.config import LCOINS_CONFIGS
    from langcolor.export.lcoins import LCoIns

    cfg = LCOINS_CONFIGS[config]
    torch.manual_seed(0)
    model = LCoIns(cfg, 97).eval()
    B = 3  # per-image figures must not depend on the batch the count was made at
    L = torch.rand(B, 1, cfg.image_size, cfg.image_size) * 100.0  # [B,1,S,S]
    tokens = torch.randint(1, 97, (B, cfg.max_tokens))  # [B,T]
    tokens[:, 5:] = 0  # padding: still computed by the graph, still counted
    ours = network_gflops_per_image(model, L, tokens)
    ref = _flop_counter_mode_per_image(model, L, tokens)
    for stage in ("encoder", "fusion", "decoder"):
        assert ours[stage] == pytest.approx(ref[stage], rel=1e-9), stage
    assert ours["e2e"] == pytest.approx(sum(ref.values()), rel=1e-9)
    # the attention term is a real part of the check: leaving it out would miss by far more than the tolerance
    att = lcoins_attention_flops(cfg, 1)
    assert att["encoder"] / 1e9 > 1e-3 * ref["encoder"] and att["fusion"] / 1e9 > 1e-3 * ref["fusion"]


def test_lcode_flops_per_image_do_not_depend_on_batch():
    torch = pytest.importorskip("torch")
    from langcolor.benchmarks.flops import network_gflops_per_image
    from langcolor.export.config import CONFIGS
    from langcolor.export.lcode import LCoDe

    cfg = CONFIGS["tiny"]
    model = LCoDe(cfg, 30).eval()
    one = network_gflops_per_image(model, torch.rand(1, 1, cfg.image_size, cfg.image_size) * 100,
                                   torch.randint(1, 30, (1, cfg.max_tokens)))
    four = network_gflops_per_image(model, torch.rand(4, 1, cfg.image_size, cfg.image_size) * 100,
                                    torch.randint(1, 30, (4, cfg.max_tokens)))
    assert one["e2e"] > 0 and one == pytest.approx(four, rel=1e-9)


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
    assert all(x["binding"] and x["family"] == "lcode" for x in t.values())  # rows without a family are lcode's


def test_targets_use_only_the_runs_family_and_lcoins_is_reference_only():
    from langcolor.benchmarks.targets import evaluate_targets, targets_note

    rows = [_row("pytorch", 200.0, 5.0, family="lcode"), _row("onnxruntime", 100.0, 10.0, family="lcode"),
            _row("pytorch", 90.0, 11.0, family="lcoins"), _row("onnxruntime", 100.0, 10.0, family="lcoins")]
    lcode = {x["name"].split(",")[0]: x for x in evaluate_targets(rows, family="lcode")}
    lcoins = {x["name"].split(",")[0]: x for x in evaluate_targets(rows, family="lcoins")}
    assert lcode["onnxruntime vs pytorch eager"]["value"] == pytest.approx(2.0)
    assert lcoins["onnxruntime vs pytorch eager"]["value"] == pytest.approx(0.9)  # not mixed with lcode's rows
    assert not lcoins["onnxruntime vs pytorch eager"]["met"]
    assert all(not x["binding"] and x["family"] == "lcoins" for x in lcoins.values())
    assert lcoins["triton throughput"]["value"] is None  # no lcoins Triton rows
    assert "lcode" in targets_note("lcoins") and "Reference only" in targets_note("lcoins")


def test_bench_model_option_and_config_checked_before_measuring(tmp_path):
    from langcolor.benchmarks import bench
    from langcolor.client.errors import LangcolorError

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert parser.parse_args([]).model == "lcode"
    assert parser.parse_args(["--model", "lcoins"]).model == "lcoins"
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "vgg"])
    args = parser.parse_args(["--model", "lcoins", "--configs", "small,huge", "--output", str(tmp_path / "x.json")])
    with pytest.raises(LangcolorError, match="huge"):
        bench.run(args)
    assert not (tmp_path / "x.json").exists()


def test_lcoins_small_uses_shipped_weights_and_matching_repository(tmp_path):
    """``small`` for lcoins: the shipped checkpoint; the committed repository when its manifest holds
    that checkpoint's hash (whatever the weights are this session), else a fresh export of them."""
    pytest.importorskip("torch")
    from langcolor.benchmarks.models import load_model
    from langcolor.client.paths import default_model_repository
    from langcolor.client.spec import ModelManifest
    from langcolor.export.checkpoint import default_weights_path, load_checkpoint

    path = default_weights_path("small", "lcoins")
    if not path.is_file():
        pytest.skip("no shipped lcoins weights")
    ckpt = load_checkpoint(path)
    bm = load_model("small", tmp_path, family="lcoins")
    assert bm.family == "lcoins" and bm.geometry.family == "lcoins"
    assert bm.weights == f"trained {ckpt.sha256[:12]}" and type(bm.model).__name__ == "LCoIns"
    assert bm.tokenizer.sha256 == ckpt.tokenizer.sha256
    manifest = ModelManifest.load(bm.repository / "lcoins" / "1" / "langcolor.json")
    assert manifest.weights_sha256 == ckpt.sha256  # whichever repository was picked holds these weights
    shipped = default_model_repository()
    shipped_manifest = shipped / "lcoins" / "1" / "langcolor.json"
    if shipped_manifest.is_file() and ModelManifest.load(shipped_manifest).weights_sha256 == ckpt.sha256:
        assert bm.repository == shipped
    L, tokens = bm.inputs(2)
    assert L.shape == (2, 1, 64, 64) and tokens.shape == (2, bm.geometry.max_tokens)
    assert (tokens > 0).any(axis=1).all()  # the caption is not all padding


# --- a tiny real run --------------------------------------------------------------------------------


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
def test_tiny_bench_run_writes_complete_json(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("pytriton")
    from langcolor.benchmarks import bench
    from langcolor.benchmarks.report import readme_tables

    out = tmp_path / "run.json"
    args = argparse.Namespace(
        quick=True, output=out, configs=("tiny",), paths=("pytorch", "onnxruntime", "triton-grpc"),
        batches=(1, 2), concurrency=(1, 2), tune=False, no_plots=False, workdir=tmp_path / "work",
    )
    assert bench.run(args) == 0
    doc = json.loads(out.read_text())
    assert doc["machine"]["cpu_model"] and doc["versions"]["onnxruntime"] and doc["git_revision"]
    assert doc["peak"]["gflops"] > 0 and doc["flops"]["tiny"]["e2e"] > 0
    _check_rows(doc["results"])
    assert len(doc["targets"]) == 3  # computed (not measured: the targets are for `full`)
    for suffix in ("-latency-vs-batch.png", "-throughput-vs-concurrency.png", "-stages.png"):
        png = tmp_path / f"run{suffix}"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    assert "| triton-grpc | tiny |" in readme_tables(doc)


@pytest.mark.server
def test_tiny_lcoins_bench_run(tmp_path):
    """``--model lcoins`` end to end on the random-weight tiny L-CoIns: its own repository holds only
    the lcoins ensemble (so every Triton row went through ``lcoins`` and ``lcoins_<stage>``), FLOPs equal
    torch's count, every row says its family, and the targets say they are lcode's."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("pytriton")
    from langcolor.benchmarks import bench
    from langcolor.benchmarks.models import export_random
    from langcolor.benchmarks.report import readme_tables
    from langcolor.export.config import LCOINS_CONFIGS

    out = tmp_path / "run.json"
    work = tmp_path / "work"
    args = argparse.Namespace(
        model="lcoins", quick=True, output=out, configs=("tiny",), paths=("pytorch", "onnxruntime", "triton-grpc", "colorize"),
        batches=(1, 2), concurrency=(1, 2), tune=False, no_plots=True, workdir=work,
    )
    assert bench.run(args) == 0
    doc = json.loads(out.read_text())
    cfg = LCOINS_CONFIGS["tiny"]
    assert doc["family"] == "lcoins" and "Reference only" in doc["targets_note"]
    model_info = doc["models"]["tiny"]
    assert model_info["family"] == "lcoins" and model_info["weights"] == "random, seed 0"
    assert model_info["feature_shape"] == [cfg.patches, cfg.dim] and model_info["max_tokens"] == cfg.max_tokens
    repo = work / "repo_lcoins_tiny"
    assert model_info["repository"] == str(repo)
    served = sorted(p.name for p in repo.iterdir())
    assert served == ["colorize", "lcoins", "lcoins_decoder", "lcoins_encoder", "lcoins_fusion"], served

    # the JSON's FLOPs are the independent count on the very network measured (same seed, kept tokenizer)
    bm = export_random("tiny", repo, family="lcoins")
    L, tokens = bm.inputs(1)
    ref = _flop_counter_mode_per_image(bm.model, torch.from_numpy(L), torch.from_numpy(tokens))
    for stage in ("encoder", "fusion", "decoder"):
        assert doc["flops"]["tiny"][stage] == pytest.approx(ref[stage], rel=1e-5)  # JSON keeps 6 significant digits

    rows = doc["results"]
    assert all(r["family"] == "lcoins" and r["config"] == "tiny" for r in rows)
    seen = _check_rows(rows)
    assert ("colorize", "e2e", 1, 1) in seen and ("client+ensemble", "e2e", 1, 1) in seen  # this repo's colorize calls lcoins
    e2e = [r for r in rows if r["path"] == "onnxruntime" and r["stage"] == "e2e" and r["batch"] == 1][0]
    assert e2e["gflops_per_image"] == pytest.approx(doc["flops"]["tiny"]["e2e"], rel=1e-5)
    assert len(doc["targets"]) == 3 and all(t["family"] == "lcoins" and not t["binding"] for t in doc["targets"])
    assert "Model family `lcoins`" in readme_tables(doc) and "reference only" in readme_tables(doc)


def test_colorize_endpoint_families_are_read_from_its_config(tmp_path):
    from langcolor.benchmarks.server_paths import colorize_families

    assert colorize_families(tmp_path) == ()
    (tmp_path / "colorize").mkdir()
    config = tmp_path / "colorize" / "config.pbtxt"
    param = 'parameters {{\n  key: "{}"\n  value: {{ string_value: "{}" }}\n}}\n'
    config.write_text('name: "colorize"\n' + param.format("ensemble", "lcoins"))
    assert colorize_families(tmp_path) == ("lcoins",)  # an endpoint without MODEL: its ensemble only
    config.write_text('name: "colorize"\n' + param.format("ensemble", "lcode") + param.format("families", "lcode,lcoins"))
    assert colorize_families(tmp_path) == ("lcode", "lcoins")  # default first


def test_perf_analyzer_window_rule():
    from langcolor.benchmarks.perf_analyzer import window_stability

    assert window_stability([(100.0, 5000.0), (104.0, 5100.0), (98.0, 5050.0)], 10)[0]
    stable, why = window_stability([(100.0, 5000.0), (140.0, 5100.0), (98.0, 5050.0)], 10)
    assert not stable and "throughput" in why
    assert not window_stability([(100.0, 5000.0)], 10)[0]
