"""The ``colorize`` endpoint: encoded image + caption bytes in, PNG bytes out (copied as ``colorize/1/model.py``).

Business logic scripting (BLS): decoding, Lab conversion and tokenization happen here, the S x S L
and the tokens go to the ``<family>`` ensemble (the three stages, dynamically batched) in one
request per chunk of the batch, and the full-resolution reconstruction with the photograph's own L
happens here again. A Triton ensemble of Python steps would have to ship the full-resolution L
(megapixels) between the decoding and the reconstruction step; BLS keeps it in this process.

Everything is the project's client code (``langcolor.client``), so the served pixels are the same
as the in-process ``langcolor colorize``. A request whose image or caption is bad gets a
``TritonError`` with the ``LangcolorError`` message, for that request alone.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from langcolor.client.errors import LangcolorError
from langcolor.client.imageio import DEFAULT_MAX_PIXELS, LoadedImage, encode_image, load_image
from langcolor.client.reconstruct import prepare_l, reconstruct
from langcolor.client.spec import AB_NAME, L_NAME, MANIFEST_FILE, TOKENIZER_FILE, TOKENS_NAME, ModelManifest
from langcolor.client.tokenizer import CaptionTokenizer

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: ``parse_request`` stays importable for tests and fuzzing
    pb_utils = None

# Tensor names of this endpoint: must match langcolor.export.triton_config.
IMAGE_NAME, CAPTION_NAME, COLORIZED_NAME = "IMAGE", "CAPTION", "COLORIZED"
MAX_ERROR_CHARS = 500  # an error names the problem; it never echoes a 100 kB caption back to the caller
_CUT = " ... (cut short)"


def clip_message(message: str) -> str:
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - len(_CUT)] + _CUT


def _error(message: str) -> "pb_utils.TritonError":
    message = clip_message(message)
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


@dataclass(frozen=True)
class ParsedItem:
    """One image of one request, decoded and tokenized, ready for the ensemble."""

    loaded: LoadedImage  # metadata (EXIF, ICC) for the output
    l_full: np.ndarray  # [H, W] float32, the photograph's own L
    l_small: np.ndarray  # [1, S, S] float32
    tokens: np.ndarray  # [T] int64


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


def parse_request(
    images: np.ndarray | None,
    captions: np.ndarray | None,
    tokenizer: CaptionTokenizer,
    image_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[ParsedItem]:
    """The two BYTES inputs of one request -> its images, prepared; raises ``LangcolorError`` naming
    the problem. Pure (no Triton): every check a request goes through, fuzzed by tests/test_fuzz.py.
    Nothing in the request is used as a path: the image bytes are decoded from memory."""
    image_list, caption_list = _elements(images, IMAGE_NAME), _elements(captions, CAPTION_NAME)
    if len(image_list) != len(caption_list):
        raise LangcolorError(f"{len(image_list)} image(s) but {len(caption_list)} caption(s)")
    if not image_list:
        raise LangcolorError("the request holds no image")
    items = []
    for k, (data, caption) in enumerate(zip(image_list, caption_list)):
        where = f"item {k}: " if len(image_list) > 1 else ""
        try:
            encoded = tokenizer.encode(caption)  # CaptionError names the problem
            loaded = load_image(data, max_pixels=max_pixels)  # ImageError names the problem
        except LangcolorError as e:
            raise type(e)(clip_message(f"{where}{e}")) from e
        l_full, l_small = prepare_l(loaded.rgb, image_size)  # [H, W], [1, S, S]
        items.append(ParsedItem(loaded, l_full, l_small, encoded.ids))
    return items


@dataclass(frozen=True)
class _Item:
    """One image of one request of the dynamic batch."""

    request_index: int
    parsed: ParsedItem


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.ensemble = params.get("ensemble", "lcode")
        self.max_pixels = int(params.get("max_pixels", DEFAULT_MAX_PIXELS))
        self.chunk = max(1, int(config.get("max_batch_size", 8)))  # the ensemble takes at most this many

        # The ensemble's version folder carries the manifest and the tokenizer the model was trained with.
        family_dir = Path(args["model_repository"]).parent / self.ensemble / "1"
        self.manifest = ModelManifest.load(family_dir / MANIFEST_FILE)
        self.tokenizer = CaptionTokenizer.from_file(family_dir / TOKENIZER_FILE)
        if self.tokenizer.sha256 != self.manifest.tokenizer_sha256:
            raise pb_utils.TritonModelException(
                f"{family_dir / TOKENIZER_FILE} has sha256 {self.tokenizer.sha256[:12]}, "
                f"the manifest expects {self.manifest.tokenizer_sha256[:12]}"
            )
        self.image_size = self.manifest.geometry.image_size
        pb_utils.Logger.log_info(f"colorize: BLS over {self.ensemble!r}, S={self.image_size}, {self.tokenizer!r}")

    # ------------------------------------------------------------------ per request
    def _prepare(self, index: int, request) -> list[_Item]:
        images = pb_utils.get_input_tensor_by_name(request, IMAGE_NAME)
        captions = pb_utils.get_input_tensor_by_name(request, CAPTION_NAME)
        parsed = parse_request(
            None if images is None else images.as_numpy(),  # [n, 1] of bytes
            None if captions is None else captions.as_numpy(),
            self.tokenizer,
            self.image_size,
            self.max_pixels,
        )
        return [_Item(index, p) for p in parsed]

    async def _infer(self, items: list[_Item]) -> np.ndarray:
        """AB [n, 2, S, S] for ``items`` (n <= chunk) from the ensemble."""
        l_batch = np.stack([it.parsed.l_small for it in items])  # [n, 1, S, S]
        tokens = np.stack([it.parsed.tokens for it in items])  # [n, T]
        kwargs = {}
        if hasattr(pb_utils, "PreferredMemory"):  # ask for AB in CPU memory even when the stages run on GPU
            kwargs["preferred_memory"] = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
        request = pb_utils.InferenceRequest(
            model_name=self.ensemble,
            requested_output_names=[AB_NAME],
            inputs=[pb_utils.Tensor(L_NAME, l_batch), pb_utils.Tensor(TOKENS_NAME, tokens)],
            **kwargs,
        )
        response = await request.async_exec()
        if response.has_error():
            raise LangcolorError(f"{self.ensemble}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, AB_NAME).as_numpy()  # [n, 2, S, S]

    async def execute(self, requests: list) -> list:
        errors: dict[int, str] = {}
        items: list[_Item] = []
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
            items += prepared
            counts[i] = len(prepared)

        # All images of the batch go to the ensemble together, in chunks it accepts, concurrently.
        chunks = [items[k : k + self.chunk] for k in range(0, len(items), self.chunk)]
        results = await asyncio.gather(*(self._infer(c) for c in chunks), return_exceptions=True)
        outputs: dict[int, list[bytes]] = {i: [] for i in range(len(requests)) if i not in errors}
        for chunk, ab in zip(chunks, results):
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
                    outputs[i].append(encode_image(rgb, "PNG", exif=p.loaded.exif, icc=p.loaded.icc))
                except LangcolorError as e:
                    errors[i] = str(e)
                except Exception as e:
                    errors[i] = f"internal error: {type(e).__name__}: {e}"

        responses = []
        for i in range(len(requests)):
            if i in errors:
                responses.append(pb_utils.InferenceResponse(error=_error(f"colorize: {errors[i]}")))
                continue
            png = np.array(outputs[i], dtype=np.object_).reshape(counts[i], 1)  # [n, 1] of bytes
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(COLORIZED_NAME, png)]))
        return responses
