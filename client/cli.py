"""The ``langcolor`` console command: one entry point, one subcommand per workflow.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
Only the chosen subcommand's module is imported, so ``langcolor colorize`` never imports torch.
Errors derived from ``LangcolorError`` are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import LangcolorError

class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is None/False or the help text already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


# A missing optional dependency -> the extra that installs it (pyproject.toml's optional-dependencies).
EXTRAS = {"torch": "train", "onnx": "train", "pytriton": "serve", "matplotlib": "bench", "psutil": "bench"}

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("langcolor.export.train_cmd", "train a network on synthetic scenes or COCO-Stuff-style data"),
    "evaluate": ("langcolor.export.evaluate_cmd", "measure caption following, swap, mismatch, PSNR/SSIM"),
    "export": ("langcolor.export.export_cmd", "export the three ONNX stages and write a Triton model repository"),
    "serve": ("langcolor.server.serve", "start tritonserver on the model repository"),
    "colorize": ("langcolor.client.colorize_cmd", "colorize one photo (in-process, or through a server)"),
    "models": ("langcolor.client.models_cmd", "list the model families, their inputs and the words they know"),
    "batch": ("langcolor.client.batch_cmd", "colorize a folder or manifest of photos, resumably"),
    "bench": ("langcolor.benchmarks.bench", "latency and throughput per stage and end to end"),
}


def commands() -> dict[str, tuple[str, str]]:
    """The built-in subcommands and those a family brings (``Family.commands``)."""
    from . import families

    out = dict(COMMANDS)
    for name in families.names():
        for command, module in families.get(name).commands.items():
            out.setdefault(command, (module, f"{families.get(name).summary} ({name})"))
    return out


def build_parser(selected: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="langcolor",
        description="Colorize black-and-white photographs: from a caption, a reference photo, or automatically.",
        formatter_class=_DefaultsFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, summary) in commands().items():
        p = sub.add_parser(name, help=summary, description=summary, formatter_class=_DefaultsFormatter)
        if name == selected:
            importlib.import_module(module).add_arguments(p)
    return parser


def _selected(argv: list[str]) -> str | None:
    known = commands()
    return next((a for a in argv if a in known), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    selected = _selected(argv)
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        module = importlib.import_module(commands()[args.command][0])
        return int(module.run(args) or 0)
    except LangcolorError as e:
        print(f"langcolor {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        extra = EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"langcolor {args.command}: error: this command needs {e.name}, which is not installed; "
              f"install it with: pip install 'langcolor[{extra}]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"langcolor {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
