"""``langcolor colorize PHOTO --caption TEXT -o OUT.png``: one photo, in-process or through a server.

Everything that can be checked cheaply (output path, caption) is checked before the model is
loaded or the photo decoded; every user error is a ``LangcolorError`` that the CLI prints as one
line with exit status 2. The output is written atomically, so a failure never leaves half a file.
"""

from __future__ import annotations

import argparse
import time

from .imageio import DEFAULT_MAX_PIXELS, load_image


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("photo", help="input photograph (JPEG, PNG, TIFF, ...; grayscale or colour)")
    p.add_argument("--caption", "-c", required=True, help='what the colours should be, e.g. "a red car on green grass"')
    p.add_argument("--output", "-o", required=True, help="output file; the extension picks PNG, JPEG or TIFF")
    p.add_argument("--model", default="lcode", help="model family in the model repository")
    p.add_argument("--server", default=None, metavar="HOST:PORT", help="use a Triton server instead of running in-process")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="protocol for --server")
    p.add_argument(
        "--model-repository", default=None, metavar="DIR",
        help="model repository (default: the shipped model_repository/, or $LANGCOLOR_MODEL_REPOSITORY)",
    )
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (decompression bombs)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")


def run(args: argparse.Namespace) -> int:
    from .colorizer import Colorizer, check_output_path  # imported here so `langcolor --help` stays fast

    out = check_output_path(args.output)
    t0 = time.perf_counter()
    colorizer = Colorizer(
        model=args.model,
        server=args.server,
        protocol=args.protocol,
        model_repository=args.model_repository,
        max_pixels=args.max_pixels,
        intra_op_threads=args.threads,
    )
    encoded = colorizer.tokenizer.encode(args.caption)  # CaptionError before the photo is decoded
    loaded = load_image(args.photo, max_pixels=args.max_pixels)
    result = colorizer.colorize(loaded, args.caption)
    colorizer.save(result, out, like=loaded)
    w, h = loaded.size
    where = f"server {args.server} ({args.protocol})" if args.server else "in-process"
    if encoded.unknown:
        print(f"ignored unknown words: {' '.join(encoded.unknown)}")
    print(f"wrote {out} ({w}x{h}, {where}, {time.perf_counter() - t0:.2f} s)")
    return 0
