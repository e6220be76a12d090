"""langcolor's client side: image I/O, Lab, conditioning, in-process and remote inference. No torch.

The public names below are imported lazily, so ``import langcolor.client.cli`` (every ``langcolor``
command) does not pay for onnxruntime or tokenizers until a command needs them.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Colorizer": "colorizer",
    "ColorizeResult": "colorizer",
    "Prepared": "photo",
    "prepare": "photo",
    "finish": "photo",
    "ModelBundle": "runtime",
    "OnnxStages": "runtime",
    "CaptionTokenizer": "tokenizer",
    "EncodedCaption": "tokenizer",
    "LoadedImage": "imageio",
    "load_image": "imageio",
    "encode_image": "imageio",
    "DEFAULT_MAX_PIXELS": "imageio",
    "rgb_to_lab": "lab",
    "lab_to_rgb": "lab",
    "prepare_l": "reconstruct",
    "reconstruct": "reconstruct",
    "default_model_repository": "paths",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
