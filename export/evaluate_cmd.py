"""``langcolor evaluate``: caption following, swap, mismatch, PSNR/SSIM beside the caption-free baseline."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint or weights file; unset = the shipped export/weights/lcode_small.pt")
    parser.add_argument("--scenes", type=int, default=256, help="scenes per split (test and held-out pairs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out scene stream")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads; unset = torch's choice")


def _row(name: str, score, percent: bool = True) -> str:
    fmt = (lambda v: f"{100 * v:6.1f}%") if percent else (lambda v: f"{v:7.3f}")
    return f"  {name:<22} {fmt(score.model)}   baseline {fmt(score.baseline)}   (n={score.count})"


def run(args: argparse.Namespace) -> int:
    import torch

    from langcolor.client.errors import LangcolorError

    from .checkpoint import default_weights_path, load_checkpoint
    from .evaluate import evaluate

    if args.scenes < 1:
        raise LangcolorError("--scenes must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.checkpoint or default_weights_path()
    ckpt = load_checkpoint(path)
    report = evaluate(ckpt.build_model(), ckpt.tokenizer, scenes=args.scenes, seed=args.seed)
    print(f"{path} (config {ckpt.config.name}, step {ckpt.step}, sha256 {ckpt.sha256[:12]}), {args.scenes} scenes per split")
    print(_row("caption following seen", report.seen))
    print(_row("caption following held", report.heldout))
    for pair, score in report.heldout_pairs.items():
        print(_row(f"  held: {pair}", score))
    print(_row("background following", report.background))
    print(_row("swap test", report.swap))
    print(_row("mismatch (lower=better)", report.mismatch))
    print(_row("PSNR dB", report.psnr, percent=False))
    print(_row("SSIM", report.ssim, percent=False))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        doc = {"checkpoint": str(path), "sha256": ckpt.sha256, "config": ckpt.config.name, "step": ckpt.step,
               **report.to_dict()}
        import json

        args.output.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0
