"""``langcolor bench``: latency and throughput per stage and end to end, every path side by side.

    langcolor bench --quick                      # the targets' subset, a few minutes on 2 cores
    langcolor bench --quick --model FAMILY       # the same for another registered family (`langcolor models`)
    langcolor bench --configs small --paths onnxruntime,triton-grpc
    langcolor bench                              # the full sweep (batch 1..16, concurrency 1..16, tuning)

One model family per run (``--model``, any registered family). Writes one JSON under benchmarks/results/
(or --output) and PNG plots beside it. torch and the benchmark modules are imported inside ``run()``
so that ``langcolor --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from datetime import datetime
from pathlib import Path

from langcolor.client import families
from langcolor.client.errors import LangcolorError

log = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PATH_CHOICES = ("pytorch", "onnxruntime", "gpu", "triton-grpc", "triton-http", "perf_analyzer", "colorize", "prepost")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=families.names(), default=families.DEFAULT_FAMILY,
                        help="model family: its networks, its '<family>' ensemble and '<family>_<stage>' models")
    parser.add_argument("--quick", action="store_true", help="only what the targets need: batch 1, concurrency 1 and 8")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON file to write; None: benchmarks/results/bench-<model>-<quick|full>-<time>.json")
    parser.add_argument("--configs", type=_names, default="full,small", help="network configs, comma-separated")
    parser.add_argument("--paths", type=_names, default=",".join(PATH_CHOICES), help="paths to measure, comma-separated")
    parser.add_argument("--batches", type=_ints, default=None, help="batch sizes; None: 1 quick, 1,2,4,8,16 full")
    parser.add_argument("--concurrency", type=_ints, default=None, help="concurrent callers; None: 1,8 quick, 1,2,4,8,16 full")
    parser.add_argument("--tune", action=argparse.BooleanOptionalAction, default=None,
                        help="also try onnxruntime options and Triton config variants; None: a few quick, all in the full sweep")
    parser.add_argument("--no-plots", action="store_true", help="write the JSON only")
    parser.add_argument("--workdir", type=Path, default=None, help="keep exported repositories and server logs here")


def run(args: argparse.Namespace) -> int:
    from .runner import BenchOptions, run_bench

    unknown = [p for p in args.paths if p not in PATH_CHOICES]
    if unknown:
        raise LangcolorError(f"unknown path(s) {', '.join(unknown)}; choose from {', '.join(PATH_CHOICES)}")
    family = getattr(args, "model", families.DEFAULT_FAMILY)
    record = families.get(family)
    for config in args.configs:
        record.config(config)  # an unknown config fails now, not after the peak measurement
    kw = {"family": family, "configs": tuple(args.configs), "paths": tuple(args.paths), "workdir": args.workdir}
    if args.batches:
        kw["batches"] = args.batches
    if args.concurrency:
        kw["concurrencies"] = args.concurrency
    if args.tune is not None:
        kw["tune"] = args.tune
    options = BenchOptions.make(args.quick, **kw)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    output = args.output or RESULTS_DIR / f"bench-{family}-{'quick' if args.quick else 'full'}-{stamp}.json"
    doc = run_bench(options, output)
    print(f"wrote {output} ({len(doc['results'])} rows, model {family})")
    if not args.no_plots:
        from .plots import draw_all

        for png in draw_all(doc, output.with_suffix("")):
            print(f"plot  {png}")
    for t in doc.get("targets", []):
        value = "not measured" if t["value"] is None else f"{t['value']:.2f}"
        ref = "" if t.get("binding", True) else f" [reference only: the targets bind {families.DEFAULT_FAMILY}]"
        print(f"target ({t['family']} {t['config']}): {t['name']}: {value} (goal {t['goal']}; {t['detail']}) "
              f"-> {'MET' if t['met'] else 'not met'}{ref}")
    unstable = [r for r in doc["results"] if not r["stable"]]
    if unstable:
        print(f"{len(unstable)} of {len(doc['results'])} points not stable (see unstable_reason in the JSON)")
    return 0
