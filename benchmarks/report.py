"""The run's JSON document: machine, versions, git revision, one row per measured point, targets;
and the markdown tables the README shows, generated from that JSON alone."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from langcolor.client.families import DEFAULT_FAMILY
from langcolor.client.provenance import git_revision

from .stats import LatencyStats
from .targets import UNRECORDED_FAMILY

SCHEMA = 1
REQUIRED_ROW_KEYS = (
    "path", "family", "config", "stage", "batch", "concurrency", "device", "precision", "runtime", "default",
    "p50_ms", "p95_ms", "p99_ms", "throughput",
)
# What runs the network on each path (a path not listed runs onnxruntime in some wrapper).
PATH_RUNTIMES = {"pytorch": "pytorch", "tensorrt-trtexec": "tensorrt", "client-prepost": "numpy"}
SERVED_PREFIXES = ("triton", "perf_analyzer", "colorize", "client+ensemble")
NOT_DEFAULT_PATHS = ("pytorch", "tensorrt-trtexec", "onnxruntime-cuda")  # references, or a flag away


def path_runtime(path: str) -> str:
    """``runtime`` of a row: the library that runs the network, behind Triton for a served path."""
    if path in PATH_RUNTIMES:
        return PATH_RUNTIMES[path]
    return "triton/onnxruntime" if path.startswith(SERVED_PREFIXES) else "onnxruntime"


def make_row(path: str, config: str, stage: str, device: str, precision: str, stats: LatencyStats,
             gflops_per_image: float | None = None, peak_gflops: float | None = None, family: str = DEFAULT_FAMILY,
             **extra) -> dict:
    # default: the row measures what a user gets without flags (the served configuration as
    # exported, the in-process runtime's own settings); a tuning variant's row does not.
    row = {"path": path, "family": family, "config": config, "stage": stage, "device": device,
           "precision": precision, "runtime": extra.pop("runtime", None) or path_runtime(path),
           "default": extra.pop("default", extra.get("variant") is None and path not in NOT_DEFAULT_PATHS), **stats.to_dict()}
    if gflops_per_image is not None:
        achieved = gflops_per_image * stats.throughput
        row["gflops_per_image"] = float(f"{gflops_per_image:.6g}")
        row["achieved_gflops"] = round(achieved, 3)
        if peak_gflops:
            row["fraction_of_peak"] = round(achieved / peak_gflops, 4)
    row.update({k: v for k, v in extra.items() if v is not None})
    missing = [k for k in REQUIRED_ROW_KEYS if k not in row]
    assert not missing, missing
    return row


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_names() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [ln.strip() for ln in out.stdout.splitlines() if ln.strip()] if out.returncode == 0 else []


def machine_info() -> dict:
    import psutil

    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "other_busy_processes_at_start": busy_processes(),
        "gpus": gpu_names(),
    }


def busy_processes(threshold_pct: float = 20.0, sample_s: float = 1.0) -> list[str]:
    """Other processes using more than ``threshold_pct`` of a core over ``sample_s``: the run's neighbours."""
    import time

    import psutil

    me = os.getpid()
    procs = [p for p in psutil.process_iter(["pid", "name", "cmdline"]) if p.info["pid"] != me]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(sample_s)
    out = []
    for p in procs:
        try:
            pct = p.cpu_percent(None)
        except psutil.Error:
            continue
        if pct >= threshold_pct:
            cmd = " ".join(p.info["cmdline"] or [p.info["name"] or "?"])[:100]
            out.append(f"{pct:.0f}% {cmd}")
    return sorted(out, reverse=True)


def versions() -> dict:
    import numpy
    import onnxruntime
    import torch

    out = {"python": sys.version.split()[0], "numpy": numpy.__version__, "torch": torch.__version__,
           "onnxruntime": onnxruntime.__version__}
    for name, module in (("tritonclient", "tritonclient"), ("nvidia-pytriton", "pytriton")):
        try:
            from importlib.metadata import version

            out[name] = version(name)
        except Exception:  # not installed: the server paths are skipped and say so
            out[name] = None
    out["tritonserver"] = "2.51 (bundled in nvidia-pytriton 0.7.0)" if out.get("nvidia-pytriton") else None
    return out


def new_document(options: dict) -> dict:
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": options,
        "machine": machine_info(),
        "versions": versions(),
        "git_revision": git_revision(),
        "precision": "fp32",
        "results": [],
    }


def write_document(doc: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def load_document(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def doc_family(doc: dict) -> str:
    """The family a run measured (runs written before they recorded it measured the default family)."""
    return doc.get("family", UNRECORDED_FAMILY)


# --- markdown -------------------------------------------------------------------------------------


def _fmt(v, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: list[dict], columns: tuple[str, ...] = (
    "path", "config", "stage", "batch", "concurrency", "p50_ms", "p95_ms", "p99_ms", "throughput", "stable",
)) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    lines = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            if c == "stable":
                v = "yes" if v else f"no ({r.get('unstable_reason', '')})"
            elif c == "fraction_of_peak" and v is not None:
                v = f"{v:.1%}"
            cells.append(_fmt(v, 2 if c in ("throughput",) else 1))
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def select(rows: list[dict], **match) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def targets_markdown(doc: dict) -> str:
    lines = ["| target | measured | goal | met |", "|---|---|---|---|"]
    for t in doc.get("targets", []):
        got = "-" if t.get("value") is None else f"{t['value']:.2f}"
        met = "yes" if t.get("met") else "no"
        if t.get("binding") is False:
            met += " (reference only)"
        lines.append(f"| {t['name']} | {got} ({t['detail']}) | {t['goal']} | {met} |")
    note = f"\n{doc['targets_note']}\n" if doc.get("targets_note") else ""
    return "\n".join(lines) + "\n" + note


def readme_tables(doc: dict) -> str:
    """The README's figures section for one run: targets, end-to-end batch 1, stages, concurrency."""
    rows = doc["results"]
    m = doc["machine"]
    parts = [
        f"Model family `{doc_family(doc)}`. "
        f"Run {doc['created']} on {m['cpu_model']} ({m['logical_cores']} logical cores, load {m['load_average_at_start']}), "
        f"git {doc['git_revision'][:12]}, peak {doc.get('peak', {}).get('gflops', float('nan')):.1f} GFLOP/s (fp32 matmul).\n",
        ("Other processes busy at the start: " + "; ".join(f"`{x}`" for x in m["other_busy_processes_at_start"]) + "\n")
        if m.get("other_busy_processes_at_start") else "No other process was busy at the start.\n",
        "### Targets\n", targets_markdown(doc),
        "### End to end, batch 1, one caller\n",
        markdown_table([r for r in rows if r["stage"] == "e2e" and r["batch"] == 1 and r["concurrency"] == 1
                        and not r.get("variant") and r["path"] != "perf_analyzer"],
                       ("path", "config", "p50_ms", "p95_ms", "p99_ms", "throughput", "gflops_per_image",
                        "fraction_of_peak", "stable")),
        "### Per stage, batch 1\n",
        markdown_table([r for r in rows if r["stage"] in ("encoder", "fusion", "decoder") and r["batch"] == 1],
                       ("path", "config", "stage", "p50_ms", "p95_ms", "gflops_per_image", "fraction_of_peak", "stable")),
        "### Batch sweep (end to end, one caller)\n",
        markdown_table([r for r in rows if r["stage"] == "e2e" and r["batch"] > 1 and r["concurrency"] == 1
                        and not r.get("variant")],
                       ("path", "config", "batch", "p50_ms", "p99_ms", "throughput", "stable")),
        "### Concurrency through Triton (batch 1 per request), ours vs perf_analyzer\n",
        markdown_table([r for r in rows if r["path"] in ("triton-grpc", "triton-http", "perf_analyzer")
                        and r["stage"] == "e2e" and r["batch"] == 1 and not r.get("variant")],
                       ("path", "config", "concurrency", "p50_ms", "p95_ms", "p99_ms", "throughput", "stable")),
    ]
    pre = [r for r in rows if r["path"] in ("client-prepost", "colorize", "client+ensemble")]
    if pre:
        parts += ["### Client pre/post-processing and the colorize endpoint\n",
                  markdown_table(pre, ("path", "config", "stage", "megapixels", "p50_ms", "p95_ms", "p99_ms", "stable"))]
    tuned = [r for r in rows if r.get("variant")]
    if tuned:
        parts += ["### Tuning variants\n",
                  markdown_table(tuned, ("path", "config", "variant", "batch", "concurrency", "p50_ms", "p99_ms",
                                         "throughput", "stable"))]
    return "\n".join(parts)


BEGIN_MARK = "<!-- figures: generated by `python -m langcolor.benchmarks.plots ... --readme`; do not edit -->"
END_MARK = "<!-- end of generated figures -->"


def update_readme(readme: Path, docs: list[dict], paths: list[Path]) -> Path:
    """Replace the text between the README's markers with each run's tables and plots."""
    readme = Path(readme)
    text = readme.read_text() if readme.is_file() else f"{BEGIN_MARK}\n{END_MARK}\n"
    if BEGIN_MARK not in text or END_MARK not in text:
        text += f"\n{BEGIN_MARK}\n{END_MARK}\n"
    parts = []
    for doc, path in zip(docs, paths):
        rel = Path(os.path.relpath(Path(path).resolve(), readme.resolve().parent))
        stem = rel.with_suffix("")
        kind = "quick" if doc["options"].get("quick") else "full sweep"
        family = doc_family(doc)
        parts.append(f"## Figures: `{family}` {kind} run `{rel}`\n\n" + readme_tables(doc))
        for suffix, title in (("-latency-vs-batch.png", "latency vs batch"),
                              ("-throughput-vs-concurrency.png", "throughput vs concurrency"),
                              ("-stages.png", "time per stage")):
            if (Path(path).with_suffix("").parent / (Path(path).stem + suffix)).is_file():
                parts.append(f"![{title}]({stem}{suffix})\n")
    head, rest = text.split(BEGIN_MARK, 1)
    tail = rest.split(END_MARK, 1)[1]
    readme.write_text(head + BEGIN_MARK + "\n\n" + "\n".join(parts) + "\n" + END_MARK + tail)
    return readme
