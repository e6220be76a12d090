"""``langcolor evaluate``: caption following, swap, mismatch, instance accuracy, PSNR/SSIM beside the
caption-free baseline, for one checkpoint or several (each family scored on the same scenes)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, action="append", default=None,
                        help="checkpoint or weights file; repeat to compare several on the same scenes; "
                        "unset = the shipped export/weights/lcode_small.pt and lcoins_small.pt (those present)")
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
    paths = args.checkpoint
    if not paths:
        shipped = [default_weights_path("small", family) for family in ("lcode", "lcoins")]
        paths = [p for p in shipped if p.is_file()] or shipped[:1]
    docs = []
    for path in paths:
        docs.append(_evaluate_one(path, args, load_checkpoint, evaluate))
    if len(docs) > 1:
        print("comparison (same scenes):")
        for key in ("seen", "heldout", "swap", "instance", "instance_scenes", "instance_contradicting"):
            print(f"  {key:<24}" + "".join(f" {d['family']:>7} {100 * d[key]['model']:5.1f}%" for d in docs))
    if args.output:
        import json

        args.output.parent.mkdir(parents=True, exist_ok=True)
        out = docs[0] if len(docs) == 1 else {"models": docs}
        args.output.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


def _evaluate_one(path: Path, args: argparse.Namespace, load_checkpoint, evaluate) -> dict:
    ckpt = load_checkpoint(path)
    report = evaluate(ckpt.build_model(), ckpt.tokenizer, scenes=args.scenes, seed=args.seed)
    print(f"{path} ({ckpt.family} {ckpt.config.name}, step {ckpt.step}, sha256 {ckpt.sha256[:12]}), "
          f"{args.scenes} scenes per split")
    print(_row("caption following seen", report.seen))
    print(_row("caption following held", report.heldout))
    for pair, score in report.heldout_pairs.items():
        print(_row(f"  held: {pair}", score))
    print(_row("background following", report.background))
    print(_row("swap test", report.swap))
    print(_row("mismatch (lower=better)", report.mismatch))
    print(_row("PSNR dB", report.psnr, percent=False))
    print(_row("SSIM", report.ssim, percent=False))
    print(_row("instance accuracy", report.instance))
    print(_row("  both instances right", report.instance_scenes))
    print(_row("  usual gray levels", report.instance_natural))
    print(_row("  contradicting gray", report.instance_contradicting))
    for kind, score in report.instance_by_kind.items():
        print(_row(f"  by {kind}", score))
    print(_row("instance swap test", report.instance_swap))
    if report.unknown_words:
        shown = ", ".join(f"{w} ({n})" for w, n in list(report.unknown_words.items())[:10])
        print(f"  words unknown to the tokenizer (captions): {shown}")
    return {"checkpoint": str(path), "family": ckpt.family, "sha256": ckpt.sha256, "config": ckpt.config.name,
            "step": ckpt.step, **report.to_dict()}
