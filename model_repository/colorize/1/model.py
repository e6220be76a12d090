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
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from langcolor.client.errors import LangcolorError
from langcolor.client.imageio import DEFAULT_MAX_PIXELS, encode_image, load_image
from langcolor.client.reconstruct import prepare_l, reconstruct
from langcolor.client.spec import AB_NAME, L_NAME, MANIFEST_FILE, TOKENIZER_FILE, TOKENS_NAME, ModelManifest
from langcolor.client.tokenizer import CaptionTokenizer

# Tensor names of this endpoint: must match langcolor.export.triton_config.
IMAGE_NAME, CAPTION_NAME, COLORIZED_NAME = "IMAGE", "CAPTION", "COLORIZED"


def _error(message: str) -> "pb_utils.TritonError":
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


class _Item:
    """One image of one request, prepared for the ensemble."""

    def __init__(self, request_index: int, loaded, l_full: np.ndarray, l_small: np.ndarray, tokens: np.ndarray):
        self.request_index = request_index
        self.loaded = loaded
        self.l_full = l_full  # [H, W] float32, the photograph's own L
        self.l_small = l_small  # [1, S, S] float32
        self.tokens = tokens  # [T] int64


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
        if images is None or captions is None:
            raise LangcolorError(f"the request needs both {IMAGE_NAME} and {CAPTION_NAME}")
        images, captions = images.as_numpy().reshape(-1), captions.as_numpy().reshape(-1)  # [n] of bytes
        if images.shape != captions.shape:
            raise LangcolorError(f"{images.size} image(s) but {captions.size} caption(s)")
        items = []
        for data, caption in zip(images, captions):
            encoded = self.tokenizer.encode(bytes(caption))  # CaptionError names the problem
            loaded = load_image(bytes(data), max_pixels=self.max_pixels)  # ImageError names the problem
            l_full, l_small = prepare_l(loaded.rgb, self.image_size)  # [H, W], [1, S, S]
            items.append(_Item(index, loaded, l_full, l_small, encoded.ids))
        return items

    async def _infer(self, items: list[_Item]) -> np.ndarray:
        """AB [n, 2, S, S] for ``items`` (n <= chunk) from the ensemble."""
        l_batch = np.stack([it.l_small for it in items])  # [n, 1, S, S]
        tokens = np.stack([it.tokens for it in items])  # [n, T]
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
                    rgb = reconstruct(item.l_full, ab[k])  # [H, W, 3] uint8, L from the original
                    outputs[i].append(encode_image(rgb, "PNG", exif=item.loaded.exif, icc=item.loaded.icc))
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
