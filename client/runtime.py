"""A family's three ONNX stages, run in-process with onnxruntime.

``ModelBundle`` reads what ``langcolor export`` wrote into the model repository (manifest, the
conditioner's asset files, stage files), checks that they belong together and builds the family's
conditioner. ``OnnxStages`` holds one InferenceSession per stage; its tensor names come from
``stage_specs(manifest.geometry)`` and are checked against each session's own signature at load,
and every input is validated against its spec (shape, dtype, finite values, declared range) before
it runs. ``OnnxStages`` and ``RemoteStages`` share the ``Stages`` protocol.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol

import numpy as np
import onnxruntime as ort

from . import families, names
from .errors import LangcolorError, ModelNotFoundError, TensorError
from .families import Conditioner, Family
from .paths import resolve_model_repository
from .spec import MANIFEST_FILE, STAGES, ModelGeometry, ModelManifest, StageSpec, ensemble_spec, stage_specs

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
VERSION = "1"  # Triton model version directory
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32"}
# device -> onnxruntime providers, best first; CPU is always the last resort for unsupported ops
_PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}


class Stages(Protocol):
    """What runs a family's network: in-process (``OnnxStages``) or on a server (``RemoteStages``)."""

    geometry: ModelGeometry

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def stage_path(repository: Path, family: str, stage: str) -> Path:
    return repository / f"{family}_{stage}" / VERSION / MODEL_FILE


def read_assets(folder: Path, manifest: ModelManifest) -> dict[str, bytes]:
    """The conditioner's files named in the manifest, each checked against its sha256."""
    assets = {}
    for name, want in manifest.assets.items():
        path = folder / name
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelNotFoundError(f"{path}: cannot read the model's {name} ({e.strerror or e})") from e
        digest = hashlib.sha256(data).hexdigest()
        if digest != want:
            raise ModelNotFoundError(
                f"{path}: sha256 {digest[:12]}... differs from the manifest's {want[:12]}...; "
                f"the {name} is not the one this model was trained with (re-run `langcolor export`)"
            )
        assets[name] = data
    return assets


@dataclass(frozen=True)
class ModelBundle:
    repository: Path
    manifest: ModelManifest
    family: Family
    conditioner: Conditioner
    stage_paths: dict[str, Path]  # stage -> model.onnx; empty when loaded for a remote server

    @property
    def geometry(self) -> ModelGeometry:
        return self.manifest.geometry

    @property
    def specs(self) -> dict[str, StageSpec]:
        return stage_specs(self.manifest.geometry)

    @property
    def tokenizer(self):
        """A caption family's tokenizer (its conditioner's); AttributeError for other families."""
        return self.conditioner.tokenizer

    @classmethod
    def load(cls, model_repository: str | Path | None = None, family: str = families.DEFAULT_FAMILY, *,
             stages: bool = True) -> "ModelBundle":
        """Read ``<family>/1/langcolor.json`` and its assets (and the stage files unless ``stages=False``)."""
        repo = resolve_model_repository(model_repository)
        record = families.get(family)
        ensemble = repo / family / VERSION
        manifest_path = ensemble / MANIFEST_FILE
        if not manifest_path.is_file():
            known = sorted(p.parent.parent.name for p in repo.glob(f"*/{VERSION}/{MANIFEST_FILE}"))
            raise ModelNotFoundError(
                f"model '{family}' not found in {repo}: no {manifest_path.relative_to(repo)}"
                + (f" (models here: {', '.join(known)})" if known else " (no exported model here; run `langcolor export`)")
            )
        try:
            manifest = ModelManifest.load(manifest_path)
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
            raise ModelNotFoundError(f"{manifest_path}: unreadable manifest ({e})") from e
        if manifest.geometry.family != family:
            raise ModelNotFoundError(f"{manifest_path}: describes family '{manifest.geometry.family}', not '{family}'")
        try:
            conditioner = record.conditioner(manifest.geometry, read_assets(ensemble, manifest))
        except ModelNotFoundError as e:
            raise ModelNotFoundError(f"{ensemble}: {e}") from e
        paths = {}
        if stages:
            for stage in STAGES:
                path = stage_path(repo, family, stage)
                if not path.is_file():
                    raise ModelNotFoundError(f"stage '{stage}' of '{family}' is missing: {path} does not exist")
                paths[stage] = path
        return cls(repo, manifest, record, conditioner, paths)


def check_inputs(feeds: Mapping[str, np.ndarray], geom: ModelGeometry) -> None:
    """Shape, dtype and VALUE checks of a family's ensemble inputs; ``TensorError`` names the tensor.

    Specs catch shape and dtype; values matter too: NaN/inf or L outside [0, 100] give garbage colours
    silently, and a token id outside the vocabulary crashes the embedding lookup."""
    spec = ensemble_spec(geom)
    missing = [n for n in spec.input_names if n not in feeds]
    if missing:
        raise TensorError(f"model '{geom.family}' needs {', '.join(missing)} (it takes {', '.join(spec.input_names)})")
    extra = sorted(set(feeds) - set(spec.input_names))
    if extra:
        raise TensorError(f"model '{geom.family}' does not take {', '.join(extra)} (it takes {', '.join(spec.input_names)})")
    batch = None
    for t in spec.inputs:
        array = feeds[t.name]
        t.validate(array)
        if array.shape[0] == 0:
            raise TensorError(f"{t.name}: empty batch")
        if batch is not None and array.shape[0] != batch[1]:
            raise TensorError(f"{t.name}: batch {array.shape[0]} differs from {batch[0]}'s {batch[1]}")
        batch = batch or (t.name, array.shape[0])
        t.validate_values(array)


def session_options(intra_op_threads: int | None = None) -> ort.SessionOptions:
    """The project's onnxruntime options, shared by the in-process stages and the served ones."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Three sessions share the cores: spinning workers steal them from each other (2.5x slower
    # end to end on 2 cores when left on).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.inter_op_num_threads = 1
    if intra_op_threads:
        opts.intra_op_num_threads = int(intra_op_threads)
    return opts


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_threads(value: str | int | None, cores: int | None = None) -> int:
    """A served model's ``intra_op_threads`` parameter as a thread count: unset is 1,
    ``names.THREADS_ALL_CORES`` every core this process may use (``cores``, counted if not given)."""
    n = int(value) if value not in (None, "") else 1
    if n < 0:
        raise LangcolorError(f"{names.PARAM_INTRA_OP_THREADS} must be >= 0, got {n}")
    return (cores or usable_cores()) if n == names.THREADS_ALL_CORES else n


def providers_for(device: str) -> list[str]:
    if device not in _PROVIDERS:
        raise LangcolorError(f"unknown device {device!r}; use one of {sorted(_PROVIDERS)}")
    wanted = _PROVIDERS[device]
    available = set(ort.get_available_providers())
    if wanted[0] not in available:
        raise LangcolorError(f"device {device!r} needs {wanted[0]}, which this onnxruntime lacks (has {sorted(available)})")
    return [p for p in wanted if p in available]


def open_session(path: Path, spec: StageSpec, opts: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    """An onnxruntime session for one stage file, its signature checked against the stage's spec."""
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
        raise ModelNotFoundError(f"{spec.model_name}: cannot load {path}: {e}") from e
    found = {i.name: i for i in session.get_inputs()}
    for t in spec.inputs:
        if t.name not in found:
            raise ModelNotFoundError(f"{spec.model_name}: {path} has no input tensor '{t.name}' (it has {sorted(found)})")
        got = _ORT_TYPES.get(found[t.name].type, found[t.name].type)
        if got != t.dtype:
            raise ModelNotFoundError(f"{spec.model_name}: input tensor '{t.name}' is {got}, expected {t.dtype}")
    if len(found) != len(spec.inputs):
        extra = sorted(set(found) - set(spec.input_names))
        raise ModelNotFoundError(f"{spec.model_name}: {path} has undeclared input tensors {extra}")
    outputs = {o.name for o in session.get_outputs()}
    for name in spec.output_names:
        if name not in outputs:
            raise ModelNotFoundError(f"{spec.model_name}: {path} has no output tensor '{name}' (it has {sorted(outputs)})")
    return session


class OnnxStages:
    """encoder -> fusion -> decoder, one onnxruntime session each."""

    def __init__(self, bundle: ModelBundle, intra_op_threads: int | None = None, device: str = "cpu") -> None:
        if not bundle.stage_paths:
            raise ModelNotFoundError("this ModelBundle was loaded without its stage files (stages=False)")
        self.geometry = bundle.geometry
        self.specs = bundle.specs
        self.driver = bundle.family.driver  # a family whose stages run in a loop; None: one chain
        opts, providers = session_options(intra_op_threads), providers_for(device)
        self._sessions = {s: open_session(bundle.stage_paths[s], self.specs[s], opts, providers) for s in STAGES}

    def run_stage(self, stage: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One stage on the tensors it takes from ``feeds`` (shape and dtype checked) -> its outputs."""
        spec = self.specs[stage]
        inputs = {}
        for t in spec.inputs:
            if t.name not in feeds:
                raise TensorError(f"{spec.model_name}: missing input {t.name}")
            t.validate(feeds[t.name])
            inputs[t.name] = feeds[t.name]
        try:
            outs = self._sessions[stage].run(spec.output_names, inputs)
        except Exception as e:  # onnxruntime's pybind errors carry the failing node
            raise TensorError(f"{spec.model_name}: onnxruntime failed: {e}") from e
        return dict(zip(spec.output_names, outs))

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A request's inputs (the image and the request inputs, batched) -> its outputs, validated
        first: the stages chained once, or run by the family's driver."""
        check_inputs(feeds, self.geometry)
        if self.driver is not None:
            return self.driver.run(self.run_stage, dict(feeds), self.geometry)
        tensors = dict(feeds)
        for stage in STAGES:
            tensors.update(self.run_stage(stage, tensors))
        return {t.name: tensors[t.name] for t in self.geometry.outputs}

    def close(self) -> None:
        self._sessions = {}
