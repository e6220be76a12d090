"""The conditioner of caption families: caption text -> ``TOKENS``, and what the model made of it.

Shared by every family whose condition is a tokenized caption. It reports, as ``Note``s:
- words the tokenizer does not know (ignored), and words read as known word pieces (WordPiece);
- a caption that cannot change the colours: no colour word the model knows. The shipped caption
  models colour what the caption names; without a colour word the result is the caption-free one,
  and the user is told so rather than handed a sepia wash in silence.
"""

from __future__ import annotations

from typing import Any, Mapping

from .errors import CaptionError, ModelNotFoundError
from .families import TEXT, Conditioned, InputField, Note
from .spec import TOKENIZER_FILE, ModelGeometry
from .tokenizer import CaptionTokenizer, EncodedCaption

CAPTION = InputField("caption", TEXT, 'what the colours should be, e.g. "a red car on green grass"', short="-c")
MODELS_HINT = "run `langcolor models` to list the words each model knows"


def load_tokenizer(geometry: ModelGeometry, assets: Mapping[str, bytes]) -> CaptionTokenizer:
    """The tokenizer among ``assets``, checked against the geometry's ``TOKENS`` (T and vocabulary)."""
    if TOKENIZER_FILE not in assets:
        raise ModelNotFoundError(f"model '{geometry.family}' has no {TOKENIZER_FILE}")
    try:
        tokenizer = CaptionTokenizer.from_str(assets[TOKENIZER_FILE].decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ModelNotFoundError(f"{TOKENIZER_FILE} is not UTF-8 text") from e
    tokens = geometry.tokens
    if tokens is None:
        raise ModelNotFoundError(f"model '{geometry.family}' declares no token condition")
    vocab = int(tokens.value_range[1]) + 1
    if tokenizer.max_tokens != tokens.dims[0] or tokenizer.vocab_size != vocab:
        raise ModelNotFoundError(
            f"{TOKENIZER_FILE}: tokenizer has T={tokenizer.max_tokens}, vocab={tokenizer.vocab_size}; "
            f"the model expects T={tokens.dims[0]}, vocab={vocab}"
        )
    return tokenizer


class CaptionConditioner:
    """``caption`` -> ``TOKENS`` [T] int64, with notes on how the caption was read."""

    def __init__(self, geometry: ModelGeometry, tokenizer: CaptionTokenizer, colour_words: frozenset[str] = frozenset()):
        self.geometry = geometry
        self.tokenizer = tokenizer
        self.tensor_name = geometry.tokens.name
        vocab = set(tokenizer.vocabulary)
        self.colour_words = frozenset(w for w in colour_words if w in vocab)  # the colours the model can name

    def encode(self, caption: str | bytes) -> EncodedCaption:
        try:
            return self.tokenizer.encode(caption)
        except CaptionError as e:
            if "no word of the caption is known" in str(e):
                raise CaptionError(f"{e}; {MODELS_HINT}") from e
            raise

    def notes(self, encoded: EncodedCaption) -> tuple[Note, ...]:
        notes = []
        if encoded.unknown:
            notes.append(Note("unknown-words", f"ignored unknown words: {' '.join(encoded.unknown)}", encoded.unknown))
        if encoded.split:
            notes.append(Note("split-words", "words outside the vocabulary, read as word pieces: "
                              + " ".join(encoded.split), encoded.split))
        if self.colour_words and not any(w in self.colour_words for w in encoded.words):
            known = ", ".join(sorted(self.colour_words))
            notes.append(Note("caption-free", "the caption names no colour this model knows "
                              f"({known}): it cannot set any colour, and the result is the caption-free one "
                              "(within a few Lab units)"))
        return tuple(notes)

    def condition(self, values: Mapping[str, Any]) -> Conditioned:
        caption = values.get(CAPTION.name)
        if caption is None:
            raise CaptionError(f"model '{self.geometry.family}' needs a caption")
        encoded = self.encode(caption)
        return Conditioned({self.tensor_name: encoded.ids}, self.notes(encoded))

    def describe(self) -> dict:
        tok = self.tokenizer
        known = sorted(w for w in tok.vocabulary if not w.startswith(("[", "##")))
        out: dict = {
            "tokenizer": "WordPiece" if tok.wordpiece else "word level",
            "max_tokens": tok.max_tokens,
            "vocab_size": tok.vocab_size,
            "colour_words": sorted(self.colour_words),
        }
        if not tok.wordpiece:  # a word-level vocabulary is the list of words the model can read
            out["known_words"] = known
        return out


def caption_conditioner(colour_words: frozenset[str] = frozenset()):
    """A ``Family.conditioner`` factory for caption families."""

    def build(geometry: ModelGeometry, assets: Mapping[str, bytes]) -> CaptionConditioner:
        return CaptionConditioner(geometry, load_tokenizer(geometry, assets), colour_words)

    return build


def vocabulary_size(assets: Mapping[str, bytes]) -> int:
    """The vocabulary size of the tokenizer among a caption family's assets (for its geometry)."""
    if TOKENIZER_FILE not in assets:
        raise ModelNotFoundError(f"a caption family needs {TOKENIZER_FILE} among its assets")
    return CaptionTokenizer.from_str(assets[TOKENIZER_FILE].decode("utf-8")).vocab_size
