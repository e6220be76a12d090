"""``langcolor colorize PHOTO --caption TEXT -o OUT.png``: one photo, in-process or through a server.

Everything that can be checked cheaply (output path, caption) is checked before the model is
loaded or the photo decoded; every user error is a ``LangcolorError`` that the CLI prints as one
line with exit status 2. The output is written atomically, so a failure never leaves half a file.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from .imageio import DEFAULT_JPEG_QUALITY, DEFAULT_MAX_PIXELS, DEFAULT_PNG_COMPRESSION, load_image

RECONSTRUCT_THREADS = 2  # one photo: split its rows over two threads (the full-resolution step)


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
    p.add_argument(
        "--png-compression", type=int, default=DEFAULT_PNG_COMPRESSION, choices=range(10), metavar="0-9",
        help="zlib level for PNG output: 1 is ~4x faster than 6 for a ~10%% larger file (default: %(default)s)",
    )
    p.add_argument(
        "--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY, choices=range(1, 101), metavar="1-100",
        help="quality for JPEG output, saved with full-resolution chroma (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from .colorizer import ColorizeResult, Colorizer, check_output_path  # here so `langcolor --help` stays fast

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
    # The caption is tokenized once, without Colorizer.encode_caption's log warning: the unknown
    # words are printed below, once. CaptionError comes before the photo is decoded.
    encoded = colorizer.tokenizer.encode(args.caption)
    loaded = load_image(args.photo, max_pixels=args.max_pixels)
    prepared = colorizer.prepare(loaded)
    # From here on only L and the metadata are needed: let the float RGB go (12 bytes a pixel,
    # 144 MB for 12 MP) before the output is built and encoded.
    loaded = dataclasses.replace(loaded, rgb=np.zeros((0, 0, 3), np.float32))
    prepared = dataclasses.replace(prepared, loaded=loaded)
    ab = colorizer.infer_ab(prepared.l_small[None], encoded.ids[None])[0]  # [1,1,S,S], [1,T] -> [2,S,S]
    rgb = colorizer.finish(prepared, ab, threads=RECONSTRUCT_THREADS)  # [H, W, 3] uint8
    result = ColorizeResult(rgb, ab, encoded.unknown, loaded.exif, loaded.icc)
    colorizer.save(result, out, png_compression=args.png_compression, jpeg_quality=args.jpeg_quality)
    w, h = loaded.size
    where = f"server {args.server} ({args.protocol})" if args.server else "in-process"
    if encoded.unknown:
        print(f"ignored unknown words: {' '.join(encoded.unknown)}")
    if encoded.split:  # WordPiece models read words outside their vocabulary as known pieces
        print(f"words outside the vocabulary, read as word pieces: {' '.join(encoded.split)}")
    print(f"wrote {out} ({w}x{h}, {where}, {time.perf_counter() - t0:.2f} s)")
    return 0
