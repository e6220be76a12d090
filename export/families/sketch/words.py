"""The words a sketch instruction is made of, and the rule that routes it: torch-free, shared by the
generator, the conditioner and the evaluation.

Colours come from one named palette used for every category and for the sky and the ground (a
category has no colour of its own). An instruction that names ``sky`` or ``ground`` goes to the
background network, as in the paper, where the mode is picked from the category word.
"""

from __future__ import annotations

import numpy as np

# name -> sRGB 0-255. A colour word covers a range of RGB: training targets are jittered around these
# centres by up to COLOUR_JITTER per channel, and a predicted colour is read back as its nearest centre.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 215, 40),
    "green": (50, 165, 60),
    "blue": (40, 90, 215),
    "purple": (135, 60, 185),
    "pink": (245, 135, 195),
    "brown": (130, 80, 35),
    "gray": (135, 135, 135),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
COLOUR_JITTER = 12  # RGB units (0-255): the spread of one colour word in the training targets
_PALETTE_RGB = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32) / 255.0  # [C,3] in [0,1]

CATEGORIES: tuple[str, ...] = ("circle", "square", "triangle", "star", "house", "car", "tree")
PLURALS: dict[str, str] = {c: c + "s" for c in CATEGORIES}
# The part an instruction may colour apart ("the house is red with blue roof"), per category.
PARTS: dict[str, str] = {"house": "roof", "car": "windows", "tree": "trunk"}
LOCATIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
SKY, GROUND = "sky", "ground"
BACKGROUND_WORDS = frozenset({SKY, GROUND})
REGIONS: tuple[str, ...] = (SKY, GROUND)  # the order of the REGIONS output
OBJECT_WORDS = frozenset(CATEGORIES) | frozenset(PLURALS.values())


def is_background(words: tuple[str, ...] | list[str]) -> bool:
    """The paper's routing rule: an instruction naming the sky or the ground is a background one."""
    return any(w in BACKGROUND_WORDS for w in words)


def nearest_colour(rgb: np.ndarray) -> str:
    """A mean colour (3 values in [0, 1]) -> the palette name nearest in RGB."""
    d = ((_PALETTE_RGB - np.asarray(rgb, np.float32).reshape(1, 3)) ** 2).sum(-1)
    return COLOURS[int(np.argmin(d))]


def colour_rgb(name: str) -> np.ndarray:
    """The palette centre of ``name`` as float32 [3] in [0, 1]."""
    return np.array(PALETTE[name], np.float32) / 255.0
