"""The three ONNX stages of a model family, run in-process with onnxruntime.

``ModelBundle`` reads what ``langcolor export`` wrote into the model repository (manifest, tokenizer,
stage files) and checks that they belong together. ``OnnxStages`` holds one InferenceSession per
stage; its tensor names come from ``stage_specs(manifest.geometry)`` and are checked against each
session's own signature at load, and every input is validated against its spec before it runs.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import LangcolorError, ModelNotFoundError, TensorError
from .lab import L_MAX
from .paths import resolve_model_repository
from .spec import MANIFEST_FILE, STAGES, TOKENIZER_FILE, ModelGeometry, ModelManifest, StageSpec, stage_specs
from .tokenizer import CaptionTokenizer

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


def stage_path(repository: Path, family: str, stage: str) -> Path:
    return repository / f"{family}_{stage}" / VERSION / MODEL_FILE


@dataclass(frozen=True)
class ModelBundle:
    repository: Path
    manifest: ModelManifest
    tokenizer: CaptionTokenizer
    stage_paths: dict[str, Path]  # stage -> model.onnx; empty when loaded for a remote server

    @property
    def geometry(self) -> ModelGeometry:
        return self.manifest.geometry

    @property
    def specs(self) -> dict[str, StageSpec]:
        return stage_specs(self.manifest.geometry)

    @classmethod
    def load(cls, model_repository: str | Path | None = None, family: str = "lcode", *, stages: bool = True) -> "ModelBundle":
        """Read ``<family>/1/langcolor.json`` and ``tokenizer.json`` (and the stage files unless ``stages=False``)."""
        repo = resolve_model_repository(model_repository)
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
        tokenizer = _load_tokenizer(ensemble / TOKENIZER_FILE, manifest)
        paths = {}
        if stages:
            for stage in STAGES:
                path = stage_path(repo, family, stage)
                if not path.is_file():
                    raise ModelNotFoundError(f"stage '{stage}' of '{family}' is missing: {path} does not exist")
                paths[stage] = path
        return cls(repo, manifest, tokenizer, paths)


def _load_tokenizer(path: Path, manifest: ModelManifest) -> CaptionTokenizer:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelNotFoundError(f"{path}: cannot read the model's tokenizer ({e.strerror or e})") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.tokenizer_sha256:
        raise ModelNotFoundError(
            f"{path}: sha256 {digest[:12]}... differs from the manifest's {manifest.tokenizer_sha256[:12]}...; "
            "the tokenizer is not the one this model was trained with (re-run `langcolor export`)"
        )
    tokenizer = CaptionTokenizer.from_file(path)
    geom = manifest.geometry
    if tokenizer.max_tokens != geom.max_tokens or tokenizer.vocab_size != geom.vocab_size:
        raise ModelNotFoundError(
            f"{path}: tokenizer has T={tokenizer.max_tokens}, vocab={tokenizer.vocab_size}; "
            f"the model expects T={geom.max_tokens}, vocab={geom.vocab_size}"
        )
    return tokenizer


def check_model_inputs(L: np.ndarray, tokens: np.ndarray, geom: ModelGeometry) -> None:
    """Shape, dtype and VALUE checks of the ensemble inputs; raises ``TensorError`` naming the tensor.

    Specs catch shape and dtype; values matter too: NaN/inf or L outside [0, 100] give garbage
    colours silently, and a token id outside the vocabulary crashes the embedding lookup.
    """
    specs = stage_specs(geom)
    l_spec, t_spec = specs["encoder"].inputs[0], specs["fusion"].inputs[1]
    l_spec.validate(L)
    t_spec.validate(tokens)
    if L.shape[0] == 0:
        raise TensorError(f"{l_spec.name}: empty batch")
    if L.shape[0] != tokens.shape[0]:
        raise TensorError(f"{t_spec.name}: batch {tokens.shape[0]} differs from {l_spec.name}'s {L.shape[0]}")
    if not np.isfinite(L).all():
        raise TensorError(f"{l_spec.name}: contains NaN or infinity")
    lo, hi = float(L.min()), float(L.max())
    if lo < 0.0 or hi > L_MAX:
        raise TensorError(f"{l_spec.name}: values must lie in [0, {L_MAX:g}] (CIE L), got [{lo:.4g}, {hi:.4g}]")
    tmin, tmax = int(tokens.min()), int(tokens.max())
    if tmin < 0 or tmax >= geom.vocab_size:
        raise TensorError(f"{t_spec.name}: token ids must lie in [0, {geom.vocab_size}), got [{tmin}, {tmax}]")


def session_options(intra_op_threads: int | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Three sessions share the cores: spinning workers steal them from each other (2.5x slower
    # end to end on 2 cores when left on).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.inter_op_num_threads = 1
    if intra_op_threads:
        opts.intra_op_num_threads = int(intra_op_threads)
    return opts


def providers_for(device: str) -> list[str]:
    if device not in _PROVIDERS:
        raise LangcolorError(f"unknown device {device!r}; use one of {sorted(_PROVIDERS)}")
    wanted = _PROVIDERS[device]
    available = set(ort.get_available_providers())
    if wanted[0] not in available:
        raise LangcolorError(f"device {device!r} needs {wanted[0]}, which this onnxruntime lacks (has {sorted(available)})")
    return [p for p in wanted if p in available]


class OnnxStages:
    """encoder -> fusion -> decoder, one onnxruntime session each."""

    def __init__(self, bundle: ModelBundle, intra_op_threads: int | None = None, device: str = "cpu") -> None:
        if not bundle.stage_paths:
            raise ModelNotFoundError("this ModelBundle was loaded without its stage files (stages=False)")
        self.geometry = bundle.geometry
        self.specs = bundle.specs
        opts, providers = session_options(intra_op_threads), providers_for(device)
        self._sessions = {stage: self._open(bundle.stage_paths[stage], self.specs[stage], opts, providers) for stage in STAGES}

    @staticmethod
    def _open(path: Path, spec: StageSpec, opts: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
            raise ModelNotFoundError(f"{spec.model_name}: cannot load {path}: {e}") from e
        found = {i.name: i for i in session.get_inputs()}
        for t in spec.inputs:
            if t.name not in found:
                raise ModelNotFoundError(
                    f"{spec.model_name}: {path} has no input tensor '{t.name}' (it has {sorted(found)})"
                )
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

    def _run(self, stage: str, *arrays: np.ndarray) -> np.ndarray:
        spec = self.specs[stage]
        for t, a in zip(spec.inputs, arrays, strict=True):
            t.validate(a)
        feeds = {t.name: a for t, a in zip(spec.inputs, arrays)}
        try:
            (out,) = self._sessions[stage].run(spec.output_names, feeds)
        except Exception as e:  # onnxruntime's pybind errors carry the failing node
            raise TensorError(f"{spec.model_name}: onnxruntime failed: {e}") from e
        return out

    def encoder(self, L: np.ndarray) -> np.ndarray:
        return self._run("encoder", L)  # [B, 1, S, S] -> FEATURES [B, *feature_shape]

    def fusion(self, features: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return self._run("fusion", features, tokens)  # ([B, *f], [B, T]) -> MODULATED [B, *f]

    def decoder(self, modulated: np.ndarray) -> np.ndarray:
        return self._run("decoder", modulated)  # [B, *f] -> AB [B, 2, S, S]

    def infer_ab(self, L: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """L ``[B, 1, S, S]`` in [0, 100] + tokens ``[B, T]`` -> ab ``[B, 2, S, S]`` in Lab units."""
        check_model_inputs(L, tokens, self.geometry)
        return self.decoder(self.fusion(self.encoder(L), tokens))
