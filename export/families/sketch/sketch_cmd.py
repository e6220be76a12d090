"""``langcolor sketch DRAWING -i "the left car is red" -i "the sky is blue" -o OUT.png``: a colouring session.

Instructions apply in order, each to the canvas the previous one produced; ``--canvas PREV.png``
continues an earlier session, ``--interactive`` reads instructions line by line (after any ``-i``) and
writes OUT after each. In-process by default, or through a server's ``colorize`` endpoint with
``--server`` (the server keeps no session: the canvas travels with every instruction). Between steps
the canvas is kept as PNG, so a session's untouched pixels stay exact whatever OUT's format.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from langcolor.client.connection import add_server_flags
from langcolor.client.errors import LangcolorError
from langcolor.client.imageio import DEFAULT_MAX_PIXELS, encode_image, read_bytes

from .config import FAMILY

PROMPT = "instruction> "
QUIT = frozenset({"quit", "exit"})


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("drawing", help="the line drawing: dark lines on white paper (PNG, JPEG, ...)")
    p.add_argument("--instruction", "-i", action="append", default=None, metavar="TEXT",
                   help='one instruction, e.g. "the left car is red"; repeat to apply several in order')
    p.add_argument("--output", "-o", required=True, help="the coloured picture; written after every step with --interactive")
    p.add_argument("--canvas", default=None, metavar="IMAGE",
                   help="the picture an earlier session produced from this drawing, to continue it")
    p.add_argument("--interactive", action="store_true",
                   help="after the -i instructions, read more from standard input, one per line (quit or EOF ends)")
    p.add_argument("--save-steps", type=Path, default=None, metavar="DIR",
                   help="also write the canvas after each instruction as DIR/step01.png, step02.png, ...")
    add_server_flags(p)
    p.add_argument("--model-repository", default=None, metavar="DIR",
                   help="model repository (default: the shipped model_repository/, or $LANGCOLOR_MODEL_REPOSITORY)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")


class Session:
    """A drawing and its canvas, one instruction at a time."""

    def __init__(self, colorizer, drawing: bytes, canvas: bytes | None) -> None:
        self.colorizer, self.drawing, self.canvas = colorizer, drawing, canvas
        self.result = None
        self.steps = 0

    def apply(self, instruction: str):
        values = {"instruction": instruction}
        if self.canvas is not None:
            values["canvas"] = self.canvas
        result = self.colorizer.colorize(self.drawing, **values)
        # The next step's canvas: the server's PNG as sent, or this process's pixels as PNG (lossless).
        self.canvas = result.encoded if result.encoded_format == "PNG" else encode_image(result.rgb, "PNG")
        self.result, self.steps = result, self.steps + 1
        return result


def _step(session: Session, text: str, args: argparse.Namespace) -> None:
    result = session.apply(text)
    for note in result.notes:
        print(f"  {note.message}")
    if args.save_steps is not None:
        args.save_steps.mkdir(parents=True, exist_ok=True)
        session.colorizer.save(result, args.save_steps / f"step{session.steps:02d}.png")


def _lines(stream):
    if stream.isatty():
        print(PROMPT, end="", file=sys.stderr, flush=True)
    for line in stream:
        yield line.strip()
        if stream.isatty():
            print(PROMPT, end="", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from langcolor.client.colorizer import Colorizer
    from langcolor.client.outputs import check_output_path

    instructions = args.instruction or []
    if not instructions and not args.interactive:
        raise LangcolorError("give at least one --instruction/-i, or --interactive")
    out = check_output_path(args.output)
    drawing = read_bytes(args.drawing)
    canvas = read_bytes(args.canvas) if args.canvas else None
    t0 = time.perf_counter()
    colorizer = Colorizer(model=FAMILY, server=args.server, protocol=args.protocol,
                          model_repository=args.model_repository, max_pixels=args.max_pixels,
                          intra_op_threads=args.threads, via=args.via)
    session = Session(colorizer, drawing, canvas)
    try:
        for text in instructions:
            print(text)
            _step(session, text, args)
        if session.result is not None:
            colorizer.save(session.result, out)
        if args.interactive:
            for text in _lines(sys.stdin):
                if not text:
                    continue
                if text.lower() in QUIT:
                    break
                try:
                    _step(session, text, args)
                except LangcolorError as e:  # one bad line does not end the session
                    print(f"  not applied: {e}")
                    continue
                colorizer.save(session.result, out)
                print(f"  wrote {out}")
    finally:
        colorizer.close()
    if session.result is None:
        raise LangcolorError("no instruction was applied; nothing written")
    where = f"server {args.server} ({colorizer.via})" if args.server else "in-process"
    print(f"wrote {out} after {session.steps} instruction(s) ({where}, {time.perf_counter() - t0:.2f} s)")
    return 0
