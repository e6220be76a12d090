"""Benchmark machinery: statistics against numpy, the FLOP counter against a hand count, and a tiny
real run (random-weight ``tiny`` network, a real tritonserver) whose JSON carries every required key.
Nothing here asserts a speed."""

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


# --- targets and report ---------------------------------------------------------------------------


def _row(path, p50, thr, conc=1):
    return {"path": path, "config": "full", "stage": "e2e", "batch": 1, "concurrency": conc, "p50_ms": p50,
            "throughput": thr, "stable": True}


def test_targets_ratios():
    from langcolor.benchmarks.targets import evaluate_targets

    rows = [_row("pytorch", 200.0, 5.0), _row("onnxruntime", 100.0, 10.0), _row("triton-grpc", 120.0, 8.0),
            _row("triton-grpc", 900.0, 12.0, conc=8)]
    t = {x["name"].split(",")[0]: x for x in evaluate_targets(rows)}
    assert t["onnxruntime vs pytorch eager"]["value"] == pytest.approx(2.0) and t["onnxruntime vs pytorch eager"]["met"]
    assert t["triton gRPC vs in-process onnxruntime"]["value"] == pytest.approx(1.2)
    assert not t["triton gRPC vs in-process onnxruntime"]["met"]
    assert t["triton throughput"]["value"] == pytest.approx(1.5) and t["triton throughput"]["met"]


# --- a tiny real run --------------------------------------------------------------------------------


@pytest.mark.server
def test_tiny_bench_run_writes_complete_json(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("pytriton")
    from langcolor.benchmarks import bench
    from langcolor.benchmarks.report import REQUIRED_ROW_KEYS, readme_tables

    out = tmp_path / "run.json"
    args = argparse.Namespace(
        quick=True, output=out, configs=("tiny",), paths=("pytorch", "onnxruntime", "triton-grpc"),
        batches=(1, 2), concurrency=(1, 2), tune=False, no_plots=False, workdir=tmp_path / "work",
    )
    assert bench.run(args) == 0
    doc = json.loads(out.read_text())
    assert doc["machine"]["cpu_model"] and doc["versions"]["onnxruntime"] and doc["git_revision"]
    assert doc["peak"]["gflops"] > 0 and doc["flops"]["tiny"]["e2e"] > 0
    rows = doc["results"]
    for r in rows:
        missing = [k for k in REQUIRED_ROW_KEYS if k not in r]
        assert not missing, (missing, r)
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["throughput"] > 0
    seen = {(r["path"], r["stage"], r["batch"], r["concurrency"]) for r in rows}
    for path in ("pytorch", "onnxruntime", "triton-grpc"):
        assert {(path, s, 1, 1) for s in ("encoder", "fusion", "decoder", "e2e")} <= seen, path
        assert (path, "e2e", 2, 1) in seen
    assert ("triton-grpc", "e2e", 1, 2) in seen
    assert len(doc["targets"]) == 3  # computed (not measured: the targets are for `full`)
    for suffix in ("-latency-vs-batch.png", "-throughput-vs-concurrency.png", "-stages.png"):
        png = tmp_path / f"run{suffix}"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    assert "| triton-grpc | tiny |" in readme_tables(doc)


def test_perf_analyzer_window_rule():
    from langcolor.benchmarks.perf_analyzer import window_stability

    assert window_stability([(100.0, 5000.0), (104.0, 5100.0), (98.0, 5050.0)], 10)[0]
    stable, why = window_stability([(100.0, 5000.0), (140.0, 5100.0), (98.0, 5050.0)], 10)
    assert not stable and "throughput" in why
    assert not window_stability([(100.0, 5000.0)], 10)[0]
