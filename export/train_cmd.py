"""``langcolor train``: train any registered family, resumably.

The common flags are declared here; each family's own knobs (its ``training_options`` dataclass)
become flags too, generated from the dataclass fields, shown per family in ``--help``. A flag shared by
several families (``--object-weight``) is one flag. A flag the chosen family does not have is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from langcolor.client import families
from langcolor.client.families import DEFAULT_FAMILY


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_type(f: dataclasses.Field, owner: type):
    hint = typing.get_type_hints(owner)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = families.names()
    parser.add_argument("--family", default=DEFAULT_FAMILY, choices=names,
                        help="; ".join(f"{n}: {families.get(n).summary}" for n in names))
    parser.add_argument("--config", default="small",
                        help="network size: " + "; ".join(f"{n}: {', '.join(families.get(n).configs)}" for n in names))
    parser.add_argument("--steps", type=int, default=2400, help="optimisation steps in all (the decay spans them)")
    parser.add_argument("--out", type=Path, required=True, help="folder for checkpoint.pt (resumable) and weights.pt")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights, the data and the vocabulary")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate at step 0")
    parser.add_argument("--checkpoint-every", type=int, default=200, help="steps between resumable checkpoints")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out and start over")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads; unset = torch's choice")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    seen: set[str] = set()
    for name in names:
        options = families.get(name).training_options
        if options is None:
            continue
        group = parser.add_argument_group(f"{name} options")
        for f in dataclasses.fields(options):
            if f.name in seen:
                continue
            seen.add(f.name)
            users = [n for n in names if families.get(n).training_options is not None
                     and f.name in {g.name for g in dataclasses.fields(families.get(n).training_options)}]
            defaults = ", ".join(f"{n} {_default(n, f.name)}" for n in users)
            group.add_argument(_flag(f.name), dest=f"family__{f.name}", type=_field_type(f, options), default=None,
                               help=f"{f.metadata.get('help', '')} (default: {defaults})")


def _default(family: str, field: str):
    return getattr(families.get(family).training_options(), field)


def family_options(args: argparse.Namespace):
    """The chosen family's ``training_options`` from the flags given; refuses another family's flag."""
    from langcolor.client.errors import LangcolorError

    record = families.get(args.family)
    given = {k.removeprefix("family__"): v for k, v in vars(args).items() if k.startswith("family__") and v is not None}
    cls = record.training_options
    own = {f.name for f in dataclasses.fields(cls)} if cls is not None else set()
    foreign = sorted(set(given) - own)
    if foreign:
        raise LangcolorError(f"{', '.join(_flag(n) for n in foreign)}: not an option of family '{record.name}'")
    return cls(**given) if cls is not None else None


def run(args: argparse.Namespace) -> int:
    from langcolor.client.errors import LangcolorError

    if args.steps < 1 or args.batch_size < 1 or args.checkpoint_every < 1:
        raise LangcolorError("--steps, --batch-size and --checkpoint-every must be positive")
    families.get(args.family).config(args.config)  # a clear error before torch is imported
    options = family_options(args)

    import torch

    from .train import TrainOptions, train

    if args.threads:
        torch.set_num_threads(args.threads)
    result = train(
        TrainOptions(config=args.config, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                     checkpoint_every=args.checkpoint_every, family=args.family, family_options=options),
        args.out, resume=not args.fresh, progress=not args.no_progress,
    )
    print(f"trained {result.steps} steps in {result.seconds:.0f} s, final loss {result.loss:.4f}")
    print(f"weights: {result.weights} (sha256 {result.sha256[:16]})")
    return 0
