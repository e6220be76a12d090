"""Caption tokenizers (Hugging Face ``tokenizers``), stored as ``tokenizer.json``.

Two kinds behind one class, told apart by the JSON's model type:

- word level: lowercase, punctuation stripped, one id per known word; a word outside the
  vocabulary becomes ``[UNK]`` and a caption made only of such words is refused;
- WordPiece: the same normalisation plus accents stripped; a word outside the vocabulary
  is split into known sub-words (``crimson`` -> ``c ##r ##im ##son``), so no caption is refused for
  its vocabulary alone. Such words are still reported as unknown to the caller.

``[PAD]`` = 0, ``[UNK]`` = 1, padded on the right to the fixed length T kept in the JSON's padding
config. A caption longer than T ids is an error, never cut. Imports no torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel, WordPiece
from tokenizers.trainers import WordPieceTrainer

from .errors import CaptionError, ModelNotFoundError, clip
from .spec import PAD_ID

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
UNK_ID = 1
SUBWORD_PREFIX = "##"  # WordPiece continuation marker
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"  # every letter and digit, first and inside a word


@dataclass(frozen=True)
class EncodedCaption:
    ids: np.ndarray  # int64 [T], right-padded with PAD_ID
    words: tuple[str, ...]  # the caption's words after normalisation, in order
    unknown: tuple[str, ...]  # words the model does not know (mapped to [UNK]), in order
    length: int  # number of non-padding ids (words; word pieces for WordPiece)
    split: tuple[str, ...] = ()  # WordPiece: words outside the vocabulary, read as known sub-words


def _normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"[^\w\s]|_"), " ")]
    )


def _wordpiece_normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence(
        [normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase(),
         normalizers.Replace(Regex(r"[^\w\s]|_"), " ")]
    )


class CaptionTokenizer:
    def __init__(self, tokenizer: Tokenizer, json_text: str) -> None:
        padding = tokenizer.padding
        if not padding or padding.get("length") is None or padding.get("pad_id") != PAD_ID:
            raise ModelNotFoundError("tokenizer.json has no fixed-length padding config with pad id 0")
        if tokenizer.token_to_id(UNK_TOKEN) != UNK_ID:
            raise ModelNotFoundError(f"tokenizer.json must map {UNK_TOKEN} to id {UNK_ID}")
        self._tok = tokenizer
        self._json = json_text
        self.max_tokens: int = int(padding["length"])
        self.vocab_size: int = tokenizer.get_vocab_size()
        self.sha256: str = hashlib.sha256(json_text.encode("utf-8")).hexdigest()
        self.wordpiece: bool = isinstance(tokenizer.model, WordPiece)

    # ----------------------------------------------------------------- construction
    @classmethod
    def train(cls, captions: Iterable[str], max_tokens: int) -> "CaptionTokenizer":
        """Build the vocabulary from training captions (sorted, so the ids are deterministic)."""
        norm, pre = _normalizer(), pre_tokenizers.WhitespaceSplit()
        words: set[str] = set()
        for caption in captions:
            words.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(caption)))
        vocab = {PAD_TOKEN: PAD_ID, UNK_TOKEN: UNK_ID}
        for word in sorted(words):
            vocab[word] = len(vocab)
        tok = Tokenizer(WordLevel(vocab, unk_token=UNK_TOKEN))
        tok.normalizer = norm
        tok.pre_tokenizer = pre
        tok.enable_padding(length=int(max_tokens), pad_id=PAD_ID, pad_token=PAD_TOKEN, direction="right")
        return cls.from_str(tok.to_str())

    @classmethod
    def train_wordpiece(cls, captions: Iterable[str], max_tokens: int, vocab_size: int) -> "CaptionTokenizer":
        """A WordPiece vocabulary of at most ``vocab_size`` ids learnt from training captions.

        Every letter and digit is in the vocabulary both as a word start and as a ``##`` continuation,
        so any word of letters and digits encodes to known sub-words, never to ``[UNK]``."""
        tok = Tokenizer(WordPiece(unk_token=UNK_TOKEN, continuing_subword_prefix=SUBWORD_PREFIX, max_input_chars_per_word=64))
        tok.normalizer = _wordpiece_normalizer()
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.decoder = decoders.WordPiece(prefix=SUBWORD_PREFIX)
        trainer = WordPieceTrainer(
            vocab_size=int(vocab_size),
            special_tokens=[PAD_TOKEN, UNK_TOKEN],  # ids 0 and 1, in this order
            initial_alphabet=list(_ALPHABET),
            continuing_subword_prefix=SUBWORD_PREFIX,
            show_progress=False,
        )
        # One line with every character inside a word, so every "##c" continuation exists.
        inner = " ".join("x" + c for c in _ALPHABET)
        tok.train_from_iterator([*captions, inner], trainer=trainer)
        # The trainer numbers tokens in hash order; renumber (specials first, then sorted) for stable ids.
        learnt = sorted(t for t in tok.get_vocab() if t not in (PAD_TOKEN, UNK_TOKEN))
        vocab = {PAD_TOKEN: PAD_ID, UNK_TOKEN: UNK_ID, **{t: i + 2 for i, t in enumerate(learnt)}}
        tok.model = WordPiece(vocab, unk_token=UNK_TOKEN, continuing_subword_prefix=SUBWORD_PREFIX, max_input_chars_per_word=64)
        tok.enable_padding(length=int(max_tokens), pad_id=PAD_ID, pad_token=PAD_TOKEN, direction="right")
        return cls.from_str(tok.to_str())

    @classmethod
    def from_str(cls, json_text: str) -> "CaptionTokenizer":
        try:
            tok = Tokenizer.from_str(json_text)
        except Exception as e:  # tokenizers raises its own Exception type for bad JSON
            raise ModelNotFoundError(f"not a valid tokenizer.json: {e}") from e
        return cls(tok, json_text)

    @classmethod
    def from_file(cls, path: str | Path) -> "CaptionTokenizer":
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ModelNotFoundError(f"cannot read tokenizer {path}: {e}") from e
        return cls.from_str(text)

    def to_str(self) -> str:
        return self._json

    def save(self, path: str | Path) -> Path:
        """Write the exact JSON text whose hash is ``sha256``."""
        path = Path(path)
        path.write_bytes(self._json.encode("utf-8"))
        return path

    # ----------------------------------------------------------------- encoding
    @property
    def vocabulary(self) -> dict[str, int]:
        return dict(self._tok.get_vocab())

    def words_of(self, caption: str) -> list[str]:
        """The caption's words after lowercasing and stripping punctuation."""
        normalized = self._tok.normalizer.normalize_str(caption)
        return [w for w, _ in self._tok.pre_tokenizer.pre_tokenize_str(normalized)]

    def encode(self, caption: str | bytes) -> EncodedCaption:
        if isinstance(caption, (bytes, bytearray)):
            try:
                caption = bytes(caption).decode("utf-8")
            except UnicodeDecodeError as e:
                raise CaptionError(f"caption is not valid UTF-8 (byte {e.start})") from e
        if not isinstance(caption, str):
            raise CaptionError(f"caption must be text, got {type(caption).__name__}")
        try:  # a lone surrogate (e.g. invalid UTF-8 from argv, escaped by Python) is not text
            caption.encode("utf-8")
        except UnicodeEncodeError as e:
            raise CaptionError(f"caption is not valid UTF-8 (character {e.start})") from e
        words = self.words_of(caption)
        if not words:
            raise CaptionError("caption is empty (no words after removing punctuation)")
        if self.wordpiece:
            return self._encode_wordpiece(caption, words)
        if len(words) > self.max_tokens:
            raise CaptionError(
                f"caption has {len(words)} words; this model reads at most {self.max_tokens} "
                "(shorten it; it is never cut silently)"
            )
        vocab = self._tok.get_vocab()
        ids = [vocab.get(w, UNK_ID) for w in words]
        unknown = tuple(w for w, i in zip(words, ids) if i == UNK_ID)
        if len(unknown) == len(words):
            raise CaptionError(f"no word of the caption is known to the model: {clip(' '.join(words), _QUOTE_CHARS)!r}")
        padded = np.full(self.max_tokens, PAD_ID, dtype=np.int64)  # [T]
        padded[: len(ids)] = ids
        return EncodedCaption(ids=padded, words=tuple(words), unknown=unknown, length=len(ids))

    def _encode_wordpiece(self, caption: str, words: list[str]) -> EncodedCaption:
        enc = self._tok.encode(caption)
        ids = [i for i, m in zip(enc.ids, enc.attention_mask) if m]  # padding dropped
        if len(ids) > self.max_tokens:
            raise CaptionError(
                f"caption has {len(ids)} word pieces ({len(words)} words); this model reads at most "
                f"{self.max_tokens} (shorten it; it is never cut silently)"
            )
        vocab = self._tok.get_vocab()
        # A word becomes [UNK] only when it holds a character outside the alphabet (e.g. CJK): ignored.
        unknown = tuple(w for w, piece in zip(words, self._first_pieces(enc)) if piece == UNK_ID)
        split = tuple(w for w in words if w not in vocab and w not in unknown)
        padded = np.full(self.max_tokens, PAD_ID, dtype=np.int64)  # [T]
        padded[: len(ids)] = ids
        return EncodedCaption(ids=padded, words=tuple(words), unknown=unknown, length=len(ids), split=split)

    @staticmethod
    def _first_pieces(enc) -> list[int]:
        """The first id of each word, in word order."""
        first: dict[int, int] = {}
        for token_id, word in zip(enc.ids, enc.word_ids):
            if word is not None and word not in first:
                first[word] = token_id
        return [first[k] for k in sorted(first)]

    def encode_batch(self, captions: Sequence[str | bytes]) -> np.ndarray:
        """-> int64 [B,T]; a bad caption raises CaptionError naming its index."""
        rows = []
        for i, caption in enumerate(captions):
            try:
                rows.append(self.encode(caption).ids)
            except CaptionError as e:
                raise CaptionError(f"caption {i}: {e}") from e
        if not rows:
            return np.zeros((0, self.max_tokens), dtype=np.int64)
        return np.stack(rows)  # [B,T]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids back to words (padding dropped); for logs and tests."""
        if self.wordpiece:
            return self._tok.decode([int(i) for i in ids if int(i) != PAD_ID], skip_special_tokens=False)
        inverse = {i: w for w, i in self._tok.get_vocab().items()}
        return " ".join(inverse.get(int(i), UNK_TOKEN) for i in ids if int(i) != PAD_ID)

    def __repr__(self) -> str:
        return f"CaptionTokenizer(vocab_size={self.vocab_size}, max_tokens={self.max_tokens}, sha256={self.sha256[:12]})"


_QUOTE_CHARS = 200  # longest piece of a caption quoted back in an error message
