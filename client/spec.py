"""The tensor contract: one declaration per stage, everything else generated from it.

A model family is cut into three stages, ``encoder -> fusion -> decoder``. Each stage has one
``StageSpec`` (names, dtypes, shapes with named dynamic axes). The ONNX exporter, the Triton
``config.pbtxt`` files, the ensemble wiring, the Python-backend stages and the client all read
these declarations; nothing restates a tensor name or a dimension by hand.

Shapes are given *with* the batch axis, named ``"batch"``; Triton's ``dims`` drop it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import TensorError

BATCH = "batch"  # the one dynamic axis of every stage tensor

# Ensemble-level tensor names (the public contract, see README "Tensor contract").
L_NAME = "L"  # FP32 [batch, 1, S, S], CIE L in [0, 100]
TOKENS_NAME = "TOKENS"  # INT64 [batch, T], 0 = padding
AB_NAME = "AB"  # FP32 [batch, 2, S, S], CIE a and b in Lab units
# Intermediate tensors between stages.
FEATURES_NAME = "FEATURES"  # encoder -> fusion
MODULATED_NAME = "MODULATED"  # fusion -> decoder

STAGES = ("encoder", "fusion", "decoder")
PAD_ID = 0

_TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}
_CLIENT_DTYPES = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | str, ...]  # str entries are named dynamic axes

    @property
    def triton_dtype(self) -> str:  # for config.pbtxt
        return _TRITON_DTYPES[self.dtype]

    @property
    def client_dtype(self) -> str:  # for tritonclient InferInput
        return _CLIENT_DTYPES[self.dtype]

    @property
    def dims(self) -> tuple[int, ...]:
        """Shape without the leading batch axis, as Triton's ``dims``."""
        assert self.shape[0] == BATCH, self
        return tuple(int(d) for d in self.shape[1:])

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def validate(self, array: np.ndarray, *, batched: bool = True) -> None:
        """Raise ``TensorError`` naming this tensor if ``array`` does not fit the spec."""
        if not isinstance(array, np.ndarray):
            raise TensorError(f"{self.name}: expected a numpy array, got {type(array).__name__}")
        if array.dtype != np.dtype(self.dtype):
            raise TensorError(f"{self.name}: expected dtype {self.dtype}, got {array.dtype}")
        want = self.shape if batched else self.shape[1:]
        if array.ndim != len(want) or any(
            isinstance(w, int) and w != g for w, g in zip(want, array.shape)
        ):
            shown = tuple(w if isinstance(w, int) else "N" for w in want)
            raise TensorError(f"{self.name}: expected shape {shown}, got {tuple(array.shape)}")


@dataclass(frozen=True)
class StageSpec:
    family: str
    stage: str  # one of STAGES
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def model_name(self) -> str:  # Triton model name, e.g. "lcode_encoder"
        return f"{self.family}_{self.stage}"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


@dataclass(frozen=True)
class ModelGeometry:
    """What the outside world must know about a trained network, without torch.

    ``feature_shape`` is the per-sample shape of the tensors between stages (for L-CoDe the
    visual feature map ``(C, h, w)``, for L-CoIns the image tokens ``(P, D)``).
    """

    family: str
    image_size: int  # S: the network's input side, pixels
    max_tokens: int  # T: fixed caption length, token id 0 = padding
    feature_shape: tuple[int, ...]
    vocab_size: int

    def __post_init__(self) -> None:
        assert self.image_size > 0 and self.max_tokens > 0 and self.vocab_size > 1, self


def stage_specs(geom: ModelGeometry) -> dict[str, StageSpec]:
    """The three stage declarations of a family; the single source of every tensor name and dim."""
    s, t, f = geom.image_size, geom.max_tokens, geom.feature_shape
    l_in = TensorSpec(L_NAME, "float32", (BATCH, 1, s, s))
    tokens = TensorSpec(TOKENS_NAME, "int64", (BATCH, t))
    feats = TensorSpec(FEATURES_NAME, "float32", (BATCH, *f))
    modulated = TensorSpec(MODULATED_NAME, "float32", (BATCH, *f))
    ab = TensorSpec(AB_NAME, "float32", (BATCH, 2, s, s))
    return {
        "encoder": StageSpec(geom.family, "encoder", (l_in,), (feats,)),
        "fusion": StageSpec(geom.family, "fusion", (feats, tokens), (modulated,)),
        "decoder": StageSpec(geom.family, "decoder", (modulated,), (ab,)),
    }


def ensemble_spec(geom: ModelGeometry) -> StageSpec:
    """The ``<family>`` ensemble: ``L``, ``TOKENS`` -> ``AB``."""
    st = stage_specs(geom)
    return StageSpec(geom.family, "ensemble", (st["encoder"].inputs[0], st["fusion"].inputs[1]), st["decoder"].outputs)


MANIFEST_FILE = "langcolor.json"  # in model_repository/<family>/1/, beside tokenizer.json
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class ModelManifest:
    """Written by ``langcolor export`` beside the ensemble; read by the client and the server."""

    geometry: ModelGeometry
    tokenizer_sha256: str  # hash of tokenizer.json's bytes: client and server must agree
    weights_sha256: str  # content hash of the checkpoint the ONNX files came from
    extra: dict = field(default_factory=dict)  # free-form provenance (config name, git revision)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelManifest":
        raw = json.loads(text)
        g = raw["geometry"]
        geom = ModelGeometry(**{**g, "feature_shape": tuple(g["feature_shape"])})
        return cls(geom, raw["tokenizer_sha256"], raw["weights_sha256"], raw.get("extra", {}))

    @classmethod
    def load(cls, path: Path) -> "ModelManifest":
        return cls.from_json(Path(path).read_text())
