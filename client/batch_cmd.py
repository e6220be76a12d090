"""``langcolor batch``: the command line over ``langcolor.client.batch.run_batch``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from . import families
from .batch import (DEFAULT_BATCH_SIZE, DEFAULT_SERVER_WAIT_S, SERVER_IN_FLIGHT, SERVER_WAIT_ENV, BatchOptions,
                    run_batch)
from .colorize_cmd import add_input_flags
from .connection import add_server_flags, connection_options
from .imageio import DEFAULT_MAX_PIXELS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=location, metavar="SRC",
                        help="folder of photos (walked recursively) or a CSV/JSONL manifest (path + the model's inputs); "
                        "with --ray also an s3://bucket/prefix")
    parser.add_argument("--output", "-o", type=location, required=True, metavar="DIR",
                        help="output folder (outside the source tree); relative paths are kept; with --ray also s3://")
    parser.add_argument("--manifest", "--captions", dest="manifest", type=location, metavar="FILE",
                        help="CSV (path,caption,...) or JSONL manifest of inputs for a folder SRC, paths relative to SRC")
    parser.add_argument("--model", default=families.DEFAULT_FAMILY, choices=families.names(),
                        help="model family (`langcolor models` describes each)")
    add_input_flags(parser)
    parser.add_argument("--default-caption", dest="input__caption", metavar="TEXT", default=None,
                        help="the same as --caption: the caption of images the manifest gives none")
    add_server_flags(parser)
    parser.add_argument("--server-wait", type=float, metavar="SECONDS",
                        default=float(os.environ.get(SERVER_WAIT_ENV) or DEFAULT_SERVER_WAIT_S),
                        help=f"with --server: how long to wait, retrying with backoff, for a server that goes away "
                        f"mid-run (a restart) before stopping; 0 stops after a few quick retries (${SERVER_WAIT_ENV} "
                        "sets the default)")
    parser.add_argument("--workers", type=int, help="decode/encode threads (default: CPU count, at most 8)")
    parser.add_argument("--processes", type=int, default=0,
                        help="in-process runs: worker processes for decode, Lab, reconstruct and encode; 0: the "
                             "--workers threads do it (measured faster on 2 cores)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per inference call")
    parser.add_argument("--in-flight", type=int,
                        help=f"inference requests at once (default: 1 in-process, {SERVER_IN_FLIGHT} with --server)")
    parser.add_argument("--format", choices=("png", "jpeg", "same"), default="png",
                        help="output format; 'same' keeps PNG/JPEG/TIFF inputs' format (others become PNG)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse images with more pixels")
    parser.add_argument("--model-repository", type=Path,
                        help="model repository (default: the shipped one); with --server --via ensemble its "
                        "manifest and assets are read, and must match the served model")
    parser.add_argument("--samples", type=int, default=1, metavar="N",
                        help="for a model that samples (one with --seed): N colourings of every image, with seeds "
                        "S..S+N-1 (S = --seed, default 0), in DIR/sample_0 ... DIR/sample_{N-1}")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from .batch_ray_cmd import add_ray_flags  # the distributed run's flags (docs/scale-out.md)

    add_ray_flags(parser)


def location(text: str) -> Path | str:
    """A local path, or an ``s3://`` location kept as text (a Path would fold its double slash)."""
    return text if text.startswith("s3://") else Path(text)


def sample_output(output: Path | str, k: int) -> Path | str:
    """Where sample ``k`` of a ``--samples`` run goes: a ``sample_k`` folder under the output."""
    return f"{output.rstrip('/')}/sample_{k}" if isinstance(output, str) else output / f"sample_{k}"


def _no_manifest_seeds(args: argparse.Namespace, record) -> None:
    """--samples sets every image's seed; a manifest that sets them too would repeat one sample N times."""
    from .batch_sources import read_manifest
    from .colorize_cmd import SEED_INPUT
    from .errors import LangcolorError

    manifest = args.manifest or (args.source if isinstance(args.source, Path) and args.source.is_file() else None)
    if isinstance(manifest, Path) and any(SEED_INPUT in e.values for e in read_manifest(manifest, record.inputs)):
        raise LangcolorError(f"{manifest} sets seeds per image; --samples draws seeds S..S+N-1 for every image: "
                             "drop the seed column, or run without --samples")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .colorize_cmd import SEED_INPUT, sample_inputs
    from .errors import LangcolorError

    record = families.get(args.model)
    if args.ray is None and any(isinstance(v, str) for v in (args.source, args.output, args.manifest)):
        raise LangcolorError("s3:// sources and outputs run with --ray (--ray local on this machine alone)")
    given = {k.removeprefix("input__"): v for k, v in vars(args).items() if k.startswith("input__") and v is not None}
    foreign = sorted(set(given) - set(record.input_names))
    if foreign:
        raise LangcolorError(f"model '{record.name}' does not take {', '.join('--' + n for n in foreign)}")
    needs = [f.name for f in record.inputs if f.required and f.name not in given]
    if needs and args.manifest is None and (args.source.is_dir() if isinstance(args.source, Path) else not args.source.endswith((".csv", ".jsonl"))):
        flags = " and ".join(f"--{n}" for n in needs)
        raise LangcolorError(f"a folder SRC needs --manifest FILE or {flags} (model '{record.name}' needs {', '.join(needs)})")
    for flag, value in (("--batch-size", args.batch_size), ("--max-pixels", args.max_pixels)):
        if value < 1:
            raise LangcolorError(f"{flag} must be at least 1")
    draws = sample_inputs(given, record.name, args.samples)
    if len(draws) > 1:
        _no_manifest_seeds(args, record)
    options = BatchOptions(
        source=args.source,
        output=args.output,
        manifest=args.manifest,
        inputs=given,
        server=args.server,
        protocol=args.protocol,
        via=args.via,
        workers=args.workers,
        processes=args.processes,
        batch_size=args.batch_size,
        in_flight=args.in_flight,
        format=args.format,
        max_pixels=args.max_pixels,
        model=args.model,
        model_repository=args.model_repository,
        progress=not args.no_progress and sys.stderr.isatty(),
        server_wait_s=args.server_wait,
        **connection_options(args),
    )
    ok = True
    for k, values in enumerate(draws):
        run_options = options if len(draws) == 1 else replace(options, inputs=values, output=sample_output(args.output, k))
        if len(draws) > 1:
            print(f"sample {k} (seed {values.get(SEED_INPUT, '0')}) -> {run_options.output}")
        ok = _run_one(run_options, args) and ok
    return 0 if ok else 1


def _run_one(options: BatchOptions, args: argparse.Namespace) -> bool:
    with logging_redirect_tqdm():  # warnings about bad files print above the progress bar, not through it
        if args.ray is not None:
            from .batch_ray_cmd import run_on_ray

            summary = run_on_ray(options, args)
        else:
            summary = run_batch(options)
    print(
        f"done {summary.done}, already done {summary.already_done}, skipped {summary.skipped}, "
        f"failed {summary.failed} of {summary.total} in {summary.seconds:.1f} s ({summary.images_per_s:.2f} images/s)"
    )
    for kind, count in sorted(summary.notes.items()):
        print(f"note: {count} image(s) with '{kind}' (see the notes in {options.output}/.langcolor/records.jsonl)")
    if summary.failed:
        print(f"failures: {summary.report}")
    if summary.aborted:
        print(f"stopped early: {summary.aborted}; rerun the same command to finish", file=sys.stderr)
    return summary.ok
