"""Client side: an instruction -> ``TOKENS`` and the route, with notes on how it was read.

The route is the paper's rule: an instruction that names the sky or the ground goes to the
background network (``BACKGROUND`` = 1), any other to instance matching and the foreground network.
The previous canvas, the other input, is the codec's business, not the conditioner's.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from langcolor.client.caption import MODELS_HINT, load_tokenizer
from langcolor.client.errors import CaptionError
from langcolor.client.families import IMAGE, TEXT, Conditioned, InputField, Note
from langcolor.client.spec import ModelGeometry
from langcolor.client.tokenizer import CaptionTokenizer

from .config import BACKGROUND
from .words import BACKGROUND_WORDS, COLOURS, OBJECT_WORDS, is_background

INSTRUCTION = InputField("instruction", TEXT, 'what to colour, e.g. "the left car is red" or "the sky is blue"',
                         short="-i", examples=("the sky is blue", "the circle is red", "all the stars are yellow",
                                               "the ground is green"))
CANVAS_INPUT = InputField("canvas", IMAGE, "the picture so far (the previous answer), to continue colouring it; "
                          "default: the bare drawing", required=False)


class InstructionConditioner:
    def __init__(self, geometry: ModelGeometry, tokenizer: CaptionTokenizer) -> None:
        self.geometry = geometry
        self.tokenizer = tokenizer
        self.tensor_name = geometry.tokens.name
        vocab = set(tokenizer.vocabulary)
        self.colour_words = frozenset(c for c in COLOURS if c in vocab)

    def condition(self, values: Mapping[str, Any]) -> Conditioned:
        text = values.get(INSTRUCTION.name)
        if text is None:
            raise CaptionError(f"model '{self.geometry.family}' needs an instruction (--instruction TEXT)")
        try:
            encoded = self.tokenizer.encode(text)
        except CaptionError as e:  # the tokenizer speaks of captions; here it reads an instruction
            message = str(e).replace("caption", "instruction")
            hint = f"; {MODELS_HINT}" if "no word of the" in message else ""
            raise CaptionError(message + hint) from e
        words = encoded.words
        background = is_background(words)
        notes = []
        if encoded.unknown:
            notes.append(Note("unknown-words", f"ignored unknown words: {' '.join(encoded.unknown)}", encoded.unknown))
        if not any(w in self.colour_words for w in words):
            notes.append(Note("no-colour", "the instruction names no colour this model knows "
                              f"({', '.join(sorted(self.colour_words))}): expect an arbitrary one"))
        if background:
            named = tuple(w for w in dict.fromkeys(words) if w in BACKGROUND_WORDS)
            notes.append(Note("background", f"background instruction ({' and '.join(named)}): "
                              "the background network colours it", named))
            objects = tuple(w for w in dict.fromkeys(words) if w in OBJECT_WORDS)
            if objects:
                notes.append(Note("mixed", "an instruction colours the background or objects, not both: "
                                  f"ignored {' '.join(objects)} (give them an instruction of their own)", objects))
        tensors = {self.tensor_name: encoded.ids, BACKGROUND: np.array([int(background)], np.int64)}
        return Conditioned(tensors, tuple(notes))

    def describe(self) -> dict:
        tok = self.tokenizer
        return {
            "tokenizer": "word level",
            "max_tokens": tok.max_tokens,
            "vocab_size": tok.vocab_size,
            "colour_words": sorted(self.colour_words),
            "known_words": sorted(w for w in tok.vocabulary if not w.startswith("[")),
            "notes": "instructions naming the sky or the ground go to the background network",
        }


def build(geometry: ModelGeometry, assets: Mapping[str, bytes]) -> InstructionConditioner:
    return InstructionConditioner(geometry, load_tokenizer(geometry, assets))


__all__ = ["INSTRUCTION", "CANVAS_INPUT", "InstructionConditioner", "build"]
