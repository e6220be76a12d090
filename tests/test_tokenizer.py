"""CaptionTokenizer: normalisation, unknown words, limits, and a hash that survives a save/load."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from langcolor.client.errors import CaptionError
from langcolor.client.tokenizer import UNK_ID, CaptionTokenizer

CAPTIONS = ["a red circle on a blue background", "the square is green", "purple triangle, yellow diamond"]


@pytest.fixture(scope="module")
def tok() -> CaptionTokenizer:
    return CaptionTokenizer.train(CAPTIONS, max_tokens=8)


def test_ids_are_fixed_length_right_padded_and_normalised(tok):
    enc = tok.encode("A RED Circle!!")
    assert enc.ids.dtype == np.int64 and enc.ids.shape == (8,)
    assert enc.length == 3 and enc.words == ("a", "red", "circle") and enc.unknown == ()
    assert np.all(enc.ids[:3] > UNK_ID) and np.all(enc.ids[3:] == 0)
    assert np.array_equal(enc.ids, tok.encode("a red circle").ids)
    assert tok.decode(enc.ids) == "a red circle"
    assert tok.max_tokens == 8 and tok.vocab_size == 2 + len({w for c in CAPTIONS for w in c.replace(",", "").split()})


def test_unknown_words_are_reported_not_dropped(tok):
    enc = tok.encode("a red zebra near a teal circle")
    assert enc.unknown == ("zebra", "near", "teal")
    assert enc.length == 7 and list(enc.ids[:7]).count(UNK_ID) == 3


@pytest.mark.parametrize("caption", ["", "   ", "\n\t", "!!! ,,,"])
def test_empty_captions_are_refused(tok, caption):
    with pytest.raises(CaptionError, match="empty"):
        tok.encode(caption)


def test_a_caption_of_only_unknown_words_is_refused(tok):
    with pytest.raises(CaptionError, match="no word"):
        tok.encode("zebra crossing")


def test_too_long_captions_are_refused_with_the_count(tok):
    assert tok.encode("a red circle on a blue background now").length == 8  # exactly T is fine
    with pytest.raises(CaptionError, match=r"9 words.*at most 8"):
        tok.encode("a red circle on a blue background right now")


def test_bytes_and_non_text(tok):
    assert np.array_equal(tok.encode("red circle".encode()).ids, tok.encode("red circle").ids)
    with pytest.raises(CaptionError, match="UTF-8"):
        tok.encode(b"red \xff circle")
    for bad in (None, 5, ["red"]):
        with pytest.raises(CaptionError, match="text"):
            tok.encode(bad)


def test_encode_batch_stacks_and_names_the_bad_caption(tok):
    ids = tok.encode_batch(["red circle", "green square"])
    assert ids.shape == (2, 8) and ids.dtype == np.int64
    with pytest.raises(CaptionError, match="caption 1"):
        tok.encode_batch(["red circle", ""])


def test_save_load_round_trip_keeps_the_hash(tok, tmp_path):
    path = tok.save(tmp_path / "tokenizer.json")
    again = CaptionTokenizer.from_file(path)
    assert again.sha256 == tok.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert again.max_tokens == 8 and again.vocabulary == tok.vocabulary
    assert np.array_equal(again.encode("blue square").ids, tok.encode("blue square").ids)
    other = CaptionTokenizer.train(CAPTIONS + ["orange star"], max_tokens=8)
    assert other.sha256 != tok.sha256
    assert CaptionTokenizer.train(list(reversed(CAPTIONS)), max_tokens=8).sha256 == tok.sha256  # deterministic


def test_client_tokenizer_does_not_import_torch():
    code = "import sys, langcolor.client.tokenizer; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
