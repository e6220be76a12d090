"""``langcolor evaluate --model sketch``: does the model colour what the instructions name, and only that?

Scored on fresh synthetic drawings (``default_rng([seed, ...])`` streams the training never draws from),
drawn at 2 and 4 times the network's side and run through the product's own path (the codec's
``prepare``/``finish`` at full resolution around the PyTorch network), so the figures are those a
user of ``langcolor sketch`` gets:

- **referring stroke mIoU**: per foreground instruction, IoU of R > 0.5 with the referred objects,
  counted on ink pixels at S (the paper's measure); also after selection (the union of selected objects);
- **selection F1** over objects, per group: single (incl. the part form), all, location, and the two
  held-out paraphrases and the held-out two-category form ("the car and the tree are red") apart;
- **instance colour**: a referred object counts when the mean of its paper (without a separately named
  part) is nearest, among the palette and the bare paper, to the instructed colour; parts apart;
- **swap**: the same drawings and instructions with each colour word replaced by another;
- **locality, exact**: every pixel outside the coloured objects or regions equals the previous canvas,
  and ink is black; and non-referred objects of the referred category keep their previous colour;
- **sessions**: 4-6 instructions on one drawing, foreground and background mixed, at least one object
  coloured again later; a session counts when every instructed object ends in its last colour;
- **background**: the named region's mean colour (sky, ground); sky/ground pixel accuracy at S.

Baselines on the same drawings: the network fed an all-padding instruction (``instruction-free``), and
for selection the rule "select every object of the named category" (``category rule``), which the
location words must beat.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from langcolor.client.spec import PAD_ID

from . import regions
from .codec import SKETCH_CODEC, PreparedSketch
from .config import BACKGROUND, CANVAS, INST_MASKS, REFERRED, SKETCH
from .drawing import Scene, match_items, random_scene
from .instructions import HELDOUT_KINDS, MULTI_KINDS, Instruction, make, possible, random_instruction
from .network import GROUND, SKY
from .words import COLOURS, PALETTE, PARTS, SKY as SKY_WORD

EVAL_SCALES = (2, 4)  # drawings at 128 and 256 px for a 64 px network
GATES = {"stroke_miou": 0.8, "selection_f1": 0.9, "instance_colour": 0.85, "swap": 0.9, "sessions": 0.8,
         "background_colour": 0.9}
_NAMES = COLOURS + ("paper",)
_RGB = np.array([PALETTE[c] for c in COLOURS] + [(255, 255, 255)], np.float32)  # paper: left uncoloured
FG_KINDS = ("single", "part", "location", "all") + HELDOUT_KINDS
SELECTION_GROUPS = ("single", "all", "location", "heldout colorize", "heldout short", "heldout 2 categories")
UNGATED_KINDS = HELDOUT_KINDS + MULTI_KINDS  # reported, in neither the gated figures nor the swap


def read_colour(rgb: np.ndarray, where: np.ndarray) -> str | None:
    """The palette colour (or "paper") nearest to the mean of ``rgb`` [H, W, 3] over ``where``."""
    if not where.any():
        return None
    mean = rgb[where].astype(np.float32).mean(0)
    return _NAMES[int(np.argmin(((_RGB - mean) ** 2).sum(1)))]


@dataclass(frozen=True)
class Rate:
    model: float
    count: int
    baseline: float | None = None  # the same figure for a baseline, where one is given

    @classmethod
    def of(cls, hits: list[bool], base: list[bool] | None = None) -> "Rate":
        value = float(np.mean(hits)) if hits else float("nan")
        return cls(value, len(hits), float(np.mean(base)) if base else None)


@dataclass(frozen=True)
class F1:
    model: float
    count: int  # instructions
    instruction_free: float
    category_rule: float


def f1_of(tp: int, fp: int, fn: int) -> float:
    return float(2 * tp / max(2 * tp + fp + fn, 1))


@dataclass(frozen=True)
class SketchReport:
    scenes: int
    seed: int
    stroke_miou: Rate
    stroke_miou_selected: Rate
    selection_f1: dict  # group -> F1
    instance_colour: Rate
    part_colour: Rate
    part_colour_by_part: dict  # roof / windows / trunk -> Rate
    instance_colour_by_group: dict  # group -> Rate
    swap: Rate
    locality_exact: Rate
    same_category_untouched: Rate
    sessions: Rate
    session_objects: Rate
    background_colour: Rate
    sky_ground_pixels: Rate
    unknown_words: dict = field(default_factory=dict)

    def gates(self) -> dict[str, bool]:
        """Each target of the issue: met or not."""
        trained = [self.selection_f1[g].model for g in ("single", "all", "location")]
        return {k: bool(v) for k, v in {
            "stroke mIoU >= 0.8": self.stroke_miou.model >= GATES["stroke_miou"],
            "selection F1 >= 0.9 (single, all, location)": min(trained) >= GATES["selection_f1"],
            "instance colour >= 85%": self.instance_colour.model >= GATES["instance_colour"],
            "swap >= 90%": self.swap.model >= GATES["swap"],
            "locality exact": self.locality_exact.model == 1.0,
            "sessions >= 80%": self.sessions.model >= GATES["sessions"],
            "background colour >= 90%": self.background_colour.model >= GATES["background_colour"],
        }.items()}

    def to_dict(self) -> dict:
        return {**asdict(self), "gates": self.gates()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary_lines(self) -> list[str]:
        def row(name: str, r: Rate, base: str = "instruction-free") -> str:
            extra = f"   {base} {100 * r.baseline:5.1f}%" if r.baseline is not None else ""
            return f"  {name:<34} {100 * r.model:6.1f}%{extra}   (n={r.count})"

        lines = [f"  {'referring stroke mIoU':<34} {self.stroke_miou.model:7.3f}   after selection "
                 f"{self.stroke_miou_selected.model:.3f}   (n={self.stroke_miou.count})"]
        for group, f in self.selection_f1.items():
            lines.append(f"  {'selection F1, ' + group:<34} {f.model:7.3f}   instruction-free {f.instruction_free:.3f}"
                         f"   category rule {f.category_rule:.3f}   (n={f.count})")
        lines += [row("instance colour", self.instance_colour)]
        lines += [row(f"  {g}", r) for g, r in self.instance_colour_by_group.items()]
        lines += [row("part colour", self.part_colour)]
        lines += [row(f"  {p}", r) for p, r in self.part_colour_by_part.items()]
        lines += [row("swap", self.swap),
                  row("locality exact (instructions)", self.locality_exact),
                  row("same-category others untouched", self.same_category_untouched),
                  row("sessions, all objects right", self.sessions), row("  objects right at the end", self.session_objects),
                  row("background region colour", self.background_colour), row("sky/ground pixels at S", self.sky_ground_pixels)]
        lines += [f"  target {name}: {'met' if ok else 'MISSED'}" for name, ok in self.gates().items()]
        if self.unknown_words:
            lines.append("  words unknown to the tokenizer: " + ", ".join(f"{w} ({n})" for w, n in self.unknown_words.items()))
        return lines


# --- running the product path around the PyTorch network ----------------------------------------------


@dataclass
class Run:
    """One instruction applied to one drawing: what went in and what came out."""

    scene: Scene
    instruction: Instruction
    prepared: PreparedSketch
    before: np.ndarray  # uint8 [H, W, 3]
    after: np.ndarray  # uint8 [H, W, 3]
    outputs: dict  # the network's outputs for this drawing (per sample)


class Runner:
    def __init__(self, model: torch.nn.Module, conditioner, batch_size: int = 32) -> None:
        self.model, self.conditioner, self.batch_size = model.eval(), conditioner, batch_size
        self.geometry = model.geometry
        self.unknown: dict[str, int] = {}

    @torch.no_grad()
    def run(self, items: list[tuple[Scene, Instruction, np.ndarray | None]], blind: bool = False) -> list[Run]:
        """(scene, instruction, previous canvas or None) -> runs; ``blind`` feeds all-padding tokens
        (the instruction-free baseline), routed as the instruction would be."""
        runs: list[Run] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            prepared, feeds = [], []
            for scene, ins, canvas in chunk:
                p = SKETCH_CODEC.prepare(scene.rgb(), {"canvas": canvas}, self.geometry)
                cond = self.conditioner.condition({"instruction": ins.text})
                for w in next((n.words for n in cond.notes if n.kind == "unknown-words"), ()):
                    self.unknown[w] = self.unknown.get(w, 0) + (not blind)
                tensors = dict(cond.tensors)
                if blind:
                    tensors[self.geometry.tokens.name] = np.full_like(tensors[self.geometry.tokens.name], PAD_ID)
                prepared.append(p)
                feeds.append({**SKETCH_CODEC.feeds(p, self.geometry), **tensors})
            stacked = {k: torch.from_numpy(np.stack([f[k] for f in feeds])) for k in feeds[0]}
            outs = self.model(stacked[SKETCH], stacked[INST_MASKS], stacked[self.geometry.tokens.name],
                              stacked[CANVAS], stacked[BACKGROUND])
            names = [t.name for t in self.geometry.outputs]
            for i, ((scene, ins, _), p) in enumerate(zip(chunk, prepared)):
                mine = {n: o[i].numpy() for n, o in zip(names, outs)}
                after, _ = SKETCH_CODEC.finish(p, mine)
                runs.append(Run(scene, ins, p, p.canvas, after, mine))
        return runs


# --- scoring -------------------------------------------------------------------------------------------


def _scene(rng: np.random.Generator, size_base: int, copies=(1, 2, 3), distractors=(0, 1, 2)) -> Scene:
    scale = int(rng.choice(EVAL_SCALES))
    return random_scene(rng, size_base * scale, int(rng.integers(1, scale + 1)), copies=int(rng.choice(copies)),
                        distractors=int(rng.choice(distractors)))


def _slots(run: Run) -> list[int] | None:
    return match_items(run.scene, run.prepared.proposals, run.prepared.sketch.shape[-1])


def _body(scene: Scene, i: int, without_part: bool) -> np.ndarray:
    where = scene.silhouettes[i] & ~scene.ink
    return where & ~scene.parts[i] if without_part else where


def _colour_hits(run: Run) -> tuple[list[bool], list[tuple[str, bool]]]:
    """Per referred object: its body in the instructed colour; per named part: (part, in its colour)."""
    ins, scene = run.instruction, run.scene
    body = [read_colour(run.after, _body(scene, i, bool(ins.part_colour))) == ins.colour for i in ins.targets]
    parts = []
    if ins.part_colour:
        parts = [(PARTS[scene.items[i].category], read_colour(run.after, scene.parts[i] & ~scene.ink) == ins.part_colour)
                 for i in ins.targets if (scene.parts[i] & ~scene.ink).any()]
    return body, parts


def _local(run: Run) -> bool:
    """Exactly the selected objects' (or named regions') paper changed, and ink is black."""
    changed = (run.after != run.before).any(-1)
    full = run.prepared.full
    chosen = [k for k in range(run.prepared.proposals.count) if run.outputs["SELECTED"][k] > 0.5]
    allowed = np.isin(full.owner, chosen) | full.strokes
    if run.outputs["REGIONS"].max() > 0.5:
        allowed |= full.background > 0
    return bool(not (changed & ~allowed).any() and (run.after[full.strokes] == 0).all())


def _stroke_iou(run: Run, slots: list[int]) -> tuple[float, float] | None:
    ink = run.prepared.sketch[0] > 0.5
    masks = run.prepared.masks > 0.5
    truth = np.zeros_like(ink)
    for k, item in enumerate(slots):
        if item in run.instruction.targets:
            truth |= masks[k]
    pred = run.outputs[REFERRED][0] > 0.5
    chosen = np.zeros_like(ink)
    for k in range(len(slots)):
        if run.outputs["SELECTED"][k] > 0.5:
            chosen |= masks[k]
    iou = lambda p: (p & truth & ink).sum() / max(((p | truth) & ink).sum(), 1)  # noqa: E731
    return (float(iou(pred)), float(iou(chosen))) if (truth & ink).any() else None


def _swap_map(rng: np.random.Generator) -> dict[str, str]:
    """A permutation of the palette without fixed points."""
    while True:
        perm = rng.permutation(len(COLOURS))
        if (perm != np.arange(len(COLOURS))).all():
            return {c: COLOURS[j] for c, j in zip(COLOURS, perm)}


def _session(scene: Scene, rng: np.random.Generator) -> list[Instruction]:
    """4-6 instructions, about a quarter background, with at least one object coloured again later in
    another colour."""
    n = int(rng.integers(4, 7))
    steps: list[Instruction] = []
    for _ in range(n):
        kinds = ("background",) if rng.random() < 0.25 else ("single", "part", "location", "all")
        ins = random_instruction(scene, kinds, rng) or random_instruction(scene, ("all",), rng)
        steps.append(ins)
    coloured = [s for s in steps[:-1] if s.targets]
    if not any(set(a.targets) & set(b.targets) and a.colour != b.colour
               for i, a in enumerate(steps) for b in steps[i + 1 :] if a.targets and b.targets) and coloured:
        first = coloured[int(rng.integers(len(coloured)))]
        cat = scene.items[first.targets[0]].category
        again = make(scene, "all", (cat, None), rng, (str(rng.choice([c for c in COLOURS if c != first.colour])),))
        at = steps.index(first) + 1 + int(rng.integers(len(steps) - steps.index(first) - 1))
        steps[at] = again
    return steps


def _session_state(scene: Scene, steps: list[Instruction]) -> tuple[dict, dict]:
    """The last instructed (body colour, part named apart) per object, and colour per region."""
    objects, regions_ = {}, {}
    for ins in steps:
        for i in ins.targets:
            objects[i] = (ins.colour, bool(ins.part_colour))
        regions_.update(ins.regions)
    return objects, regions_


def _region_mask(scene: Scene, name: str) -> np.ndarray:
    labels, border = regions.paper_regions(scene.ink)
    background = border[labels] & (labels > 0)
    sky = scene.sky()
    return background & (sky if name == SKY_WORD else ~sky)


def evaluate(model: torch.nn.Module, conditioner, scenes: int = 256, seed: int = 0) -> SketchReport:
    base = model.cfg.image_size
    rng = np.random.default_rng([seed, 4_000_001])
    runner = Runner(model, conditioner)
    items, swaps, backgrounds = [], [], []
    drawn = [_scene(rng, base) for _ in range(scenes)]
    for scene in drawn:
        for kind in FG_KINDS:
            options = possible(scene, kind)
            if options:
                ins = make(scene, kind, options[int(rng.integers(len(options)))], rng)
                items.append((scene, ins, None))
                if kind not in HELDOUT_KINDS:
                    swaps.append((scene, ins.recoloured(_swap_map(rng)), None))
        backgrounds.append((scene, random_instruction(scene, ("background",), rng), None))
    multi_rng = np.random.default_rng([seed, 4_000_002])  # its own stream: the other figures stay as they were
    for scene in drawn:
        for kind in MULTI_KINDS:
            options = possible(scene, kind)
            if options:
                items.append((scene, make(scene, kind, options[int(multi_rng.integers(len(options)))], multi_rng), None))
    runs, blind = runner.run(items), runner.run(items, blind=True)
    swapped, bg_runs, bg_blind = runner.run(swaps), runner.run(backgrounds), runner.run(backgrounds, blind=True)

    counts = {g: np.zeros((3, 3), int) for g in SELECTION_GROUPS}  # rows: model, blind, rule; cols: tp, fp, fn
    n_group = {g: 0 for g in SELECTION_GROUPS}
    ious, ious_sel = [], []
    colour_hits, colour_base, part_hits, by_group = [], [], [], {}
    local, untouched = [], []
    for run, off in zip(runs, blind):
        slots = _slots(run)
        if slots is None:
            continue
        group, ins = run.instruction.group, run.instruction
        truth = np.array([s in ins.targets for s in slots])
        named = {run.scene.items[i].category for i in ins.targets}
        rule = np.array([run.scene.items[s].category in named for s in slots])
        for row, pick in enumerate((run.outputs["SELECTED"][: len(slots)] > 0.5, off.outputs["SELECTED"][: len(slots)] > 0.5, rule)):
            counts[group][row] += [(pick & truth).sum(), (pick & ~truth).sum(), (~pick & truth).sum()]
        n_group[group] += 1
        iou = _stroke_iou(run, slots)
        if iou is not None and ins.kind not in UNGATED_KINDS:
            ious.append(iou[0])
            ious_sel.append(iou[1])
        body, parts = _colour_hits(run)
        by_group.setdefault(group, ([], []))
        by_group[group][0].extend(body)
        by_group[group][1].extend(_colour_hits(off)[0])
        if ins.kind not in UNGATED_KINDS:
            colour_hits += body
            colour_base += _colour_hits(off)[0]
            part_hits += parts
        local.append(_local(run))
        others = [i for i, it in enumerate(run.scene.items) if it.category in named and i not in ins.targets]
        untouched += [bool((run.after[_body(run.scene, i, False)] == run.before[_body(run.scene, i, False)]).all())
                      for i in others]
    swap_hits = [h for run in swapped if _slots(run) is not None for h in _colour_hits(run)[0]]

    bg_hits, bg_base, seg_hits = [], [], []
    for run, off in zip(bg_runs, bg_blind):
        for name, colour in run.instruction.regions.items():
            where = _region_mask(run.scene, name)
            bg_hits.append(read_colour(run.after, where) == colour)
            bg_base.append(read_colour(off.after, where) == colour)
        local.append(_local(run))
        seg = run.outputs["BG_SEG"]
        s = seg.shape[-1]
        paper = (run.prepared.masks.max(0) < 0.5) & (run.prepared.sketch[0] < 0.5)
        rows = (np.arange(s) + 0.5) * run.scene.size / s < run.scene.horizon
        truth = np.broadcast_to(rows[:, None], (s, s))
        seg_hits.append(float(((seg[SKY] >= seg[GROUND]) == truth)[paper].mean()))

    sessions, session_objects = _sessions(runner, rng, base, max(1, scenes // 2))
    f1 = {g: F1(f1_of(*counts[g][0]), n_group[g], f1_of(*counts[g][1]), f1_of(*counts[g][2]))
          for g in SELECTION_GROUPS if n_group[g]}
    return SketchReport(
        scenes=scenes, seed=seed,
        stroke_miou=Rate.of(ious), stroke_miou_selected=Rate.of(ious_sel), selection_f1=f1,
        instance_colour=Rate.of(colour_hits, colour_base), part_colour=Rate.of([h for _, h in part_hits]),
        part_colour_by_part={p: Rate.of([h for q, h in part_hits if q == p]) for p in sorted({q for q, _ in part_hits})},
        instance_colour_by_group={g: Rate.of(*v) for g, v in by_group.items()},
        swap=Rate.of(swap_hits), locality_exact=Rate.of(local), same_category_untouched=Rate.of(untouched),
        sessions=Rate.of(sessions), session_objects=Rate.of(session_objects),
        background_colour=Rate.of(bg_hits, bg_base), sky_ground_pixels=Rate(float(np.mean(seg_hits)), len(seg_hits)),
        unknown_words=dict(sorted(runner.unknown.items(), key=lambda kv: -kv[1])),
    )


def _sessions(runner: Runner, rng: np.random.Generator, base: int, n: int) -> tuple[list[bool], list[bool]]:
    """Whole sessions, every step's canvas the previous step's answer; scored at the end."""
    plans = []
    while len(plans) < n:
        scene = _scene(rng, base, copies=(2, 3), distractors=(1, 2))
        plans.append((scene, _session(scene, rng)))
    canvases: list[np.ndarray | None] = [None] * n
    for step in range(max(len(p[1]) for p in plans)):
        live = [i for i, (_, steps) in enumerate(plans) if step < len(steps)]
        runs = runner.run([(plans[i][0], plans[i][1][step], canvases[i]) for i in live])
        for i, run in zip(live, runs):
            canvases[i] = run.after
    done, per_object = [], []
    for (scene, steps), final in zip(plans, canvases):
        objects, named = _session_state(scene, steps)
        ok = [read_colour(final, _body(scene, i, apart)) == colour for i, (colour, apart) in objects.items()]
        ok += [read_colour(final, _region_mask(scene, r)) == colour for r, colour in named.items()]
        done.append(all(ok))
        per_object += ok
    return done, per_object
