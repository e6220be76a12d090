"""The ``colorize`` endpoint: encoded image + caption bytes in, PNG bytes out (copied as ``colorize/1/model.py``).

Business logic scripting (BLS): decoding, Lab conversion and tokenization happen here, the S x S L
and the tokens go to the ``<family>`` ensemble (the three stages, dynamically batched) in one
request per chunk of the batch, and the full-resolution reconstruction with the photograph's own L
happens here again.

The optional ``MODEL`` input (BYTES, one UTF-8 family name per image, like ``IMAGE``) picks the
ensemble per image: ``lcode`` or ``lcoins``, any family in the config's ``families`` parameter.
A request without it goes to the ``ensemble`` parameter's family (the default). Each family's own
tokenizer and input size S prepare its images, and its images go to its ensemble in their own
chunks, so one request may mix families. An empty, non-UTF-8 or unknown name fails that request
alone, with a message naming ``MODEL`` and listing the valid families.

A Triton ensemble of Python steps would have to ship the full-resolution L (megapixels) between the
decoding and the reconstruction step; BLS keeps it in this process.

Everything is the project's client code (``langcolor.client``), so the served pixels are the same
as the in-process ``langcolor colorize``. A request whose image or caption is bad gets a
``TritonError`` with the ``LangcolorError`` message, for that request alone.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from langcolor.client.errors import LangcolorError, ModelNotFoundError
from langcolor.client.imageio import DEFAULT_MAX_PIXELS, LoadedImage, encode_image, load_image
from langcolor.client.reconstruct import prepare_l, reconstruct
from langcolor.client.runtime import ModelBundle
from langcolor.client.spec import AB_NAME, L_NAME, TOKENS_NAME
from langcolor.client.tokenizer import CaptionTokenizer

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: ``parse_request`` stays importable for tests and fuzzing
    pb_utils = None

# Tensor and parameter names of this endpoint: must match langcolor.export.triton_config.
IMAGE_NAME, CAPTION_NAME, MODEL_NAME, COLORIZED_NAME = "IMAGE", "CAPTION", "MODEL", "COLORIZED"
PARAM_ENSEMBLE, PARAM_FAMILIES, PARAM_MAX_PIXELS = "ensemble", "families", "max_pixels"
MAX_ERROR_CHARS = 500  # an error names the problem; it never echoes a 100 kB caption back to the caller
MAX_NAME_CHARS = 40  # of an unknown MODEL value quoted back in its error
_CUT = " ... (cut short)"


def clip_message(message: str) -> str:
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - len(_CUT)] + _CUT


def _error(message: str) -> "pb_utils.TritonError":
    message = clip_message(message)
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


@dataclass(frozen=True)
class Family:
    """What one served family needs to prepare an image for its ensemble."""

    name: str  # the ensemble's model name, what MODEL says
    tokenizer: CaptionTokenizer  # the one its weights were trained with
    image_size: int  # S of its L input


def load_family(repository: Path, name: str) -> Family:
    """``<repository>/<name>/1``'s manifest and tokenizer, checked as the in-process client checks
    them (``ModelBundle.load``: the family, the tokenizer's sha256, T and vocabulary)."""
    bundle = ModelBundle.load(repository, name, stages=False)  # ModelNotFoundError names the problem
    return Family(name, bundle.tokenizer, bundle.geometry.image_size)


@dataclass(frozen=True)
class ParsedItem:
    """One image of one request, decoded and tokenized, ready for the ensemble."""

    loaded: LoadedImage  # metadata (EXIF, ICC) for the output
    l_full: np.ndarray  # [H, W] float32, the photograph's own L
    l_small: np.ndarray  # [1, S, S] float32, S of its family
    tokens: np.ndarray  # [T] int64, T and ids of its family's tokenizer
    family: str | None = None  # the family MODEL named; None: no MODEL, the endpoint's default


def _elements(array: np.ndarray | None, name: str) -> list[bytes]:
    """The BYTES elements of one input tensor, flattened; raise naming the tensor if it is not that."""
    if array is None:
        raise LangcolorError(f"the request needs both {IMAGE_NAME} and {CAPTION_NAME}; {name} is missing")
    array = np.asarray(array)
    if array.dtype != np.object_ and array.dtype.kind != "S":
        raise LangcolorError(f"{name} must be BYTES, got {array.dtype}")
    items = []
    for k, x in enumerate(array.reshape(-1)):
        if not isinstance(x, (bytes, bytearray, np.bytes_)):
            raise LangcolorError(f"{name}[{k}] must be bytes, got {type(x).__name__}")
        items.append(bytes(x))
    return items


def _families_text(families: Mapping[str, Family]) -> str:
    return ", ".join(sorted(families)) or "none"


def parse_models(models: np.ndarray, n_images: int, families: Mapping[str, Family]) -> list[Family]:
    """The ``MODEL`` tensor -> one served family per image; raises ``ModelNotFoundError`` naming
    ``MODEL`` and the valid families for an empty, non-UTF-8 or unknown name."""
    names = _elements(models, MODEL_NAME)
    if len(names) != n_images:
        raise LangcolorError(f"{MODEL_NAME} has {len(names)} value(s) for {n_images} image(s): give one family per image")
    valid = f"valid families: {_families_text(families)}"
    chosen = []
    for k, raw in enumerate(names):
        where = f"item {k}: " if n_images > 1 else ""
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ModelNotFoundError(f"{where}{MODEL_NAME} is not valid UTF-8; {valid}") from e
        if not name:
            raise ModelNotFoundError(f"{where}{MODEL_NAME} is empty; {valid} (or leave {MODEL_NAME} out for the default)")
        if name not in families:
            shown = name if len(name) <= MAX_NAME_CHARS else name[:MAX_NAME_CHARS] + "..."
            raise ModelNotFoundError(f"{where}{MODEL_NAME} {shown!r} is not a family this endpoint serves; {valid}")
        chosen.append(families[name])
    return chosen


def parse_request(
    images: np.ndarray | None,
    captions: np.ndarray | None,
    tokenizer: CaptionTokenizer,
    image_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    models: np.ndarray | None = None,
    families: Mapping[str, Family] | None = None,
) -> list[ParsedItem]:
    """The BYTES inputs of one request -> its images, prepared; raises ``LangcolorError`` naming
    the problem. Pure (no Triton): every check a request goes through, fuzzed by tests/test_fuzz.py.
    Nothing in the request is used as a path: the image bytes are decoded from memory.

    ``tokenizer`` and ``image_size`` prepare the images of a request without ``MODEL`` (the default
    family). ``models`` is the request's ``MODEL`` tensor when it has one: one name per image, each
    a key of ``families`` (the families the endpoint serves); that family's tokenizer and S prepare
    the image, and ``ParsedItem.family`` carries its name."""
    image_list, caption_list = _elements(images, IMAGE_NAME), _elements(captions, CAPTION_NAME)
    if len(image_list) != len(caption_list):
        raise LangcolorError(f"{len(image_list)} image(s) but {len(caption_list)} caption(s)")
    if not image_list:
        raise LangcolorError("the request holds no image")
    # MODEL first: a wrong name costs nothing, before any image is decoded.
    chosen = [None] * len(image_list) if models is None else parse_models(models, len(image_list), families or {})
    items = []
    for k, (data, caption, family) in enumerate(zip(image_list, caption_list, chosen)):
        where = f"item {k}: " if len(image_list) > 1 else ""
        tok, size = (tokenizer, image_size) if family is None else (family.tokenizer, family.image_size)
        try:
            encoded = tok.encode(caption)  # CaptionError names the problem
            loaded = load_image(data, max_pixels=max_pixels)  # ImageError names the problem
        except LangcolorError as e:
            raise type(e)(clip_message(f"{where}{e}")) from e
        l_full, l_small = prepare_l(loaded.rgb, size)  # [H, W], [1, S, S]
        items.append(ParsedItem(loaded, l_full, l_small, encoded.ids, None if family is None else family.name))
    return items


@dataclass(frozen=True)
class _Item:
    """One image of one request of the dynamic batch."""

    request_index: int
    item_index: int  # its place in the request: families are sent apart, answers go back in order
    parsed: ParsedItem


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.default = params.get(PARAM_ENSEMBLE, "lcode")
        names = [f for f in params.get(PARAM_FAMILIES, self.default).split(",") if f]
        self.max_pixels = int(params.get(PARAM_MAX_PIXELS, DEFAULT_MAX_PIXELS))
        self.chunk = max(1, int(config.get("max_batch_size", 8)))  # an ensemble takes at most this many
        if self.default not in names:
            raise pb_utils.TritonModelException(f"colorize: default family {self.default!r} is not in {PARAM_FAMILIES} {names}")

        # Each ensemble's version folder carries the manifest and the tokenizer the model was trained with.
        repository = Path(args["model_repository"]).parent
        try:
            self.families = {name: load_family(repository, name) for name in names}
        except LangcolorError as e:
            raise pb_utils.TritonModelException(f"colorize: {e}") from e
        served = ", ".join(f"{f.name} (S={f.image_size}, {f.tokenizer!r})" for f in self.families.values())
        pb_utils.Logger.log_info(f"colorize: BLS over {served}; default {self.default!r}")

    # ------------------------------------------------------------------ per request
    def _prepare(self, index: int, request) -> list[_Item]:
        images = pb_utils.get_input_tensor_by_name(request, IMAGE_NAME)
        captions = pb_utils.get_input_tensor_by_name(request, CAPTION_NAME)
        models = pb_utils.get_input_tensor_by_name(request, MODEL_NAME)  # None: optional, left out
        default = self.families[self.default]
        parsed = parse_request(
            None if images is None else images.as_numpy(),  # [n, 1] of bytes
            None if captions is None else captions.as_numpy(),
            default.tokenizer,
            default.image_size,
            self.max_pixels,
            models=None if models is None else models.as_numpy(),  # [n, 1] of bytes
            families=self.families,
        )
        return [_Item(index, k, p) for k, p in enumerate(parsed)]

    async def _infer(self, family: str, items: list[_Item]) -> np.ndarray:
        """AB [n, 2, S, S] for ``items`` (n <= chunk, all of ``family``) from that family's ensemble."""
        l_batch = np.stack([it.parsed.l_small for it in items])  # [n, 1, S, S]
        tokens = np.stack([it.parsed.tokens for it in items])  # [n, T]
        kwargs = {}
        if hasattr(pb_utils, "PreferredMemory"):  # ask for AB in CPU memory even when the stages run on GPU
            kwargs["preferred_memory"] = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
        request = pb_utils.InferenceRequest(
            model_name=family,
            requested_output_names=[AB_NAME],
            inputs=[pb_utils.Tensor(L_NAME, l_batch), pb_utils.Tensor(TOKENS_NAME, tokens)],
            **kwargs,
        )
        response = await request.async_exec()
        if response.has_error():
            raise LangcolorError(f"{family}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, AB_NAME).as_numpy()  # [n, 2, S, S]

    async def execute(self, requests: list) -> list:
        errors: dict[int, str] = {}
        by_family: dict[str, list[_Item]] = {}
        counts = [0] * len(requests)
        for i, request in enumerate(requests):
            try:
                prepared = self._prepare(i, request)
            except LangcolorError as e:
                errors[i] = str(e)
                continue
            except Exception as e:  # a bug must not take the other requests of the batch down
                errors[i] = f"internal error: {type(e).__name__}: {e}"
                continue
            for item in prepared:
                by_family.setdefault(item.parsed.family or self.default, []).append(item)
            counts[i] = len(prepared)

        # All images of the batch go to their family's ensemble, in chunks it accepts, concurrently.
        chunks = [
            (family, items[k : k + self.chunk])
            for family, items in by_family.items()
            for k in range(0, len(items), self.chunk)
        ]
        results = await asyncio.gather(*(self._infer(f, c) for f, c in chunks), return_exceptions=True)
        outputs: dict[int, list[bytes | None]] = {i: [None] * counts[i] for i in range(len(requests)) if i not in errors}
        for (_, chunk), ab in zip(chunks, results):
            for k, item in enumerate(chunk):
                i = item.request_index
                if i in errors:
                    continue
                if isinstance(ab, BaseException):
                    errors[i] = str(ab)
                    continue
                try:
                    p = item.parsed
                    rgb = reconstruct(p.l_full, ab[k])  # [H, W, 3] uint8, L from the original
                    outputs[i][item.item_index] = encode_image(rgb, "PNG", exif=p.loaded.exif, icc=p.loaded.icc)
                except LangcolorError as e:
                    errors[i] = str(e)
                except Exception as e:
                    errors[i] = f"internal error: {type(e).__name__}: {e}"

        responses = []
        for i in range(len(requests)):
            if i in errors:
                responses.append(pb_utils.InferenceResponse(error=_error(f"colorize: {errors[i]}")))
                continue
            assert all(png is not None for png in outputs[i]), i
            png = np.array(outputs[i], dtype=np.object_).reshape(counts[i], 1)  # [n, 1] of bytes
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(COLORIZED_NAME, png)]))
        return responses
