"""Write a complete Triton model repository for one family or several, in one pass.

Layout, per family ``<f>``::

    <f>_encoder/config.pbtxt, 1/model.onnx      (and <f>_fusion, <f>_decoder)
    <f>/config.pbtxt                            image + conditions -> outputs: on the python target a
                                                one-step ensemble over <f>_impl, which runs the three
                                                stage files in one Python model (a driven family: its
                                                driver); on the onnxruntime target the stages' ensemble
    <f>/1/langcolor.json                        ModelManifest (geometry, weights hash, assets' hashes)
    <f>/1/<asset>                               the conditioner's files (a caption family's tokenizer.json)
    <f>/1/parity.json                           the export's parity figures (Triton ignores the file)
    colorize_impl/config.pbtxt                  the bytes endpoint's Python model (BLS over every family)
    colorize/config.pbtxt, 1/families.json      the bytes endpoint: a one-step ensemble over colorize_impl

The Python models (the stages on the python target, and ``colorize``) name the ``langcolor``
Python-based backend, which ``langcolor serve`` (or the GPU container) installs in Triton's backend
directory: no copy of a ``model.py`` sits in the repository. The first family given is the endpoint's
default. Everything is written to a temporary folder beside the destination, parity-checked, and only
then swapped in, so a failed export never leaves half a repository where the old one was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from torch import nn

from langcolor.client import families, names
from langcolor.client.errors import LangcolorError
from langcolor.client.imageio import DEFAULT_MAX_PIXELS
from langcolor.client.provenance import git_revision
from langcolor.client.runtime import session_options
from langcolor.client.spec import MANIFEST_FILE, STAGES, TOKENS_KIND, ModelGeometry, ModelManifest, stage_specs

from .checkpoint import Checkpoint
from .onnx_export import OPSET, export_stages, sample_input, token_ids
from .parity import ParityReport, validate_export
from .triton_config import (
    CONFIG_FILE,
    ONNX_FILE,
    Target,
    chain_config,
    colorize_config,
    ensemble_config,
    front,
    pipeline_config,
    serving_threads,
    stage_config,
    to_text,
)

log = logging.getLogger(__name__)

PARITY_FILE = "parity.json"  # in <family>/1/: a plain file in a version folder, which Triton ignores
FAMILIES_FILE = "families.json"  # in colorize/1/: what the endpoint serves (Triton ignores the file)
VERSION_NOTE = "README.md"  # a Python model's version folder holds no file Triton loads; git keeps it by this one
IMPL_NOTE = ("The langcolor Triton backend serves this model (see ../config.pbtxt, parameter `role`);\n"
             "its code is the installed langcolor package, not a file in this folder.\n")
VERSION = "1"


@dataclass(frozen=True)
class ExportEntry:
    """One family's trained (or random) network and what travels with it."""

    model: nn.Module  # .encoder, .fusion, .decoder, .geometry, .cfg
    assets: dict[str, str]  # the conditioner's files, by name
    weights_sha256: str
    extra: dict = field(default_factory=dict)  # provenance for the manifest (checkpoint, step, weights)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, **extra) -> "ExportEntry":
        return cls(ckpt.build_model(), ckpt.assets, ckpt.sha256, {"step": ckpt.step, **extra})


@dataclass(frozen=True)
class ExportedRepository:
    root: Path
    manifest: ModelManifest
    target: Target
    parity: ParityReport


def _looks_like_repository(path: Path) -> bool:
    """Only a folder of model folders (each with a config.pbtxt) may be replaced wholesale."""
    return all(e.is_dir() and (e / CONFIG_FILE).is_file() for e in path.iterdir())


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


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)


def _write_family(tmp: Path, entry: ExportEntry, target: Target) -> ExportedRepository:
    """Export, parity-check and write one family's stages, ensemble and version folder into ``tmp``."""
    model, geom = entry.model, entry.model.geometry
    record = families.get(geom.family)
    blobs = {name: text.encode("utf-8") for name, text in entry.assets.items()}
    record.conditioner(geom, blobs)  # the assets must build the conditioner the client will build
    specs = stage_specs(geom)
    modules = {stage: getattr(model, stage) for stage in STAGES}
    onnx_paths = {s: tmp / specs[s].model_name / VERSION / ONNX_FILE for s in STAGES}
    export_stages(modules, specs, onnx_paths)
    parity = validate_export(modules, specs, onnx_paths, geom, driver=record.driver)
    assets = {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()}
    serving = {}
    if target.intra_op_threads is None and not target.gpu:  # chosen from this model's measured speed
        chain_ms = None if record.driver is not None else chain_ms_one_thread(onnx_paths, specs, geom)
        target = replace(target, intra_op_threads=1 if chain_ms is None else serving_threads(chain_ms))
        serving = {"chain_ms_one_thread": chain_ms, "intra_op_threads": target.intra_op_threads}
    manifest = ModelManifest(
        geometry=geom, weights_sha256=entry.weights_sha256, assets=assets, config=model.cfg.name,
        extra={"git_revision": git_revision(), "onnx_opset": OPSET, "backend": target.backend,
               **({"serving": serving} if serving else {}), **entry.extra},
    )
    write_serving_configs(tmp, geom, target, assets, entry.weights_sha256)
    family_dir = tmp / geom.family
    _write(family_dir / VERSION / MANIFEST_FILE, manifest.to_json() + "\n")
    for name, data in blobs.items():
        _write(family_dir / VERSION / name, data)
    parity.save(family_dir / VERSION / PARITY_FILE)
    return ExportedRepository(tmp, manifest, target, parity)


def chain_ms_one_thread(onnx_paths: dict[str, Path], specs, geom: ModelGeometry, runs: int = 3) -> float:
    """The median time of the three stage files run one after the other at batch 1 on one
    onnxruntime thread (after a warm-up run): what ``serving_threads`` chooses from."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    feeds = {geom.image.name: sample_input(geom.image, 1, rng)}
    for c in geom.condition_specs:
        feeds[c.name] = token_ids([c.dims[0]], c, rng) if c.kind == TOKENS_KIND else sample_input(c, 1, rng)
    sessions = {s: ort.InferenceSession(str(onnx_paths[s]), session_options(1), providers=["CPUExecutionProvider"])
                for s in STAGES}

    def chain() -> None:
        tensors = dict(feeds)
        for stage in STAGES:
            spec = specs[stage]
            tensors.update(zip(spec.output_names, sessions[stage].run(spec.output_names,
                                                                      {t.name: tensors[t.name] for t in spec.inputs})))

    chain()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        chain()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def write_serving_configs(root: Path, geom: ModelGeometry, target: Target, assets: dict[str, str],
                          weights_sha256: str) -> None:
    """The serving configs of one family under ``root`` for ``target``: its stage models, its public
    model, and the Python model behind that (a driven family's loop, or the fused chain on the python
    target; a stale ``<family>_impl`` is removed when the target has none)."""
    record = families.get(geom.family)
    specs = stage_specs(geom)
    for stage in STAGES:
        _write(root / specs[stage].model_name / CONFIG_FILE, to_text(stage_config(specs[stage], target)))
    impl_dir = root / (geom.family + names.IMPL_SUFFIX)
    if record.driver is not None:  # the driver's Python model, behind a one-step ensemble named like the family
        impl = pipeline_config(geom, target, assets, weights_sha256)
    elif target.fuses:  # the three stage files in one Python model, behind a one-step ensemble
        impl = chain_config(geom, target, assets, weights_sha256)
    else:
        shutil.rmtree(impl_dir, ignore_errors=True)
        _write(root / geom.family / CONFIG_FILE, to_text(ensemble_config(geom, target, assets, weights_sha256)))
        return
    _write(impl_dir / CONFIG_FILE, to_text(impl))
    _write(impl_dir / VERSION / VERSION_NOTE, IMPL_NOTE)
    _write(root / geom.family / CONFIG_FILE, to_text(front(impl, geom.family)))


def write_repository(
    entries: list[ExportEntry], out_dir: Path, target: Target = Target(), max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[ExportedRepository]:
    """Export every entry (one per family; the first is the endpoint's default) into ``out_dir``."""
    served = [e.model.geometry.family for e in entries]
    if not entries or len(set(served)) != len(served):
        raise LangcolorError(f"one network per family: got {', '.join(served) or 'none'}")
    out_dir = Path(out_dir).resolve()
    _check_replaceable(out_dir)  # before minutes of work, and again just before the swap
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        results = [_write_family(tmp, entry, target) for entry in entries]
        fields = families.all_inputs(tuple(served))
        weights = {r.manifest.geometry.family: r.manifest.weights_sha256 for r in results}
        impl = colorize_config(served[0], tuple(served), fields, weights, target, max_pixels)
        _write(tmp / impl.name / CONFIG_FILE, to_text(impl))
        _write(tmp / impl.name / VERSION / VERSION_NOTE, IMPL_NOTE)
        _write(tmp / names.COLORIZE_MODEL / CONFIG_FILE, to_text(front(impl, names.COLORIZE_MODEL)))
        _write(tmp / names.COLORIZE_MODEL / VERSION / FAMILIES_FILE,
               json.dumps({"default": served[0], "families": served}) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the repository is meant to be read by a server
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote model repository %s (%s backend): %s", out_dir, target.backend, ", ".join(served))
    return [ExportedRepository(out_dir, r.manifest, r.target, r.parity) for r in results]


def build_tiny_repository(out_dir: Path, backend: str = "python", seed: int = 0,
                          family: str = families.DEFAULT_FAMILY) -> Path:
    """A random-weight ``tiny`` network of ``family``, exported for tests.

    The colours it produces mean nothing; the files, names, shapes and hashes are those of a real
    export, so servers and clients can be tested in seconds."""
    ckpt = Checkpoint.random(family, "tiny", seed)
    entry = ExportEntry.from_checkpoint(ckpt, config="tiny", weights=f"random, seed {seed}")
    write_repository([entry], Path(out_dir), target=Target(backend=backend))
    return Path(out_dir).resolve()
