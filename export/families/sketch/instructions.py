"""Instructions about a scene, and what each one asks for.

Forms (``kind``):

- ``single``    "the {cat} is {c}"                   (one {cat} in the scene)
- ``part``      "the {cat} is {c1} with {c2} {part}"  (one {cat}; house roof, car windows, tree trunk)
- ``location``  "the {loc} {cat} is {c}"             (two or three; the one furthest {loc} by a margin)
- ``all``       "all the {cat}s are {c}"
- ``background`` "the sky is {c}", "the ground is {c}", "the sky is {c1} and the ground is {c2}"
  (either order)

Held out of training, for testing paraphrases: ``colorize`` "colorize the {cat} with {c}" and
``short`` "{c} {cat}" (one {cat} in the scene); and one instruction naming two categories, ``two``
"the {cat1} and the {cat2} are {c}" (one of each), which the paper's one-referent RMI was never
asked to read. Selection is scored per ``group``: single (single and part forms), all, location; the
held-out forms in their own groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .drawing import Scene
from .words import CATEGORIES, COLOURS, GROUND, LOCATIONS, PARTS, PLURALS, SKY

LOCATION_MARGIN = 6.0  # units: the target is this much further left (right, ...) than every other of its kind

TRAINED_KINDS = ("single", "part", "location", "all", "background")
HELDOUT_KINDS = ("colorize", "short")
MULTI_KINDS = ("two",)  # held out too: two categories in one instruction, reported apart
GROUPS = {"single": "single", "part": "single", "location": "location", "all": "all",
          "colorize": "heldout colorize", "short": "heldout short", "two": "heldout 2 categories",
          "background": "background"}


@dataclass(frozen=True)
class Instruction:
    text: str
    kind: str
    targets: tuple[int, ...] = ()  # the scene's items it refers to (foreground)
    colour: str | None = None  # the colour of the targets (all of them, or their body when a part is named)
    part_colour: str | None = None  # the named part's colour
    regions: dict = field(default_factory=dict)  # background: {"sky": colour, "ground": colour}

    @property
    def background(self) -> bool:
        return bool(self.regions)

    @property
    def group(self) -> str:
        return GROUPS[self.kind]

    def colours(self) -> tuple[str, ...]:
        """Every colour word, in order of appearance."""
        if self.background:
            return tuple(self.regions.values())
        return (self.colour,) + ((self.part_colour,) if self.part_colour else ())

    def recoloured(self, mapping: dict[str, str]) -> "Instruction":
        """The same instruction with its colour words replaced (the swap test)."""
        words = [mapping.get(w, w) for w in self.text.split(" ")]
        return replace(
            self, text=" ".join(words),
            colour=mapping.get(self.colour, self.colour) if self.colour else None,
            part_colour=mapping.get(self.part_colour, self.part_colour) if self.part_colour else None,
            regions={k: mapping.get(v, v) for k, v in self.regions.items()},
        )


def of_category(scene: Scene, category: str) -> list[int]:
    return [i for i, it in enumerate(scene.items) if it.category == category]


def extreme(scene: Scene, members: list[int], location: str) -> int | None:
    """The member furthest towards ``location`` by at least LOCATION_MARGIN (units), else None."""
    axis = 0 if location in ("left", "right") else 1
    sign = 1.0 if location in ("left", "top") else -1.0
    keyed = sorted(members, key=lambda i: sign * scene.items[i].centre[axis])
    if len(keyed) < 2:
        return None
    first, second = (scene.items[i].centre[axis] for i in keyed[:2])
    return keyed[0] if sign * (second - first) >= LOCATION_MARGIN else None


def possible(scene: Scene, kind: str) -> list[tuple]:
    """Every (category, extra) an instruction of ``kind`` may be about in ``scene``."""
    cats = sorted({it.category for it in scene.items})
    if kind in ("single", "colorize", "short"):
        return [(c, None) for c in cats if len(of_category(scene, c)) == 1]
    if kind == "part":
        return [(c, None) for c in cats if c in PARTS and len(of_category(scene, c)) == 1]
    if kind == "all":
        return [(c, None) for c in cats]
    if kind == "location":
        out = []
        for c in cats:
            members = of_category(scene, c)
            if len(members) >= 2:
                out += [(c, loc) for loc in LOCATIONS if extreme(scene, members, loc) is not None]
        return out
    if kind == "two":
        alone = [c for c in cats if len(of_category(scene, c)) == 1]
        return [(a, b) for i, a in enumerate(alone) for b in alone[i + 1:]]
    if kind == "background":
        return [("sky", None), ("ground", None), ("both", None)]
    raise ValueError(kind)


def make(scene: Scene, kind: str, choice: tuple, rng: np.random.Generator,
         colours: tuple[str, ...] | None = None) -> Instruction:
    """The instruction of ``kind`` about ``choice`` (from ``possible``), colours drawn from the
    palette unless given."""
    cat, extra = choice
    need = 2 if kind == "part" or (kind == "background" and cat == "both") else 1
    picked = colours or tuple(str(c) for c in rng.choice(COLOURS, size=need, replace=False))
    c = picked[0]
    if kind == "background":
        if cat == "both":
            order = (SKY, GROUND) if rng.random() < 0.5 else (GROUND, SKY)
            regions = dict(zip(order, picked[:2]))
            text = f"the {order[0]} is {picked[0]} and the {order[1]} is {picked[1]}"
        else:
            regions = {cat: c}
            text = f"the {cat} is {c}"
        return Instruction(text, kind, regions=regions)
    members = of_category(scene, cat)
    if kind == "location":
        return Instruction(f"the {extra} {cat} is {c}", kind, (extreme(scene, members, extra),), c)
    if kind == "all":
        return Instruction(f"all the {PLURALS[cat]} are {c}", kind, tuple(members), c)
    if kind == "part":
        return Instruction(f"the {cat} is {c} with {picked[1]} {PARTS[cat]}", kind, tuple(members), c, picked[1])
    if kind == "two":
        return Instruction(f"the {cat} and the {extra} are {c}", kind, tuple(members + of_category(scene, extra)), c)
    text = {"single": f"the {cat} is {c}", "colorize": f"colorize the {cat} with {c}", "short": f"{c} {cat}"}[kind]
    return Instruction(text, kind, tuple(members), c)


def random_instruction(scene: Scene, kinds: tuple[str, ...], rng: np.random.Generator,
                       weights: tuple[float, ...] | None = None) -> Instruction | None:
    """One instruction of one of ``kinds`` that the scene allows (None if it allows none)."""
    options = [(k, p) for k in kinds for p in possible(scene, k)]
    if not options:
        return None
    if weights is not None:  # first a kind by weight (among those possible), then one of its choices
        allowed = [k for k in kinds if any(o[0] == k for o in options)]
        w = np.array([weights[kinds.index(k)] for k in allowed], float)
        kind = allowed[int(rng.choice(len(allowed), p=w / w.sum()))]
        options = [o for o in options if o[0] == kind]
    kind, choice = options[int(rng.integers(len(options)))]
    return make(scene, kind, choice, rng)


def vocabulary_texts() -> list[str]:
    """One instruction per trained form and word: every word the model is taught, none it is not
    (the held-out paraphrases' "colorize" stays unknown)."""
    texts = []
    for c in COLOURS:
        texts.append(f"the sky is {c} and the ground is {c}")
        for cat in CATEGORIES:
            texts += [f"the {cat} is {c}", f"all the {PLURALS[cat]} are {c}"]
            texts += [f"the {loc} {cat} is {c}" for loc in LOCATIONS]
            if cat in PARTS:
                texts.append(f"the {cat} is {c} with {c} {PARTS[cat]}")
    return texts
