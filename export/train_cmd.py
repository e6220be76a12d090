"""``langcolor train``: train an L-CoDe or L-CoIns network on synthetic scenes, resumably."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .config import CONFIGS, FAMILIES  # no torch: keeps `langcolor train --help` fast

    parser.add_argument("--family", default="lcode", choices=list(FAMILIES),
                        help="lcode: L-CoDe (CNN + Bi-LSTM); lcoins: L-CoIns (ViT + grouping transformer)")
    parser.add_argument("--config", default="small", choices=list(CONFIGS),
                        help="network size: small (shipped), full (paper), tiny (tests)")
    parser.add_argument("--steps", type=int, default=2400, help="optimisation steps in all (cosine decay spans them)")
    parser.add_argument("--out", type=Path, required=True, help="folder for checkpoint.pt (resumable) and weights.pt")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights, the scenes and the vocabulary")
    parser.add_argument("--batch-size", type=int, default=32, help="scenes per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate at step 0")
    parser.add_argument("--object-weight", type=float, default=4.0, help="ab-loss weight of object pixels vs background")
    parser.add_argument("--checkpoint-every", type=int, default=200, help="steps between resumable checkpoints")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out and start over")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads; unset = torch's choice")
    parser.add_argument("--coco-images", type=Path, default=None, help="image folder of COCO-Stuff-style data")
    parser.add_argument("--coco-captions", type=Path, default=None, help="COCO captions JSON (with --coco-images)")
    parser.add_argument("--instance-rate", type=float, default=0.5, help="lcoins: share of instance scenes per batch")
    parser.add_argument("--augment-rate", type=float, default=0.5, help="lcoins: share of samples with luminance augmentation")
    parser.add_argument("--counter-weight", type=float, default=-1e-4,
                        help="lcoins: beta of the counter-colour loss (paper: -1e-4; 0 = off)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")


def run(args: argparse.Namespace) -> int:
    import torch

    from langcolor.client.errors import LangcolorError

    from .train import TrainOptions, train

    if args.steps < 1 or args.batch_size < 1 or args.checkpoint_every < 1:
        raise LangcolorError("--steps, --batch-size and --checkpoint-every must be positive")
    if (args.coco_images is None) != (args.coco_captions is None):
        raise LangcolorError("--coco-images and --coco-captions go together")
    if args.threads:
        torch.set_num_threads(args.threads)
    options = TrainOptions(
        config=args.config,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        object_weight=args.object_weight,
        checkpoint_every=args.checkpoint_every,
        coco_images=str(args.coco_images) if args.coco_images else None,
        coco_captions=str(args.coco_captions) if args.coco_captions else None,
        family=args.family,
        instance_rate=args.instance_rate,
        augment_rate=args.augment_rate,
        counter_weight=args.counter_weight,
    )
    result = train(options, args.out, resume=not args.fresh, progress=not args.no_progress)
    print(f"trained {result.steps} steps in {result.seconds:.0f} s, final loss {result.loss:.4f}")
    print(f"weights: {result.weights} (sha256 {result.sha256[:16]})")
    return 0
