"""``langcolor export``: checkpoints -> three ONNX stages each, parity-checked -> one Triton model repository.

torch is imported inside ``run()`` only, so ``langcolor --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from langcolor.client.errors import LangcolorError
from langcolor.client.imageio import DEFAULT_MAX_PIXELS
from langcolor.client.paths import default_model_repository

from .triton_config import BACKENDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", type=Path, action="append", default=None,
        help="trained weights (.pt); repeat for several families in one repository (the first is the "
        "colorize endpoint's default); unset = every family's shipped export/weights/<family>_small.pt, "
        "the default family first (the committed model_repository/ holds them all)",
    )
    parser.add_argument(
        "--output", type=Path, default=default_model_repository(), help="model repository to (re)write"
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="python",
        help="python: the langcolor Python-based backend running the ONNX files with onnxruntime (the "
        "tritonserver in nvidia-pytriton); onnxruntime: platform onnxruntime_onnx (NVIDIA's Triton container)",
    )
    parser.add_argument("--gpu", action="store_true", help="KIND_GPU instance groups (onnxruntime backend)")
    parser.add_argument("--tensorrt", action="store_true", help="TensorRT execution accelerator (needs --gpu)")
    parser.add_argument("--fp16", action="store_true", help="TensorRT in FP16 (needs --tensorrt)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="max_batch_size of every model (>= 8)")
    parser.add_argument("--instances", type=int, default=1, help="instances per stage")
    parser.add_argument("--intra-op-threads", type=int, default=None,
                        help="onnxruntime threads per served instance; 0: every core the server may use; "
                        "unset: chosen per family from its measured speed (one thread for a fast network)")
    parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest image the colorize endpoint decodes"
    )


def _target(args: argparse.Namespace):
    from .triton_config import Target

    if args.tensorrt and not args.gpu:
        raise LangcolorError("--tensorrt needs --gpu")
    if args.fp16 and not args.tensorrt:
        raise LangcolorError("--fp16 is TensorRT's precision mode: it needs --tensorrt")
    if args.gpu and args.backend != "onnxruntime":
        raise LangcolorError("--gpu needs --backend onnxruntime (the python backend runs onnxruntime on CPU)")
    if args.max_batch_size < 8:
        raise LangcolorError("--max-batch-size must be at least 8 (the served contract)")
    if args.instances < 1:
        raise LangcolorError("--instances must be at least 1")
    if args.intra_op_threads is not None and args.intra_op_threads < 0:
        raise LangcolorError("--intra-op-threads must be at least 0 (0: every core)")
    preferred = tuple(sorted({max(1, args.max_batch_size // 2), args.max_batch_size}))
    return Target(
        backend=args.backend,
        gpu=args.gpu,
        tensorrt=args.tensorrt,
        fp16=args.fp16,
        max_batch_size=args.max_batch_size,
        preferred_batch_sizes=preferred,
        instance_count=args.instances,
        intra_op_threads=args.intra_op_threads,
    )


def run(args: argparse.Namespace) -> int:
    target = _target(args)

    from .checkpoint import load_checkpoint, shipped_weights
    from .triton_repo import ExportEntry, write_repository

    paths = args.checkpoint or shipped_weights()
    if not paths:
        raise LangcolorError("no shipped weights found in export/weights/; give --checkpoint")
    entries = []
    for path in paths:
        ckpt = load_checkpoint(path)
        print(f"checkpoint {path} ({ckpt.family} {ckpt.config.name}, step {ckpt.step}, sha256 {ckpt.sha256[:12]})")
        entries.append(ExportEntry.from_checkpoint(ckpt, checkpoint=Path(path).name))
    repos = write_repository(entries, args.output, target=target, max_pixels=args.max_pixels)
    accel = f"{', GPU' if target.gpu else ''}{', TensorRT' if target.tensorrt else ''}{' FP16' if target.fp16 else ''}"
    print(f"model repository {repos[0].root} ({target.backend} backend{accel}): "
          f"{', '.join(r.manifest.geometry.family for r in repos)}; colorize defaults to {repos[0].manifest.geometry.family}")
    for repo in repos:
        g = repo.manifest.geometry
        inputs = ", ".join(f"{t.name} {list(t.dims)}" for t in (g.image, *g.request_inputs))
        print(f"{g.family}: {inputs} -> {', '.join(t.name for t in g.request_outputs)}; parity against PyTorch "
              "(onnxruntime CPU, FP32):")
        for line in repo.parity.summary_lines():
            print("  " + line)
    return 0
