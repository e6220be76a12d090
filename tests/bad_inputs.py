"""The bad-input table: every hostile or broken input, the boundaries that can receive it, and the
error each must give. Data and generators only (no test logic), so that ``tests/test_bad_inputs.py``
runs it and ``python tests/bad_inputs.py`` writes ``tests/BAD_INPUTS.md`` from the same rows.

Boundaries:
  python         ``Colorizer`` in-process (image bytes, caption, tensors to ``infer_ab``, ``save`` path)
  cli            ``langcolor colorize PHOTO -c CAPTION -o OUT`` as a subprocess
  batch          ``langcolor batch`` / ``run_batch``: a manifest line, a file of the batch, ``--output``
  lcode-grpc/http   the served ``lcode`` ensemble, raw tritonclient requests (no client-side checks)
  colorize-grpc/http the served ``colorize`` bytes endpoint, raw tritonclient requests
  secured-grpc/http  a server started with an API key and gRPC TLS, through the client (``RemoteStages``),
                     as a user meets it (tests/test_security_server.py runs these rows)

Rows of kind ``reference`` go to the served family that takes an image input beside the photo (a
reference photo), at its Python API, CLI (``--reference``), batch (a manifest's reference column)
and the ``colorize`` endpoint (``MODEL`` naming it); they skip when no such family is served.

``expect`` is a case-insensitive regular expression the error message must match (it names the
problem); ``ACCEPTED`` marks an awkward but valid input that must succeed. ``at`` overrides the
expectation for one boundary, ``SKIPPED`` there means the batch skips the image and says so.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from skimage import data as skdata

ACCEPTED = ""  # the input is valid (an edge case): it must succeed
SKIPPED = "<skipped>"  # batch: the image is skipped (no caption), reported, nothing written

KIND_BOUNDARIES = {
    "image": ("python", "cli", "batch", "colorize-grpc", "colorize-http"),
    "caption": ("python", "cli", "batch", "colorize-grpc", "colorize-http"),
    "source": ("python", "cli", "batch"),
    "array": ("python",),
    "tensor": ("python", "lcode-grpc", "lcode-http"),
    "request": ("colorize-grpc", "colorize-http"),
    "manifest": ("batch",),
    "output": ("python", "cli", "batch"),
    "access": ("secured-grpc", "secured-http"),
    "reference": ("python", "cli", "batch", "colorize-grpc", "colorize-http"),
}
BOUNDARIES = ("python", "cli", "batch", "lcode-grpc", "lcode-http", "colorize-grpc", "colorize-http",
              "secured-grpc", "secured-http")


@dataclass(frozen=True)
class Context:
    """What the generators need: the served model's geometry and one good input of each kind."""

    image_size: int  # S
    max_tokens: int  # T
    vocab_size: int
    max_batch_size: int  # of the served ensemble and endpoint
    good_caption: str = "a red circle on a blue background"

    def good_l(self, n: int = 1) -> np.ndarray:  # float32 [n, 1, S, S] from a real photo, in [0, 100]
        from langcolor.client.reconstruct import prepare_l

        rgb = skdata.camera()[::4, ::4, None].repeat(3, axis=2) / 255.0
        return np.repeat(prepare_l(rgb, self.image_size)[1][None], n, axis=0).astype(np.float32)

    def good_tokens(self, n: int = 1) -> np.ndarray:  # int64 [n, T]: known ids, then padding
        tokens = np.zeros((n, self.max_tokens), dtype=np.int64)
        tokens[:, :4] = np.arange(2, 6) % self.vocab_size
        return tokens


@dataclass(frozen=True)
class BadInput:
    name: str
    kind: str  # a key of KIND_BOUNDARIES
    what: str  # for the table
    expect: str  # regex the error must match, or ACCEPTED
    make: Callable[..., Any]  # image: ctx -> bytes; caption: ctx -> str|bytes; tensor: ctx -> (L, TOKENS);
    # request: ctx -> [(name, array, triton dtype)]; manifest: (ctx, root) -> (file name, bytes);
    # output/source: (ctx, tmp folder) -> path; access: ctx -> Access; reference: ctx -> bytes or None (none given)
    at: dict[str, str] = field(default_factory=dict)  # boundary -> expectation there
    cannot: dict[str, str] = field(default_factory=dict)  # boundary -> why it cannot receive this input

    @property
    def boundaries(self) -> tuple[str, ...]:
        return tuple(b for b in KIND_BOUNDARIES[self.kind] if b not in self.cannot)

    def expect_at(self, boundary: str) -> str:
        return self.at.get(boundary, self.expect)


# ----------------------------------------------------------------------------- image generators
def _encode(rgb: np.ndarray, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **options)
    return buf.getvalue()


def photo_png() -> bytes:
    return _encode(skdata.astronaut()[::4, ::4], "PNG")  # 128 x 128 RGB


def photo_jpeg() -> bytes:
    return _encode(skdata.coffee()[::3, ::3], "JPEG", quality=90)


def png_declaring(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR (CRC fixed) declares ``width`` x ``height``."""
    raw = bytearray(_encode(np.zeros((1, 1), np.uint8), "PNG"))
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


def _damaged_png() -> bytes:
    raw = bytearray(photo_png())
    mid = len(raw) // 2
    raw[mid : mid + 64] = b"\x00" * 64  # inside the compressed pixel data
    return bytes(raw)


def _tiff(rgb_or_gray: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb_or_gray, mode).save(buf, "TIFF")
    return buf.getvalue()


def _nan_float_tiff() -> bytes:
    a = np.full((16, 16), 0.5, np.float32)
    a[3, 3] = np.nan
    return _tiff(a, "F")


def _gray16_png() -> bytes:
    return _encode((skdata.moon()[::4, ::4].astype(np.uint16) * 257), "PNG")


def _cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(skdata.rocket()[::4, ::4]).convert("CMYK").save(buf, "JPEG", quality=90)
    return buf.getvalue()


_DECODE = r"truncat|corrupt|cannot decode"
_NOT_IMAGE = r"not an image"

IMAGES = [
    BadInput("empty-file", "image", "empty file (0 bytes)", r"empty", lambda c: b""),
    BadInput("text-file", "image", "a text file named .png", _NOT_IMAGE, lambda c: b"Box 12: harbour photographs, 1931.\n"),
    BadInput("random-bytes", "image", "4 kB of random bytes", _NOT_IMAGE, lambda c: np.random.default_rng(0).bytes(4096)),
    BadInput("truncated-jpeg", "image", "first third of a JPEG", _DECODE, lambda c: photo_jpeg()[: len(photo_jpeg()) // 3]),
    BadInput("truncated-png", "image", "first half of a PNG", _DECODE, lambda c: photo_png()[: len(photo_png()) // 2]),
    BadInput("truncated-tiff", "image", "first half of a TIFF", _DECODE,
             lambda c: _tiff(skdata.camera()[::4, ::4])[: len(_tiff(skdata.camera()[::4, ::4])) // 2]),
    BadInput("damaged-png", "image", "PNG with 64 zeroed bytes in its pixel data", _DECODE, lambda c: _damaged_png()),
    BadInput("png-signature-noise", "image", "PNG signature followed by noise", _NOT_IMAGE,
             lambda c: b"\x89PNG\r\n\x1a\n" + np.random.default_rng(1).bytes(3000)),
    BadInput("jpeg-header-only", "image", "JPEG start marker then nothing useful", r"not an image|truncat|corrupt",
             lambda c: b"\xff\xd8\xff\xe0" + b"\x00" * 16),
    BadInput("decompression-bomb", "image", "67-byte PNG declaring 100000 x 100000", r"decompression bomb|exceeds the limit",
             lambda c: png_declaring(100_000, 100_000)),
    BadInput("bomb-under-pil-limit", "image", "PNG declaring 10000 x 8000 (over the 50 MP cap, under PIL's)",
             r"exceeds the limit", lambda c: png_declaring(10_000, 8_000)),
    # The pixel cap crossed by one: at the cap the header passes and decoding finds the pixels missing.
    BadInput("pixels-at-cap", "image", "PNG header declaring 50 000 000 x 1 (exactly the cap), its pixels missing",
             _DECODE, lambda c: png_declaring(50_000_000, 1)),
    BadInput("pixels-over-cap", "image", "PNG header declaring 50 000 001 x 1 (the cap + 1)",
             r"50000001 pixels exceeds the limit of 50000000", lambda c: png_declaring(50_000_001, 1)),
    BadInput("zero-size", "image", "PNG header declaring 0 x 5", r"not an image|zero size", lambda c: png_declaring(0, 5)),
    BadInput("nan-float-tiff", "image", "32-bit float TIFF with a NaN pixel", r"nan", lambda c: _nan_float_tiff()),
    BadInput("path-as-bytes", "image", "a server file path sent as the image ('/etc/passwd')", _NOT_IMAGE,
             lambda c: b"/etc/passwd"),
    BadInput("one-pixel", "image", "1 x 1 image", ACCEPTED, lambda c: _encode(np.full((1, 1, 3), 200, np.uint8), "PNG")),
    BadInput("one-pixel-strip", "image", "1 x 4000 strip (extreme aspect ratio)", ACCEPTED,
             lambda c: _encode(np.tile(skdata.camera()[200, :], 8)[None, :4000], "PNG")),
    BadInput("gray-16-bit", "image", "16-bit grayscale PNG", ACCEPTED, lambda c: _gray16_png()),
    BadInput("cmyk-jpeg", "image", "CMYK JPEG", ACCEPTED, lambda c: _cmyk_jpeg()),
]

# ----------------------------------------------------------------------------- reference images
def _colour_photo_jpeg() -> bytes:
    return _encode(skdata.coffee()[::4, ::4], "JPEG", quality=90)


_REF = r"reference: "

REFERENCES = [
    BadInput("ref-missing", "reference", "no reference image (and no palette) for a model that needs one",
             r"needs a reference image", lambda c: None),
    BadInput("ref-empty", "reference", "empty reference file (0 bytes)", _REF + r".*empty", lambda c: b""),
    BadInput("ref-text-file", "reference", "a text file as the reference", _REF + r".*" + _NOT_IMAGE,
             lambda c: b"Box 12: harbour photographs, 1931.\n"),
    BadInput("ref-truncated-jpeg", "reference", "first third of a colour JPEG as the reference",
             _REF + r".*(" + _DECODE + ")", lambda c: _colour_photo_jpeg()[: len(_colour_photo_jpeg()) // 3]),
    BadInput("ref-gray", "reference", "a gray photograph as the reference", _REF + r".*carries no colour",
             lambda c: _encode(skdata.camera()[::4, ::4], "PNG")),
    BadInput("ref-bomb", "reference", "67-byte PNG declaring 100000 x 100000 as the reference",
             r"(decompression bomb|exceeds the limit)", lambda c: png_declaring(100_000, 100_000)),
    BadInput("ref-one-pixel", "reference", "a 1 x 1 colour reference (one colour)", ACCEPTED,
             lambda c: _encode(np.array([[[180, 40, 30]]], np.uint8), "PNG")),
    BadInput("ref-other-size-format", "reference", "a colour JPEG of another size and format than the photo", ACCEPTED,
             lambda c: _colour_photo_jpeg()),
]

# ----------------------------------------------------------------------------- captions
_TOO_MANY = r"this model reads at most"
_NOT_UTF8 = r"caption is not valid UTF-8"
_NO_CLI_NUL = {"cli": "argv cannot hold a NUL byte"}

CAPTIONS = [
    BadInput("empty-caption", "caption", "empty caption", r"caption is empty", lambda c: "", at={"batch": SKIPPED}),
    BadInput("whitespace-caption", "caption", "caption of spaces, tabs and newlines", r"caption is empty",
             lambda c: " \t\n  ", at={"batch": SKIPPED}),
    BadInput("punctuation-caption", "caption", "caption of punctuation only", r"caption is empty", lambda c: "?! ... -- ;"),
    BadInput("huge-caption", "caption", "100 000 characters (25 000 words)", _TOO_MANY, lambda c: "red " * 25_000),
    BadInput("huge-word", "caption", "one word of 100 000 characters", r"no word of the caption is known", lambda c: "x" * 100_000),
    BadInput("unknown-words", "caption", "only words the model does not know", r"no word of the caption is known",
             lambda c: "zzzq qqqz"),
    BadInput("words-at-limit", "caption", "T known words (the longest caption)", ACCEPTED,
             lambda c: " ".join(["red"] * c.max_tokens)),
    BadInput("too-many-words", "caption", "T + 1 known words", _TOO_MANY, lambda c: " ".join(["red"] * (c.max_tokens + 1))),
    BadInput("invalid-utf8", "caption", "bytes that are not UTF-8 (0xff 0xfe)", _NOT_UTF8,
             lambda c: b"a red \xff\xfe circle", at={"batch": r"not valid utf-8"}),
    BadInput("lone-surrogate", "caption", "a lone UTF-16 surrogate (U+D800; CESU bytes on the wire)", _NOT_UTF8,
             lambda c: "a red \ud800 circle", cannot={"cli": "argv cannot hold a lone surrogate"}),
    BadInput("control-chars", "caption", "BEL, ESC[31m, DEL inside the caption", ACCEPTED,
             lambda c: "a red\x07\x1b[31m circle\x7f"),
    BadInput("nul-in-caption", "caption", "a NUL byte inside the caption", ACCEPTED, lambda c: "a red\x00circle", cannot=_NO_CLI_NUL),
    BadInput("caption-not-text", "caption", "caption that is a number (5), not text", r"caption must be (text|a string)",
             lambda c: 5, cannot={"cli": "argv is text", "colorize-grpc": "BYTES on the wire", "colorize-http": "BYTES on the wire"}),
    BadInput("bidi-zero-width", "caption", "right-to-left override and zero-width spaces", ACCEPTED,
             lambda c: "\u202ea red\u200b circle\u2066"),
]

# ----------------------------------------------------------------------------- tensors to the ensemble
_L, _T = "(?-i:L)", "(?-i:TOKENS)"


def _with(fn: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> Callable[[Context], tuple]:
    return lambda c: fn(c.good_l(), c.good_tokens())


def _set(a: np.ndarray, value: float) -> np.ndarray:
    a = a.copy()
    a.flat[a.size // 2] = value
    return a


TENSORS = [
    BadInput("l-wrong-size", "tensor", "L of [1, 1, S-1, S]", rf"shape.*{_L}|{_L}.*shape", _with(lambda L, t: (L[:, :, 1:], t))),
    BadInput("l-wrong-rank", "tensor", "L of [1, S, S] (no channel axis)", rf"shape.*{_L}|{_L}.*shape", _with(lambda L, t: (L[:, 0], t))),
    BadInput("l-float64", "tensor", "L as float64", r"float64|FP64", _with(lambda L, t: (L.astype(np.float64), t))),
    BadInput("tokens-int32", "tensor", "TOKENS as int32", r"int32|INT32", _with(lambda L, t: (L, t.astype(np.int32)))),
    BadInput("l-nan", "tensor", "NaN in L", rf"{_L}.*nan", _with(lambda L, t: (_set(L, np.nan), t))),
    BadInput("l-inf", "tensor", "+inf in L", rf"{_L}.*inf", _with(lambda L, t: (_set(L, np.inf), t))),
    BadInput("l-above-100", "tensor", "L up to 250 (outside [0, 100])", rf"{_L}.*\[0, 100\]", _with(lambda L, t: (L + 150, t))),
    BadInput("l-negative", "tensor", "L with a value of -1", rf"{_L}.*\[0, 100\]", _with(lambda L, t: (_set(L, -1.0), t))),
    BadInput("token-over-vocab", "tensor", "token id = vocabulary size", rf"{_T}.*\[0, \d+[\])]",
             lambda c: (c.good_l(), _set(c.good_tokens(), c.vocab_size))),
    BadInput("token-negative", "tensor", "token id -5", rf"{_T}.*\[0, \d+[\])]", _with(lambda L, t: (L, _set(t, -5)))),
    BadInput("tokens-too-long", "tensor", "TOKENS of [1, T+1]", rf"shape.*{_T}|{_T}.*shape",
             _with(lambda L, t: (L, np.pad(t, ((0, 0), (0, 1)))))),
    BadInput("batch-mismatch", "tensor", "2 L planes, 1 token row", r"batch", lambda c: (c.good_l(2), c.good_tokens(1))),
    BadInput("empty-batch", "tensor", "batch of 0", rf"empty batch|byte size mismatch for input '({_L}|{_T})'", lambda c: (c.good_l(0), c.good_tokens(0))),
    BadInput("batch-over-max", "tensor", "batch of max_batch_size + 1 in one request", r"batch.size",
             lambda c: (c.good_l(c.max_batch_size + 1), c.good_tokens(c.max_batch_size + 1)),
             at={"python": ACCEPTED}),
]

# ----------------------------------------------------------------------------- colorize requests


def _b(*items: bytes) -> np.ndarray:
    return np.array([[x] for x in items], dtype=np.object_)  # [n, 1] BYTES


def _good_pair(c: Context) -> tuple[bytes, bytes]:
    return photo_png(), c.good_caption.encode()


_M, _VALID = "(?-i:MODEL)", r"valid families: [a-z, ]*lcode"


def _with_model(c: Context, model: bytes) -> list:
    image, caption = _good_pair(c)
    return [("IMAGE", _b(image), "BYTES"), ("CAPTION", _b(caption), "BYTES"), ("MODEL", _b(model), "BYTES")]


REQUESTS = [
    BadInput("missing-caption-input", "request", "IMAGE without CAPTION", r"(?-i:CAPTION)|expected 2 inputs|input",
             lambda c: [("IMAGE", _b(photo_png()), "BYTES")]),
    BadInput("image-as-fp32", "request", "IMAGE sent as an FP32 tensor", r"FP32|BYTES",
             lambda c: [("IMAGE", np.zeros((1, 1), np.float32), "FP32"), ("CAPTION", _b(_good_pair(c)[1]), "BYTES")]),
    BadInput("count-mismatch", "request", "2 images, 1 caption", r"batch|shape",
             lambda c: [("IMAGE", _b(*[_good_pair(c)[0]] * 2), "BYTES"), ("CAPTION", _b(_good_pair(c)[1]), "BYTES")]),
    BadInput("image-wrong-dims", "request", "IMAGE of shape [1, 2]", r"shape",
             lambda c: [("IMAGE", np.array([[photo_png()] * 2], np.object_), "BYTES"),
                        ("CAPTION", _b(_good_pair(c)[1]), "BYTES")]),
    BadInput("request-over-max-batch", "request", "max_batch_size + 1 images in one request", r"batch.size",
             lambda c: [("IMAGE", _b(*[_good_pair(c)[0]] * (c.max_batch_size + 1)), "BYTES"),
                        ("CAPTION", _b(*[_good_pair(c)[1]] * (c.max_batch_size + 1)), "BYTES")]),
    # MODEL (optional): the family per image; a bad one names MODEL and lists the valid families.
    BadInput("model-unknown", "request", "MODEL 'vgg' (not a served family)", rf"{_M} 'vgg'.*{_VALID}",
             lambda c: _with_model(c, b"vgg")),
    BadInput("model-wrong-case", "request", "MODEL 'LCODE' (names are exact)", rf"{_M} 'LCODE'.*{_VALID}",
             lambda c: _with_model(c, b"LCODE")),
    BadInput("model-empty", "request", "MODEL of 0 bytes", rf"{_M} is empty.*{_VALID}", lambda c: _with_model(c, b"")),
    BadInput("model-not-utf8", "request", "MODEL bytes that are not UTF-8 (0xff 0xfe)", rf"{_M} is not valid UTF-8.*{_VALID}",
             lambda c: _with_model(c, b"lc\xff\xfeode")),
    BadInput("model-huge", "request", "MODEL of 100 000 bytes", rf"{_M} 'x+\.\.\.'.*{_VALID}",
             lambda c: _with_model(c, b"x" * 100_000)),
    BadInput("model-as-int32", "request", "MODEL sent as an INT32 tensor", rf"{_M}.*(INT32|BYTES)|(INT32|BYTES).*{_M}",
             lambda c: [*_with_model(c, b"lcode")[:2], ("MODEL", np.zeros((1, 1), np.int32), "INT32")]),
    BadInput("model-count-mismatch", "request", "1 image, MODEL of 2 names", r"batch|shape",
             lambda c: [*_with_model(c, b"lcode")[:2], ("MODEL", _b(b"lcode", b"lcode"), "BYTES")]),
    BadInput("model-one-item-bad", "request", "2 images, MODEL 'lcode' and 'vgg'", rf"item 1: {_M} 'vgg'.*{_VALID}",
             lambda c: [("IMAGE", _b(*[_good_pair(c)[0]] * 2), "BYTES"), ("CAPTION", _b(*[_good_pair(c)[1]] * 2), "BYTES"),
                        ("MODEL", _b(b"lcode", b"vgg"), "BYTES")]),
]

# ----------------------------------------------------------------------------- batch manifests
_LEAVES = r"leaves the source tree"


def _jsonl(*rows: str) -> Callable[[Context, Path], tuple[str, bytes]]:
    return lambda c, root: ("list.jsonl", "".join(r + "\n" for r in rows).encode())


MANIFESTS = [
    BadInput("dotdot-path", "manifest", "manifest path '../outside.png'", _LEAVES,
             _jsonl('{"path": "good.png", "caption": "a red circle"}', '{"path": "../outside.png", "caption": "a red circle"}')),
    BadInput("absolute-path", "manifest", "manifest path '/etc/passwd'", _LEAVES,
             _jsonl('{"path": "/etc/passwd", "caption": "a red circle"}')),
    BadInput("symlink-out", "manifest", "manifest path to a symlink leaving the tree", _LEAVES,
             _jsonl('{"path": "link.png", "caption": "a red circle"}')),
    BadInput("nul-in-path", "manifest", "manifest path with a NUL byte", r"NUL",
             _jsonl('{"path": "good.png\\u0000.png", "caption": "a red circle"}')),
    BadInput("state-dir-path", "manifest", "manifest path inside a .langcolor folder", r"reserved",
             _jsonl('{"path": ".langcolor/records.png", "caption": "a red circle"}')),
    BadInput("not-json", "manifest", "a JSONL line that is not JSON", r"not valid JSON", _jsonl("{path: good.png")),
    BadInput("csv-no-header", "manifest", "CSV without the path,caption header", r"header",
             lambda c, root: ("list.csv", b"good.png,a red circle\n")),
    BadInput("manifest-not-utf8", "manifest", "manifest bytes that are not UTF-8", r"not valid utf-8",
             lambda c, root: ("list.csv", b"path,caption\ngood.png,a red \xff circle\n")),
    BadInput("listed-twice", "manifest", "the same image listed twice", r"listed twice",
             _jsonl('{"path": "good.png", "caption": "a red circle"}', '{"path": "./good.png", "caption": "a blue circle"}')),
    BadInput("missing-file", "manifest", "manifest path to a file that does not exist", r"not found",
             _jsonl('{"path": "good.png", "caption": "a red circle"}', '{"path": "nowhere.png", "caption": "a red circle"}')),
]

# ----------------------------------------------------------------------------- paths given by the user


def _unwritable_folder(tmp: Path) -> Path:
    """A folder this process cannot write to: chmod 555 normally; root ignores modes, so /sys there."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp / "read_only"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    return folder


def _existing_dir(tmp: Path) -> Path:
    d = tmp / "a_folder.png"
    d.mkdir(exist_ok=True)
    return d


def _existing_file(tmp: Path) -> Path:
    f = tmp / "a_file"
    f.write_text("not a folder")
    return f


OUTPUTS = [
    BadInput("output-is-directory", "output", "output path is an existing directory", r"is a directory|not a folder|exists",
             lambda c, tmp: _existing_dir(tmp), at={"batch": ACCEPTED}),
    BadInput("output-is-file", "output", "batch output folder is an existing file", r"not a (folder|directory)|file",
             lambda c, tmp: _existing_file(tmp), cannot={"python": "takes a file name", "cli": "takes a file name"}),
    BadInput("output-read-only", "output", "output in a folder that cannot be written", r"not writable|cannot (write|create)|permission",
             lambda c, tmp: _unwritable_folder(tmp) / "out.png"),
    BadInput("output-bad-extension", "output", "output file ending in .gif", r"cannot write '\.gif'",
             lambda c, tmp: tmp / "out.gif", cannot={"batch": "--format is a fixed choice"}),
    BadInput("output-missing-folder", "output", "output in a folder that does not exist", r"does not exist",
             lambda c, tmp: tmp / "no" / "such" / "out.png", at={"batch": ACCEPTED}),
    BadInput("output-inside-source", "output", "batch output inside the source tree", r"overlap",
             lambda c, tmp: tmp / "archive" / "colour", cannot={"python": "no source tree", "cli": "no source tree"}),
    BadInput("source-missing", "source", "input photo that does not exist", r"no such file|does not exist",
             lambda c, tmp: tmp / "nowhere.png"),
    BadInput("source-nul-path", "source", "input photo path with a NUL byte", r"NUL|no such file|cannot read",
             lambda c, tmp: str(tmp / "photo.png") + "\x00.png",
             cannot={"cli": "argv cannot hold a NUL byte", "batch": "see the manifest row nul-in-path"}),
    BadInput("source-not-a-path", "source", "input photo given as an int (12345)", r"image|source|path",
             lambda c, tmp: 12345, cannot={"cli": "argv is text", "batch": "manifest paths are strings (not-json row)"}),
    BadInput("source-directory", "source", "input photo that is a directory", r"is a directory",
             lambda c, tmp: _existing_dir(tmp), cannot={"batch": "a folder source is walked"}),
]

# Open defects, in files owned elsewhere and reported to their owner: tests/test_bad_inputs.py
# runs these pairs as strict xfails, so a fix shows up (as XPASS) until the entry is removed.
KNOWN_DEFECTS: dict[tuple[str, str], str] = {}


ARRAYS = [  # numpy pixels handed to the Python API
    BadInput("array-empty", "array", "pixel array of shape (0, 5)", r"shape", lambda c: np.zeros((0, 5), np.uint8)),
    BadInput("array-nan", "array", "float pixel array of NaN", r"finite", lambda c: np.full((8, 8), np.nan, np.float32)),
    BadInput("array-over-1", "array", "float pixel array with values up to 255", r"within \[0, 1\]",
             lambda c: np.full((8, 8, 3), 255.0, np.float32)),
    BadInput("array-two-channels", "array", "pixel array of shape (8, 8, 2)", r"shape", lambda c: np.zeros((8, 8, 2), np.uint8)),
    BadInput("array-int64", "array", "int64 pixel array", r"dtype int64", lambda c: np.zeros((8, 8), np.int64)),
    BadInput("array-uint16-rgba", "array", "uint16 RGBA array (alpha composited on white)", ACCEPTED,
             lambda c: np.full((8, 8, 4), 40000, np.uint16)),
]

# ----------------------------------------------------------------------------- who may call, and how


@dataclass(frozen=True)
class Access:
    """One way of reaching a server that asks for an API key and speaks gRPC TLS."""

    key: str | None = "right"  # "right", "wrong" or None (no key sent)
    ca: str | None = "right"  # gRPC: the CA given ("right", "wrong"), or None for the system's CAs
    tls: bool = True  # gRPC: the client speaks TLS
    plaintext_server: bool = False  # aimed at a server without TLS (gRPC) / Triton's plaintext HTTP port with TLS
    api: str = "colorize"  # "colorize" (an inference through the endpoint) or "repository" (the index, raw)


_NO_HTTP_TLS = {"secured-http": "Triton 2.51's HTTP has no TLS: see the proxy, tests/test_security_proxy.py"}

ACCESS = [
    BadInput("no-api-key", "access", "an inference without the API key", r"no API key was sent",
             lambda c: Access(key=None)),
    BadInput("wrong-api-key", "access", "an inference with a wrong API key", r"not the one it expects",
             lambda c: Access(key="wrong")),
    BadInput("right-api-key", "access", "an inference with the API key", ACCEPTED, lambda c: Access()),
    BadInput("api-key-on-repository", "access", "the model repository index asked with the API key (it takes "
             "the admin key)", r"is restricted, expecting header", lambda c: Access(api="repository")),
    BadInput("no-key-on-repository", "access", "the model repository index asked without a key",
             r"is restricted, expecting header", lambda c: Access(key=None, api="repository")),
    BadInput("wrong-ca", "access", "gRPC TLS with a CA that did not sign the server's certificate",
             r"not trusted: not signed by the CA in .*CERTIFICATE_VERIFY_FAILED", lambda c: Access(ca="wrong"),
             cannot=_NO_HTTP_TLS),
    BadInput("system-cas", "access", "gRPC TLS trusting only the system's CAs (no --tls-ca)",
             r"not trusted: not signed by the system's CAs", lambda c: Access(ca=None), cannot=_NO_HTTP_TLS),
    BadInput("plaintext-to-tls-port", "access", "plaintext gRPC to the TLS port",
             r"speaks TLS and this client does not: use grpcs://", lambda c: Access(tls=False), cannot=_NO_HTTP_TLS),
    BadInput("tls-to-plaintext-port", "access", "TLS to a plaintext port (gRPC: a server without TLS; HTTP: "
             "Triton's own HTTP port)", r"does not speak TLS: use (grpc|http)://", lambda c: Access(plaintext_server=True)),
]

TABLE: list[BadInput] = IMAGES + REFERENCES + CAPTIONS + TENSORS + REQUESTS + MANIFESTS + OUTPUTS + ARRAYS + ACCESS
assert len({b.name for b in TABLE}) == len(TABLE), "bad input names must be unique"


def cases(boundary: str, kinds: tuple[str, ...] | None = None) -> list[BadInput]:
    return [b for b in TABLE if boundary in b.boundaries and (kinds is None or b.kind in kinds)]


def pairs() -> list[tuple[BadInput, str]]:
    return [(b, where) for b in TABLE for where in b.boundaries]


# ----------------------------------------------------------------------------- tests/BAD_INPUTS.md
THREAT_MODEL = """\
## Threat model

**Trusted:** the model repository (ONNX files, `config.pbtxt`, `langcolor.json`, `tokenizer.json`,
the Python-backend `model.py` files: Triton executes them) and the checkpoint given to
`langcolor export`; whoever can write them controls the server. Also trusted: the operator's own
command-line flags and paths (`-o`, `--output`, the photo and manifest paths they name).

**Untrusted:** every request to the server (tensors, image bytes, caption bytes, shapes, dtypes),
every file in a batch (image bytes, and each manifest line's path and caption), and every caption.
These may be malformed or hostile; each gets a clear error naming the problem for itself alone,
the process or server stays up for the next request, and nothing is left half-written. Off
loopback, so is every client that can reach a port: only a holder of the API key may use the
models, and only the operator (the admin key) may load, unload or reconfigure them.

Defaults that hold this line (each checked by a test):
- `langcolor serve` binds HTTP, gRPC and metrics to 127.0.0.1 unless `--host` (or `LANGCOLOR_HOST`)
  says otherwise; exposing it is an explicit choice (tests/test_bad_inputs.py).
- Checkpoints are read with `torch.load(weights_only=True)`: a pickle that would run code is
  refused, and the code does not run (tests/test_bad_inputs.py).
- Images are capped at 50 megapixels by default (`--max-pixels`; the `colorize` endpoint's
  `max_pixels` parameter), checked on the header before any pixel is decoded; PIL's own
  decompression-bomb check is an error too. A 67-byte PNG declaring 100000 x 100000 costs nothing.
- Nothing from a request is used as a file path: the `colorize` endpoint decodes the image from
  the request's bytes in memory (a path sent as the image is "not an image"). Batch manifest paths
  must stay inside the source tree (lexically and after resolving symlinks); NUL bytes, `../`,
  absolute paths elsewhere and the `.langcolor` state folder are refused before any work; outputs
  are written only under the output folder, which may not overlap the source tree.
- Error messages name the problem without echoing the input: the `colorize` endpoint cuts them at
  500 characters, the batch failure report at 300.
- `langcolor serve --api-key-file FILE` puts inference, metadata, model config and statistics behind
  `Authorization: Bearer KEY` (gRPC metadata `triton-grpc-protocol-authorization`), and the model
  repository, logging, trace and shared-memory APIs behind an admin key (`--admin-key-file`; without
  one, a random key that only `langcolor serve` holds): an API-key holder cannot load, unload or
  reconfigure anything. Health stays open for probes; Triton 2.51 cannot restrict its metrics port
  (model names, counts and latencies). Off loopback without a key, `serve` warns loudly unless
  `--insecure` (tests/test_security*.py, and the `access` rows below).
- A refused key is an `AuthenticationError` and a refused certificate a `TlsError`, never retried;
  gRPC TLS mismatches (a wrong CA, plaintext to a TLS port, TLS to a plaintext one, no client
  certificate for mutual TLS) are named as such. The key comes from a file other users cannot read
  (refused otherwise) or `$LANGCOLOR_API_KEY`, never from a command line, and is in no log line,
  message or repr of ours. The known limit: Triton 2.51 reads its restricted-API options from its
  command line only, so the keys are in `tritonserver`'s process arguments, which local users can list
  (a container's PID namespace hides them from the host's other users).
- gRPC TLS is Triton's own (`--grpc-tls-cert`, optional mutual TLS). Triton 2.51's HTTP has no TLS,
  and no request size limit: it reads any body whole before checking anything, the key included (a
  300 MiB request without the key cost it 300 MB over HTTP, 700 MB over gRPC, before the refusal).
  Off loopback, the nginx proxy of `server_config/nginx.conf.tmpl` serves HTTPS and gRPC over TLS and
  caps the body: one byte over `client_max_body_size` is answered 413 before Triton sees it, and the
  client raises `RequestTooLargeError` (tests/test_security_proxy.py).
- Limits are tested by one either side: the pixel cap (`pixels-at-cap`, `pixels-over-cap`), the
  caption length (`words-at-limit`, `too-many-words`), the body cap at the proxy, and every image input
  of a family (a reference photo), which the client holds to the pixel cap before sending; on the
  server, a family's conditioner decodes its own image inputs.
"""

_LABELS = {"python": "Python API", "cli": "CLI", "batch": "batch", "lcode-grpc": "lcode gRPC",
           "lcode-http": "lcode HTTP", "colorize-grpc": "colorize gRPC", "colorize-http": "colorize HTTP",
           "secured-grpc": "secured gRPC", "secured-http": "secured HTTP"}


def _cell(case: BadInput, boundary: str) -> str:
    if boundary in case.cannot:
        return f"n/a ({case.cannot[boundary]})"
    if boundary not in case.boundaries:
        return ""
    e = case.expect_at(boundary)
    defect = KNOWN_DEFECTS.get((case.name, boundary))
    if defect:
        return f"**open defect** ({defect}); wanted: error /{e}/"
    if e == ACCEPTED:
        return "accepted"
    if e == SKIPPED:
        return "skipped, reported"
    return "error /" + e.replace("|", "\\|").replace("(?-i:", "(") + "/"


def markdown() -> str:
    """The table as markdown: one row per input, what each boundary must answer."""
    n_pairs = len(pairs())
    lines = [
        "# Bad inputs, at every boundary",
        "",
        "Generated by `python tests/bad_inputs.py` from the table in `tests/bad_inputs.py`; run by",
        f"`pytest tests/test_bad_inputs.py` ({len(TABLE)} inputs, {n_pairs} input x boundary checks). Each error must",
        "match the pattern shown (case-insensitive), come as one line (CLI: exit 2, no traceback), leave the",
        "process or server answering the next good request, and leave no partial output. *accepted*: an",
        "awkward but valid input that must succeed. Server boundaries get raw tritonclient requests (no",
        "client-side checks), over gRPC and over HTTP alike. The secured server (an API key, gRPC TLS) is",
        "reached through the client, as a user meets it (`tests/test_security_server.py`); no message there",
        "may hold a key.",
        "",
        THREAT_MODEL,
        "## The table",
        "",
        "| input | kind | Python API | CLI | batch | `lcode` ensemble (gRPC, HTTP) | `colorize` endpoint (gRPC, HTTP) "
        "| secured server, gRPC over TLS | secured server, HTTP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in TABLE:
        cells = [_cell(c, b) for b in ("python", "cli", "batch", "lcode-grpc", "colorize-grpc", "secured-grpc",
                                       "secured-http")]
        assert _cell(c, "lcode-grpc") == _cell(c, "lcode-http") and _cell(c, "colorize-grpc") == _cell(c, "colorize-http")
        lines.append(f"| `{c.name}`: {c.what} | {c.kind} | " + " | ".join(x or "-" for x in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    target = Path(__file__).with_name("BAD_INPUTS.md")
    target.write_text(markdown())
    print(f"wrote {target} ({len(TABLE)} inputs, {len(pairs())} checks)")
