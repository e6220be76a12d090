"""NVIDIA ``perf_analyzer`` against the same ensemble, as an independent reference for our client.

The binary ships inside the ``tritonclient==2.41.0`` wheel (``tritonclient-2.41.0.data/data/bin``),
which cannot be installed beside the project's tritonclient 2.73: the wheel is downloaded once with
pip, the binary extracted with ``zipfile`` into ``~/.cache/langcolor/perf_analyzer-2.41.0/``, and
the two shared libraries it wants (``libb64.so.0d``, ``libcudart.so.12``; no GPU needed) are
symlinked there from the ``nvidia-pytriton`` wheel's bundled libraries.

It is fed the very inputs our client sends (``--input-data`` JSON, every ensemble input by name),
since random values would fall outside the declared ranges (token ids outside the vocabulary, for a
caption family) and be rejected by the stage's range check.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from langcolor.client.errors import LangcolorError

log = logging.getLogger(__name__)

VERSION = "2.41.0"
WHEEL_BIN = f"tritonclient-{VERSION}.data/data/bin/perf_analyzer"
LIBS = {"libb64.so.0d": "libb64-", "libcudart.so.12": "libcudart-"}  # wanted name -> prefix in nvidia_pytriton.libs


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "langcolor" / f"perf_analyzer-{VERSION}"


def _pytriton_libs() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs"


def ensure_perf_analyzer(wheel: Path | None = None) -> Path:
    """Path of a runnable ``perf_analyzer`` (extracted once into the cache); raises LangcolorError if impossible."""
    root = cache_dir()
    binary, libdir = root / "bin" / "perf_analyzer", root / "lib"
    if not binary.is_file():
        root.mkdir(parents=True, exist_ok=True)
        wheel = wheel or next(iter(sorted(root.glob(f"tritonclient-{VERSION}-*.whl"))), None)
        if wheel is None:
            log.info("downloading tritonclient==%s (for its perf_analyzer binary) into %s", VERSION, root)
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", f"tritonclient=={VERSION}", "-d", str(root)],
                capture_output=True, text=True, timeout=600,
            )
            wheel = next(iter(sorted(root.glob(f"tritonclient-{VERSION}-*.whl"))), None)
            if done.returncode != 0 or wheel is None:
                raise LangcolorError(f"cannot download tritonclient=={VERSION}: {done.stderr.strip()[-300:]}")
        binary.parent.mkdir(parents=True, exist_ok=True)
        tmp = binary.with_suffix(".tmp")
        with zipfile.ZipFile(wheel) as z, open(tmp, "wb") as out:
            out.write(z.read(WHEEL_BIN))
        tmp.chmod(0o755)
        os.replace(tmp, binary)
    libdir.mkdir(parents=True, exist_ok=True)
    bundled = _pytriton_libs()
    for name, prefix in LIBS.items():
        link = libdir / name
        if not link.exists():
            found = sorted(bundled.glob(f"{prefix}*"))
            if not found:
                raise LangcolorError(f"perf_analyzer needs {name}: nothing like {prefix}* in {bundled}")
            link.unlink(missing_ok=True)
            link.symlink_to(found[0])
    return binary


def environment(binary: Path) -> dict[str, str]:
    env = os.environ.copy()
    libdir = binary.parent.parent / "lib"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libdir), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def version(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, env=environment(binary), timeout=30)
    return (out.stdout + out.stderr).strip().splitlines()[0] if out.returncode == 0 else f"unavailable ({out.returncode})"


def write_input_data(path: Path, feeds: Mapping[str, np.ndarray]) -> Path:
    """perf_analyzer's ``--input-data`` JSON for one request: every input with its batch axis (of 1)
    dropped; floats to 4 decimals (within any declared range the values came from), integers as is."""
    entry = {}
    for name, a in feeds.items():
        assert a.shape[0] == 1, "one request of batch 1 per entry"
        values = a[0].ravel()
        content = [round(float(v), 4) for v in values] if a.dtype.kind == "f" else [int(v) for v in values]
        entry[name] = {"content": content, "shape": list(a.shape[1:])}
    path.write_text(json.dumps({"data": [entry]}))
    return path


_PASS = re.compile(r"Pass \[\d+\] throughput: ([\d.]+) infer/sec\. p95 latency: (\d+) usec")


def window_stability(windows: list[tuple[float, float]], pct: float) -> tuple[bool, str]:
    """perf_analyzer's rule on (throughput, p95) windows: max/min within ``pct`` % for both."""
    if len(windows) < 3:
        return False, f"only {len(windows)} measurement windows"
    spreads = [max(v) / min(v) - 1.0 if min(v) > 0 else float("inf") for v in zip(*windows)]
    if max(spreads) > pct / 100.0:
        return False, f"windows differ by {spreads[0]:.0%} in throughput, {spreads[1]:.0%} in p95 (limit {pct:g}%)"
    return True, ""


@dataclass(frozen=True)
class PerfResult:
    concurrency: int
    throughput: float  # inferences (= images at batch 1) per second
    p50_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float
    server_queue_ms: float
    server_compute_ms: float
    stable: bool
    note: str


def run_perf_analyzer(
    binary: Path, url: str, protocol: str, model: str, input_data: Path, concurrency: int, workdir: Path,
    interval_ms: int = 3000, max_trials: int = 3, stability_pct: int = 10, timeout_s: float = 300.0,
) -> PerfResult:
    """One perf_analyzer measurement at ``concurrency`` (three windows of ``interval_ms``); an unstable
    run is kept and flagged."""
    csv_path = workdir / f"pa_{model}_{protocol}_c{concurrency}.csv"

    # One run of three windows, accepted at any spread, with every window printed (-v); stability is
    # then judged on those windows with perf_analyzer's own rule (max/min of the last three within
    # ``stability_pct`` % for throughput and p95). Asking perf_analyzer to enforce it instead makes
    # it write nothing at all for an unstable run on a shared CPU.
    csv_path.unlink(missing_ok=True)
    cmd = [
        str(binary), "-m", model, "-u", url, "-i", protocol, "-b", "1", "-v",
        f"--concurrency-range={concurrency}:{concurrency}", f"--input-data={input_data}",
        f"--measurement-interval={interval_ms}", f"--max-trials={max_trials}", "--stability-percentage=100000",
        "--percentile=95", "-f", str(csv_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=environment(binary), timeout=timeout_s)
    text = done.stdout + done.stderr
    windows = [(float(t), float(p)) for t, p in _PASS.findall(text)][-3:]
    stable, note = window_stability(windows, stability_pct)
    if not csv_path.is_file():
        raise LangcolorError(f"perf_analyzer failed (status {done.returncode}): {text.strip()[-400:]}")
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise LangcolorError(f"perf_analyzer wrote no measurement: {text.strip()[-400:]}")
    r = rows[-1]

    def us(key: str) -> float:
        return float(r.get(key, "nan") or "nan") / 1000.0

    parts = ("Client Send", "Network+Server Send/Recv", "Server Queue", "Server Compute Input",
             "Server Compute Infer", "Server Compute Output", "Client Recv")
    avg = us("Avg latency") if "Avg latency" in r else sum(us(k) for k in parts)  # perf_analyzer's own sum

    return PerfResult(
        concurrency=int(r["Concurrency"]),
        throughput=float(r["Inferences/Second"]),
        p50_ms=us("p50 latency"),
        p95_ms=us("p95 latency"),
        p99_ms=us("p99 latency"),
        avg_ms=avg,
        server_queue_ms=us("Server Queue"),
        server_compute_ms=us("Server Compute Infer"),
        stable=stable and done.returncode == 0,
        note=note or ("" if done.returncode == 0 else text.strip().splitlines()[-1][:200]),
    )
