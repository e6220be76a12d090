"""The ``--ray`` flags of ``langcolor batch``, and the run they start (``batch_ray``)."""

from __future__ import annotations

import argparse
import os

from .batch import BatchOptions, BatchSummary


def add_ray_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("on a Ray cluster (pip install 'langcolor[scale]'; docs/scale-out.md)")
    group.add_argument("--ray", metavar="ADDRESS", default=None,
                       help="run on Ray: 'auto' joins the cluster `ray start` made here (or $RAY_ADDRESS), "
                       "'local' starts one in this process on 127.0.0.1, HOST:PORT names a head node")
    group.add_argument("--ray-actors", type=int, default=None, metavar="N",
                       help="colorizing actors (default: the cluster's CPUs / --ray-cpus-per-actor)")
    group.add_argument("--ray-cpus-per-actor", type=float, default=1.0, metavar="CPUS",
                       help="CPUs each actor reserves; its in-process model uses that many threads")


def run_on_ray(options: BatchOptions, args: argparse.Namespace) -> BatchSummary:
    from .batch_ray import RayOptions, run_ray_batch
    from .connection import API_KEY_FILE_ENV

    key_file = args.api_key_file or os.environ.get(API_KEY_FILE_ENV)
    ray_options = RayOptions(address=args.ray, actors=args.ray_actors, cpus_per_actor=args.ray_cpus_per_actor,
                             api_key_file=str(key_file) if key_file else None)
    return run_ray_batch(options, ray_options)
