"""The tensor contract: one declaration per family, every stage spec generated from it.

A model family is cut into three stages, ``encoder -> fusion -> decoder``. A family declares, in its
``ModelGeometry``, the image input, the **conditions** it takes (caption tokens, a reference image,
nothing, ...) with the stage each one enters, the tensors that pass between the stages, and its
outputs. ``stage_specs`` generates the three ``StageSpec``s from that declaration:

    encoder: image + conditions that enter the encoder  -> features
    fusion:  features + conditions that enter the fusion -> modulated
    decoder: modulated + conditions that enter the decoder -> outputs (AB first)

A family with no condition has a fusion stage that takes the features alone. The ONNX exporter, the
Triton ``config.pbtxt`` files, the ensemble wiring, the Python-backend stages and the client all read
these declarations; nothing restates a tensor name or a dimension by hand.

Shapes are given *with* the batch axis, named ``"batch"``; Triton's ``dims`` drop it. Public tensor
names shared by several families (``L``, ``AB``, ``TOKENS``) come from ``names``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import names
from .errors import TensorError
from .lab import L_MAX

BATCH = "batch"  # the one dynamic axis of every stage tensor

L_NAME, TOKENS_NAME, AB_NAME = names.L, names.TOKENS, names.AB
FEATURES_NAME, MODULATED_NAME = names.FEATURES, names.MODULATED

STAGES = ("encoder", "fusion", "decoder")
PAD_ID = 0

DENSE, TOKENS_KIND = "dense", "tokens"  # TensorSpec.kind: plain values, or right-padded token ids

_TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                  "bytes": "TYPE_STRING"}
_CLIENT_DTYPES = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32", "bytes": "BYTES"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name ("bytes" for Triton's BYTES/TYPE_STRING)
    shape: tuple[int | str, ...]  # str entries are named dynamic axes
    value_range: tuple[float, float] | None = None  # inclusive bounds every request is checked against
    kind: str = DENSE  # TOKENS_KIND: ids right-padded with PAD_ID (samplers and parity vary the length)

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
        """Raise ``TensorError`` naming this tensor if ``array`` does not fit the spec (shape, dtype)."""
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

    def validate_values(self, array: np.ndarray) -> None:
        """Finite values within ``value_range``; raises ``TensorError`` naming the tensor."""
        if array.size == 0:
            raise TensorError(f"{self.name}: empty tensor {tuple(array.shape)}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise TensorError(f"{self.name}: contains NaN or infinity")
        if self.value_range is not None:
            lo, hi = self.value_range
            a_min, a_max = array.min(), array.max()
            if a_min < lo or a_max > hi:
                raise TensorError(f"{self.name}: values must lie in [{lo:g}, {hi:g}], got [{a_min:.4g}, {a_max:.4g}]")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "TensorSpec":
        rng = raw.get("value_range")
        return cls(raw["name"], raw["dtype"], tuple(raw["shape"]), tuple(rng) if rng is not None else None,
                   raw.get("kind", DENSE))


def image_l(size: int) -> TensorSpec:
    """``L`` FP32 [batch, 1, S, S] in [0, 100]: the gray photograph at the network's input size."""
    return TensorSpec(L_NAME, "float32", (BATCH, 1, size, size), (0.0, L_MAX))


def ab_output(size: int) -> TensorSpec:
    """``AB`` FP32 [batch, 2, S, S] in Lab units: what every Lab family's decoder returns."""
    return TensorSpec(AB_NAME, "float32", (BATCH, 2, size, size))


def tokens_spec(max_tokens: int, vocab_size: int) -> TensorSpec:
    """``TOKENS`` INT64 [batch, T]: token ids in [0, vocab), right-padded with 0."""
    assert max_tokens > 0 and vocab_size > 1, (max_tokens, vocab_size)
    return TensorSpec(TOKENS_NAME, "int64", (BATCH, max_tokens), (0, vocab_size - 1), TOKENS_KIND)


@dataclass(frozen=True)
class Condition:
    """An input the caller supplies beside the image, and the stage that takes it."""

    tensor: TensorSpec
    stage: str = "fusion"

    def __post_init__(self) -> None:
        assert self.stage in STAGES, self.stage


@dataclass(frozen=True)
class StageSpec:
    family: str
    stage: str  # one of STAGES, or "ensemble"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def model_name(self) -> str:  # Triton model name, e.g. "<family>_encoder"
        return self.family if self.stage == "ensemble" else f"{self.family}_{self.stage}"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)


@dataclass(frozen=True)
class Serving:
    """A family whose stages run in a loop (a sampler, say) rather than once in a chain: it is served
    by its driver (``Family.driver``), in-process and as a Python model named like the family, with
    this request contract instead of an ensemble's."""

    inputs: tuple[TensorSpec, ...]  # what a request carries beside the image
    outputs: tuple[TensorSpec, ...]  # the colour (AB) first

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, raw: dict) -> "Serving":
        return cls(tuple(TensorSpec.from_dict(t) for t in raw["inputs"]),
                   tuple(TensorSpec.from_dict(t) for t in raw["outputs"]))


@dataclass(frozen=True)
class ModelGeometry:
    """What the outside world must know about a trained network, without torch: its tensor contract.

    ``features`` pass from the encoder to the fusion stage, ``modulated`` from the fusion to the
    decoder; ``outputs`` are the decoder's (the first is the colour every caller wants; the others,
    such as an attention map, are for inspection and only computed when asked for).
    """

    family: str
    image_size: int  # S: the network's input side, pixels
    image: TensorSpec
    conditions: tuple[Condition, ...]
    features: tuple[TensorSpec, ...]
    modulated: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    serving: Serving | None = None  # a driven family's request contract; None: served as an ensemble

    def __post_init__(self) -> None:
        assert self.image_size > 0 and self.outputs, self
        names = [t.name for t in (self.image, *self.condition_specs, *self.features, *self.modulated, *self.outputs)]
        assert len(names) == len(set(names)), f"tensor names must be unique: {names}"

    @property
    def condition_specs(self) -> tuple[TensorSpec, ...]:
        return tuple(c.tensor for c in self.conditions)

    @property
    def request_inputs(self) -> tuple[TensorSpec, ...]:
        """What a request to the family carries beside the image: its conditions, or a driven
        family's own request inputs (a seed, a temperature, ...)."""
        return self.serving.inputs if self.serving is not None else self.condition_specs

    @property
    def request_outputs(self) -> tuple[TensorSpec, ...]:
        """What a request to the family answers, the colour (``AB``) first."""
        return self.serving.outputs if self.serving is not None else self.outputs

    @property
    def tokens(self) -> TensorSpec | None:
        """The caption condition, for families that take one."""
        return next((t for t in self.condition_specs if t.kind == TOKENS_KIND), None)

    @property
    def max_tokens(self) -> int:
        """T of a caption family's ``TOKENS`` (an error for a family without a caption)."""
        return self._tokens().dims[0]

    @property
    def vocab_size(self) -> int:
        """The vocabulary size of a caption family's ``TOKENS`` (ids lie in [0, vocab))."""
        return int(self._tokens().value_range[1]) + 1

    def _tokens(self) -> TensorSpec:
        if self.tokens is None:
            raise TensorError(f"model '{self.family}' takes no caption tokens")
        return self.tokens

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Per-sample shape of the first encoder output (what a caption family's stages pass along)."""
        return self.features[0].dims

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            "image_size": self.image_size,
            "image": self.image.to_dict(),
            "conditions": [{"tensor": c.tensor.to_dict(), "stage": c.stage} for c in self.conditions],
            "features": [t.to_dict() for t in self.features],
            "modulated": [t.to_dict() for t in self.modulated],
            "outputs": [t.to_dict() for t in self.outputs],
            **({"serving": self.serving.to_dict()} if self.serving is not None else {}),
        }

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelGeometry":
        if "conditions" not in raw:  # a manifest written before families declared their conditions
            return caption_geometry(raw["family"], int(raw["image_size"]), int(raw["max_tokens"]),
                                    int(raw["vocab_size"]), tuple(raw["feature_shape"]))
        specs = lambda key: tuple(TensorSpec.from_dict(t) for t in raw[key])  # noqa: E731
        conditions = tuple(Condition(TensorSpec.from_dict(c["tensor"]), c["stage"]) for c in raw["conditions"])
        serving = Serving.from_dict(raw["serving"]) if raw.get("serving") else None
        return cls(raw["family"], int(raw["image_size"]), TensorSpec.from_dict(raw["image"]), conditions,
                   specs("features"), specs("modulated"), specs("outputs"), serving)


def caption_geometry(
    family: str, image_size: int, max_tokens: int, vocab_size: int, feature_shape: tuple[int, ...]
) -> ModelGeometry:
    """The contract of a caption family: ``L`` -> ``FEATURES``; + ``TOKENS`` -> ``MODULATED``; -> ``AB``."""
    feats = TensorSpec(FEATURES_NAME, "float32", (BATCH, *feature_shape))
    modulated = TensorSpec(MODULATED_NAME, "float32", (BATCH, *feature_shape))
    return ModelGeometry(
        family, image_size, image_l(image_size), (Condition(tokens_spec(max_tokens, vocab_size), "fusion"),),
        (feats,), (modulated,), (ab_output(image_size),),
    )


def stage_specs(geom: ModelGeometry) -> dict[str, StageSpec]:
    """The three stage declarations of a family, generated from its geometry."""

    def conditions(stage: str) -> tuple[TensorSpec, ...]:
        return tuple(c.tensor for c in geom.conditions if c.stage == stage)

    return {
        "encoder": StageSpec(geom.family, "encoder", (geom.image, *conditions("encoder")), geom.features),
        "fusion": StageSpec(geom.family, "fusion", (*geom.features, *conditions("fusion")), geom.modulated),
        "decoder": StageSpec(geom.family, "decoder", (*geom.modulated, *conditions("decoder")), geom.outputs),
    }


def ensemble_spec(geom: ModelGeometry) -> StageSpec:
    """What the model named like the family takes and answers: the ensemble's image and conditions
    -> the decoder's outputs, or a driven family's request contract."""
    return StageSpec(geom.family, "ensemble", (geom.image, *geom.request_inputs), geom.request_outputs)


MANIFEST_FILE = "langcolor.json"  # in model_repository/<family>/1/, beside the conditioner's assets
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class ModelManifest:
    """Written by ``langcolor export`` beside the ensemble; read by the client and the server.

    ``assets`` maps each file the family's conditioner needs (a tokenizer, for a caption family;
    nothing for a family that takes a reference image) to its sha256: client and server must agree.
    """

    geometry: ModelGeometry
    weights_sha256: str  # content hash of the checkpoint the ONNX files came from
    assets: dict[str, str] = field(default_factory=dict)  # file name in the version folder -> sha256
    config: str = ""  # the family's config name ("small", "full", ...)
    extra: dict = field(default_factory=dict)  # free-form provenance (git revision, checkpoint)

    @property
    def tokenizer_sha256(self) -> str | None:
        return self.assets.get(TOKENIZER_FILE)

    def to_json(self) -> str:
        raw = {"geometry": self.geometry.to_dict(), "weights_sha256": self.weights_sha256, "assets": self.assets,
               "config": self.config, "extra": self.extra}
        return json.dumps(raw, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelManifest":
        raw = json.loads(text)
        assets = dict(raw.get("assets", {}))
        if "tokenizer_sha256" in raw:  # written before the conditioner's assets were declared
            assets.setdefault(TOKENIZER_FILE, raw["tokenizer_sha256"])
        extra = dict(raw.get("extra", {}))
        config = raw.get("config") or extra.get("config", "")
        return cls(ModelGeometry.from_dict(raw["geometry"]), raw["weights_sha256"], assets, config, extra)

    @classmethod
    def load(cls, path: Path) -> "ModelManifest":
        return cls.from_json(Path(path).read_text())
