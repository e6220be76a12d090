"""``langcolor batch``: the command line over ``langcolor.client.batch.run_batch``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from .batch import DEFAULT_BATCH_SIZE, SERVER_IN_FLIGHT, BatchOptions, run_batch
from .imageio import DEFAULT_MAX_PIXELS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, metavar="SRC",
                        help="folder of photos (walked recursively) or a CSV/JSONL manifest of path,caption")
    parser.add_argument("--output", "-o", type=Path, required=True, metavar="DIR",
                        help="output folder (outside the source tree); relative paths are kept")
    parser.add_argument("--captions", type=Path, metavar="FILE",
                        help="CSV (path,caption) or JSONL manifest of captions for a folder SRC, paths relative to SRC")
    parser.add_argument("--default-caption", metavar="TEXT",
                        help="caption for images without one (otherwise they are skipped)")
    parser.add_argument("--server", metavar="HOST:PORT", help="Triton server; default: run in-process")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="protocol to the server")
    parser.add_argument("--workers", type=int, help="decode/encode threads (default: CPU count, at most 8)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per inference call")
    parser.add_argument("--in-flight", type=int,
                        help=f"inference requests at once (default: 1 in-process, {SERVER_IN_FLIGHT} with --server)")
    parser.add_argument("--format", choices=("png", "jpeg", "same"), default="png",
                        help="output format; 'same' keeps PNG/JPEG/TIFF inputs' format (others become PNG)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse images with more pixels")
    parser.add_argument("--model", default="lcode", help="model family in the model repository")
    parser.add_argument("--model-repository", type=Path,
                        help="model repository (default: the shipped one); with --server only its manifest and "
                        "tokenizer are read, and must match the served model")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.captions is None and args.default_caption is None and args.source.is_dir():
        print("langcolor batch: error: a folder SRC needs --captions FILE or --default-caption TEXT", file=sys.stderr)
        return 2
    for flag, value in (("--batch-size", args.batch_size), ("--max-pixels", args.max_pixels)):
        if value < 1:
            print(f"langcolor batch: error: {flag} must be at least 1", file=sys.stderr)
            return 2
    options = BatchOptions(
        source=args.source,
        output=args.output,
        captions=args.captions,
        default_caption=args.default_caption,
        server=args.server,
        protocol=args.protocol,
        workers=args.workers,
        batch_size=args.batch_size,
        in_flight=args.in_flight,
        format=args.format,
        max_pixels=args.max_pixels,
        model=args.model,
        model_repository=args.model_repository,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    with logging_redirect_tqdm():  # warnings about bad files print above the progress bar, not through it
        summary = run_batch(options)
    print(
        f"done {summary.done}, already done {summary.already_done}, skipped {summary.skipped}, "
        f"failed {summary.failed} of {summary.total} in {summary.seconds:.1f} s ({summary.images_per_s:.2f} images/s)"
    )
    if summary.failed:
        print(f"failures: {summary.report}")
    if summary.aborted:
        print(f"stopped early: {summary.aborted}; rerun the same command to finish", file=sys.stderr)
    return 0 if summary.ok else 1
