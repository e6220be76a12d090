"""``langcolor evaluate``: score one checkpoint or several with their family's own evaluation.

Each family's ``evaluation.evaluate`` defines its figures (caption families: caption following, swap,
mismatch, instance accuracy, PSNR/SSIM beside the caption-free baseline). With several checkpoints of
families that share a scorer, their headline figures are printed side by side (same scenes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from langcolor.client import families


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, action="append", default=None,
                        help="checkpoint or weights file; repeat to compare several on the same scenes; "
                        "unset = every family's shipped export/weights/<family>_small.pt")
    parser.add_argument("--model", choices=families.names(), default=None,
                        help="evaluate this family's shipped weights (instead of --checkpoint)")
    parser.add_argument("--scenes", type=int, default=256, help="scenes (or image pairs) per split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out data stream")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads; unset = torch's choice")


def run(args: argparse.Namespace) -> int:
    from langcolor.client.errors import LangcolorError

    if args.scenes < 1:
        raise LangcolorError("--scenes must be positive")
    if args.model and args.checkpoint:
        raise LangcolorError("give --model or --checkpoint, not both")

    import torch

    from .checkpoint import default_weights_path, load_checkpoint, shipped_weights

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = args.checkpoint or ([default_weights_path(args.model)] if args.model else shipped_weights())
    if not paths:
        raise LangcolorError("no shipped weights found; give --checkpoint")
    docs, reports = [], []
    for path in paths:
        ckpt = load_checkpoint(path)
        report = ckpt.record.evaluation().evaluate(ckpt.build_model(), ckpt.conditioner(), scenes=args.scenes,
                                                  seed=args.seed)
        print(f"{path} ({ckpt.family} {ckpt.config.name}, step {ckpt.step}, sha256 {ckpt.sha256[:12]}), "
              f"{args.scenes} scenes per split")
        for line in report.summary_lines():
            print(line)
        reports.append(report)
        docs.append({"checkpoint": str(path), "family": ckpt.family, "sha256": ckpt.sha256,
                     "config": ckpt.config.name, "step": ckpt.step, **report.to_dict()})
    comparable = len({type(r) for r in reports}) == 1 and hasattr(reports[0], "HEADLINE")
    if len(docs) > 1 and comparable:
        print("comparison (same scenes):")
        for key in reports[0].HEADLINE:
            print(f"  {key:<24}" + "".join(f" {d['family']:>9} {100 * d[key]['model']:5.1f}%" for d in docs))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        out = docs[0] if len(docs) == 1 else {"models": docs}
        args.output.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0
