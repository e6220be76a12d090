"""Plots drawn from a run's JSON alone: latency vs batch, throughput vs concurrency, time per stage.

    python -m langcolor.benchmarks.plots RUN.json                      # redraw, print the README tables
    python -m langcolor.benchmarks.plots RUN.json --readme benchmarks/README.md   # and replace its figures section
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .report import doc_family, load_document, readme_tables, update_readme  # noqa: E402

STAGE_ORDER = ("encoder", "fusion", "decoder")


def _base(r: dict) -> bool:
    return not r.get("variant")


def _title(doc: dict, what: str) -> str:
    m = doc["machine"]
    return (f"{what} ({doc_family(doc)})\n{m['cpu_model'][:48]}, {m['logical_cores']} cores, "
            f"git {doc['git_revision'][:8]}")


def latency_vs_batch(doc: dict, out: Path) -> Path | None:
    rows = [r for r in doc["results"] if r["stage"] == "e2e" and r["concurrency"] == 1 and _base(r)
            and r["path"] in ("pytorch", "onnxruntime", "triton-grpc", "triton-http", "onnxruntime-cuda", "onnxruntime-tensorrt")]
    series: dict[tuple[str, str, str], list[tuple[int, float, float]]] = {}
    for r in rows:
        series.setdefault((r["path"], r["config"], r["precision"]), []).append((r["batch"], r["p50_ms"], r["p99_ms"]))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (path, config, prec), pts in sorted(series.items()):
        pts.sort()
        xs, p50, p99 = zip(*pts)
        line, = ax.plot(xs, p50, marker="o", label=f"{path} / {config}" + (f" {prec}" if prec != "fp32" else ""))
        ax.fill_between(xs, p50, p99, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch (images per call)")
    ax.set_ylabel("latency per call, ms (p50 line, band to p99)")
    ax.set_title(_title(doc, "End-to-end latency vs batch"), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def throughput_vs_concurrency(doc: dict, out: Path) -> Path | None:
    rows = [r for r in doc["results"] if r["stage"] == "e2e" and r["batch"] == 1 and _base(r)
            and r["path"] in ("triton-grpc", "triton-http", "perf_analyzer")]
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in rows:
        series.setdefault((r["path"], r["config"]), []).append((r["concurrency"], r["throughput"]))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (path, config), pts in sorted(series.items()):
        pts.sort()
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="s" if path == "perf_analyzer" else "o", linestyle="--" if path == "perf_analyzer" else "-",
                label=f"{path} / {config}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent callers (batch 1 each)")
    ax.set_ylabel("images/s")
    ax.set_title(_title(doc, "Throughput through Triton vs concurrency (ours vs perf_analyzer)"), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def time_per_stage(doc: dict, out: Path) -> Path | None:
    rows = [r for r in doc["results"] if r["stage"] in STAGE_ORDER and r["batch"] == 1 and r["concurrency"] == 1 and _base(r)]
    per_config: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        per_config.setdefault(r["config"], {}).setdefault(r["path"], {})[r["stage"]] = r["p50_ms"]
    if not per_config:
        return None
    configs = sorted(per_config)
    fig, axes = plt.subplots(1, len(configs), figsize=(4.5 * len(configs), 4.5), squeeze=False)
    for ax, config in zip(axes[0], configs):
        bars = per_config[config]
        labels = sorted(bars)
        bottom = [0.0] * len(labels)
        for stage in STAGE_ORDER:
            vals = [bars[k].get(stage, 0.0) for k in labels]
            ax.bar(labels, vals, bottom=bottom, label=stage)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_title(f"config {config}", fontsize=9)
        ax.set_ylabel("p50 ms per stage, batch 1 (stacked)")
        ax.tick_params(axis="x", labelsize=7, rotation=20)
        ax.legend(fontsize=7)
    fig.suptitle(_title(doc, "Where the time goes"), fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def draw_all(doc: dict, prefix: Path) -> list[Path]:
    """``<prefix>-latency-vs-batch.png`` etc.; plots with no data are not drawn."""
    prefix = Path(prefix)
    made = [
        latency_vs_batch(doc, prefix.with_name(prefix.name + "-latency-vs-batch.png")),
        throughput_vs_concurrency(doc, prefix.with_name(prefix.name + "-throughput-vs-concurrency.png")),
        time_per_stage(doc, prefix.with_name(prefix.name + "-stages.png")),
    ]
    return [p for p in made if p is not None]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m langcolor.benchmarks.plots")
    parser.add_argument("runs", nargs="+", type=Path, help="result JSON files")
    parser.add_argument("--readme", type=Path, default=None, help="README whose generated section to replace (last run)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for path in args.runs:
        doc = load_document(path)
        for png in draw_all(doc, path.with_suffix("")):
            print(f"plot {png}")
        if args.readme is None:
            print(readme_tables(doc))
    if args.readme is not None:
        update_readme(args.readme, [load_document(p) for p in args.runs], args.runs)
        print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
