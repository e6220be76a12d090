"""``langcolor colorize PHOTO [--caption TEXT | --reference REF ...] -o OUT.png``: one photo, in-process
or through a server.

The inputs a family takes beside the photo (``--caption``, ``--reference``, ...) are flags generated
from the families' declared inputs; a flag the chosen ``--model`` does not take is refused. Everything
that can be checked cheaply (output path, inputs) is checked before the model is loaded or the photo
decoded; every user error is a ``LangcolorError`` that the CLI prints as one line with exit status 2.
The output is written atomically, so a failure never leaves half a file.

A family that samples (one with a ``--seed`` input) draws ``--samples N`` colourings with seeds
S..S+N-1, written to ``OUT_0.png`` ... ``OUT_{N-1}.png``; in-process they run as one batch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import families
from .connection import add_server_flags, connection_options
from .imageio import DEFAULT_JPEG_QUALITY, DEFAULT_MAX_PIXELS, DEFAULT_PNG_COMPRESSION

RECONSTRUCT_THREADS = 2  # one photo: split its rows over two threads (the full-resolution step)
SEED_INPUT = "seed"  # the input a sampling family draws with: --samples N runs seeds S..S+N-1


def add_input_flags(p: argparse.ArgumentParser) -> None:
    """One flag per user input any family declares (``--caption``, ``--reference``, ...)."""
    group = p.add_argument_group("what the model is told (see `langcolor models` for each family's inputs)")
    for f in families.all_inputs():
        users = ", ".join(n for n in families.names() if f.name in families.get(n).input_names)
        metavar = "TEXT" if f.kind == families.TEXT else "IMAGE"
        group.add_argument(*f.flags, dest=f"input__{f.name}", default=None, metavar=metavar,
                           help=f"{f.help} ({users})")


def given_inputs(args: argparse.Namespace, family: str) -> dict[str, str]:
    """The user inputs given on the command line, checked against what ``family`` takes."""
    from .errors import LangcolorError

    given = {k.removeprefix("input__"): v for k, v in vars(args).items() if k.startswith("input__") and v is not None}
    record = families.get(family)
    foreign = sorted(set(given) - set(record.input_names))
    if foreign:
        takes = ", ".join("--" + n for n in record.input_names) or "nothing beside the photo"
        raise LangcolorError(f"model '{family}' takes {takes}; not {', '.join('--' + n for n in foreign)}")
    missing = [f.name for f in record.inputs if f.required and f.name not in given]
    if missing:
        raise LangcolorError(f"model '{family}' needs {', '.join('--' + n for n in missing)}")
    return given


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("photo", help="input photograph (JPEG, PNG, TIFF, ...; grayscale or colour)")
    p.add_argument("--output", "-o", required=True, help="output file; the extension picks PNG, JPEG or TIFF")
    p.add_argument("--model", default=families.DEFAULT_FAMILY, choices=families.names(),
                   help="model family (`langcolor models` describes each)")
    add_input_flags(p)
    add_server_flags(p)
    p.add_argument(
        "--model-repository", default=None, metavar="DIR",
        help="model repository (default: the shipped model_repository/, or $LANGCOLOR_MODEL_REPOSITORY)",
    )
    p.add_argument("--samples", type=int, default=1, metavar="N",
                   help="for a model that samples (one with --seed): N colourings with seeds S..S+N-1 "
                   "(S = --seed, default 0), written to OUT_0.png ... OUT_{N-1}.png")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (decompression bombs)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument(
        "--png-compression", type=int, default=DEFAULT_PNG_COMPRESSION, choices=range(10), metavar="0-9",
        help="zlib level for PNG output: 1 is ~4x faster than 6 for a ~10%% larger file (default: %(default)s)",
    )
    p.add_argument(
        "--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY, choices=range(1, 101), metavar="1-100",
        help="quality for JPEG output, saved with full-resolution chroma (default: %(default)s)",
    )


def sample_inputs(inputs: dict[str, str], family: str, samples: int) -> list[dict[str, str]]:
    """The inputs of each of ``samples`` colourings: the same, but seeds S..S+N-1 (S = the given
    seed, else 0). Any family with a ``seed`` input samples; the family checks each seed's range."""
    from .errors import LangcolorError

    if samples < 1:
        raise LangcolorError(f"--samples must be at least 1, got {samples}")
    if samples == 1:
        return [inputs]
    if SEED_INPUT not in families.get(family).input_names:
        raise LangcolorError(f"model '{family}' takes no seed: --samples needs a model that samples (see `langcolor models`)")
    try:
        start = int(inputs.get(SEED_INPUT, "0"))
    except ValueError as e:
        raise LangcolorError(f"--seed must be an integer with --samples, got {inputs[SEED_INPUT]!r}") from e
    return [{**inputs, SEED_INPUT: str(start + k)} for k in range(samples)]


def sample_paths(out: Path, samples: int) -> list[Path]:
    """OUT itself for one colouring; OUT_0.ext ... OUT_{N-1}.ext for N."""
    return [out] if samples == 1 else [out.with_name(f"{out.stem}_{k}{out.suffix}") for k in range(samples)]


def print_notes(notes) -> None:
    for note in notes:
        print(note.message)


def run(args: argparse.Namespace) -> int:
    from .colorizer import Colorizer  # here so `langcolor --help` stays fast
    from .outputs import check_output_path

    from .imageio import read_bytes

    inputs = given_inputs(args, args.model)
    draws = sample_inputs(inputs, args.model, args.samples)
    outs = [check_output_path(path) for path in sample_paths(check_output_path(args.output), len(draws))]
    t0 = time.perf_counter()
    colorizer = Colorizer(
        model=args.model,
        server=args.server,
        protocol=args.protocol,
        model_repository=args.model_repository,
        max_pixels=args.max_pixels,
        intra_op_threads=args.threads,
        via=args.via,
        **connection_options(args),
    )
    try:
        if len(draws) == 1:
            results = [colorizer.colorize(args.photo, threads=RECONSTRUCT_THREADS, **inputs)]
        else:  # one read of the file; in-process, the samples run as one batch
            photo = read_bytes(args.photo)
            results = colorizer.colorize_many([(photo, values) for values in draws], threads=RECONSTRUCT_THREADS)
        for result, out in zip(results, outs):
            colorizer.save(result, out, png_compression=args.png_compression, jpeg_quality=args.jpeg_quality)
    finally:
        colorizer.close()
    h, w = results[0].rgb.shape[:2]
    where = f"server {args.server} ({colorizer.via})" if args.server else "in-process"
    for result in results:
        print_notes(result.notes)
    written = str(outs[0]) if len(outs) == 1 else f"{outs[0]} ... {outs[-1]} ({len(outs)} samples)"
    print(f"wrote {written} ({w}x{h}, {where}, {time.perf_counter() - t0:.2f} s)")
    return 0
