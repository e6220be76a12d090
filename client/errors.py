"""Typed errors raised at the product's edges.

Every error a user can cause derives from ``LangcolorError``; the command line prints its message
on one line and exits non-zero, the server returns it for the one request that caused it.
"""


class LangcolorError(Exception):
    """Base class: a problem the user can act on, with a message that names it."""


class ImageError(LangcolorError):
    """The input is not a decodable image, is truncated, empty, or too large."""


class OutputError(LangcolorError):
    """The output path cannot receive the file: a directory, a missing or read-only folder, a full disk."""


class CaptionError(LangcolorError):
    """The caption is empty, too long for the model, not UTF-8, or has no known word."""


class TensorError(LangcolorError):
    """A tensor has the wrong name, dtype, shape or values for the declared stage spec."""


class ModelNotFoundError(LangcolorError):
    """Weights, ONNX files or the model repository are missing or unreadable."""


class ExportParityError(LangcolorError):
    """An exported stage disagrees with PyTorch beyond tolerance (lists every failing tensor)."""


class ServerError(LangcolorError):
    """The Triton server is unreachable, not ready, or rejected the request."""


class TokenizerMismatchError(ServerError):
    """The client's tokenizer differs from the one the served model was trained with."""


MAX_MESSAGE_CHARS = 500  # an error names the problem; it never echoes a 100 kB caption back
_CUT = " ... (cut short)"


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying so: for messages that may quote their input."""
    return text if len(text) <= limit else text[: max(0, limit - len(_CUT))] + _CUT
