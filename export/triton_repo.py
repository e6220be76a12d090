"""Write a complete Triton model repository from a network, its tokenizer and its weights hash.

Layout (``<family>`` = ``lcode``)::

    <family>_encoder/config.pbtxt, 1/model.onnx (+ 1/model.py for the python target)
    <family>_fusion/...   <family>_decoder/...
    <family>/config.pbtxt                       the ensemble L, TOKENS -> AB
    <family>/1/langcolor.json                   ModelManifest (geometry, tokenizer and weights hashes)
    <family>/1/tokenizer.json                   the exact tokenizer the weights were trained with
    <family>/1/parity.json                      the export's parity figures (Triton ignores the file)
    colorize/config.pbtxt, 1/model.py           the bytes endpoint (BLS over the ensemble)

Everything is written to a temporary folder beside the destination, parity-checked, and only then
swapped in, so a failed export never leaves half a repository where the old one was.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from langcolor.client.errors import LangcolorError
from langcolor.client.imageio import DEFAULT_MAX_PIXELS
from langcolor.client.spec import MANIFEST_FILE, STAGES, TOKENIZER_FILE, ModelGeometry, ModelManifest, stage_specs
from langcolor.client.tokenizer import CaptionTokenizer

from .onnx_export import OPSET, export_stages
from .parity import ParityReport, validate_export
from .triton_config import (
    COLORIZE_MODEL,
    CONFIG_FILE,
    ONNX_FILE,
    PYTHON_MODEL_FILE,
    Target,
    colorize_config,
    ensemble_config,
    stage_config,
)

log = logging.getLogger(__name__)

PARITY_FILE = "parity.json"  # in <family>/1/: a plain file in a version folder, which Triton ignores
VERSION = "1"
_MODELS_DIR = Path(__file__).parent / "triton_models"
STAGE_MODEL_SOURCE = _MODELS_DIR / "stage_model.py"
COLORIZE_MODEL_SOURCE = _MODELS_DIR / "colorize_model.py"

# A few captions for the random-weight test repository (words the synthetic scenes use).
TINY_CAPTIONS = (
    "a red circle on a blue background",
    "the green square and a yellow triangle",
    "an orange triangle beside a pink circle",
    "a purple square on a gray background",
    "a brown circle, a blue square and a green triangle",
)


@dataclass(frozen=True)
class ExportedRepository:
    root: Path
    manifest: ModelManifest
    target: Target
    parity: ParityReport


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _looks_like_repository(path: Path) -> bool:
    """Only a folder of model folders (each with a config.pbtxt) may be replaced wholesale."""
    entries = list(path.iterdir())
    return all(e.is_dir() and (e / CONFIG_FILE).is_file() for e in entries)


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or not _looks_like_repository(out_dir)):
        raise LangcolorError(f"{out_dir} exists and is not a model repository; refusing to replace it")


def _swap_in(tmp: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        _check_replaceable(out_dir)
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_repository(
    modules: dict[str, nn.Module],
    geom: ModelGeometry,
    tokenizer: CaptionTokenizer,
    weights_sha256: str,
    out_dir: Path,
    target: Target = Target(),
    extra: dict | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ExportedRepository:
    """Export, parity-check and write the repository for ``modules`` (keys: encoder, fusion, decoder)."""
    if tokenizer.vocab_size != geom.vocab_size or tokenizer.max_tokens != geom.max_tokens:
        raise LangcolorError(
            f"tokenizer (vocab {tokenizer.vocab_size}, T={tokenizer.max_tokens}) does not fit the network "
            f"(vocab {geom.vocab_size}, T={geom.max_tokens})"
        )
    out_dir = Path(out_dir).resolve()
    _check_replaceable(out_dir)  # before minutes of work, and again just before the swap
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        specs = stage_specs(geom)
        onnx_paths = {s: tmp / specs[s].model_name / VERSION / ONNX_FILE for s in STAGES}
        export_stages(modules, specs, geom, onnx_paths)
        parity = validate_export(modules, specs, onnx_paths, geom)

        for stage in STAGES:
            spec = specs[stage]
            _write(tmp / spec.model_name / CONFIG_FILE, stage_config(spec, geom, target))
            if target.backend == "python":
                shutil.copyfile(STAGE_MODEL_SOURCE, tmp / spec.model_name / VERSION / PYTHON_MODEL_FILE)

        manifest = ModelManifest(
            geometry=geom,
            tokenizer_sha256=tokenizer.sha256,
            weights_sha256=weights_sha256,
            extra={"git_revision": _git_revision(), "onnx_opset": OPSET, "backend": target.backend, **(extra or {})},
        )
        family_dir = tmp / geom.family
        _write(family_dir / CONFIG_FILE, ensemble_config(geom, target, tokenizer.sha256, weights_sha256))
        _write(family_dir / VERSION / MANIFEST_FILE, manifest.to_json() + "\n")
        tokenizer.save(family_dir / VERSION / TOKENIZER_FILE)
        parity.save(family_dir / VERSION / PARITY_FILE)

        colorize_dir = tmp / COLORIZE_MODEL
        _write(colorize_dir / CONFIG_FILE, colorize_config(geom, target, max_pixels))
        (colorize_dir / VERSION).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(COLORIZE_MODEL_SOURCE, colorize_dir / VERSION / PYTHON_MODEL_FILE)

        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the repository is meant to be read by a server
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote model repository %s (%s backend)", out_dir, target.backend)
    return ExportedRepository(out_dir, manifest, target, parity)


def write_model_repository(model: nn.Module, tokenizer: CaptionTokenizer, weights_sha256: str, out_dir: Path, **kw):
    """Same as ``write_repository`` for a whole network with ``.encoder``, ``.fusion``, ``.decoder``, ``.geometry``."""
    modules = {stage: getattr(model, stage) for stage in STAGES}
    return write_repository(modules, model.geometry, tokenizer, weights_sha256, out_dir, **kw)


def build_tiny_repository(out_dir: Path, backend: str = "python", seed: int = 0) -> Path:
    """A random-weight ``tiny`` network with a tokenizer from a few captions, exported for tests.

    The colours it produces mean nothing; the files, names, shapes and hashes are those of a real
    export, so servers and clients can be tested in seconds.
    """
    from .checkpoint import content_hash
    from .config import CONFIGS
    from .lcode import LCoDe

    cfg = CONFIGS["tiny"]
    tokenizer = CaptionTokenizer.train(TINY_CAPTIONS, cfg.max_tokens)
    torch.manual_seed(seed)
    model = LCoDe(cfg, tokenizer.vocab_size).eval()
    weights_sha256 = content_hash(cfg, tokenizer.to_str(), model.state_dict())
    repo = write_model_repository(
        model, tokenizer, weights_sha256, Path(out_dir), target=Target(backend=backend),
        extra={"config": cfg.name, "weights": f"random, seed {seed}"},
    )
    return repo.root
