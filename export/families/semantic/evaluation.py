"""Does the automatic colorizer know what things are, and does it sample coherent, diverse colours?

Scored on held-out synthetic scenes (``data``, split ``test``), with the sampler itself
(``sampler.Sampler``, the code that serves requests) running over the PyTorch stages:

- segmentation: mean IoU of h_phi's classes against the per-block majority class (16x16);
- class-consistent colour: one sample per scene (seed = scene index, temperature 1); an instance's
  mean sampled ab is nearest (among every class colour) to its own class's colour. Unimodal
  instances are the figure; bimodal ones (either of their two colours) and the background are
  given beside it;
- override: the true semantic map through ``SEM_OVERRIDE``, then the same map with one instance
  relabelled to another shape class, same seed: the share of relabelled instances whose colour
  moves to the new class's colour, and the share of the other regions (instances and background)
  whose colour stays (same nearest colour, mean moved less than ``STAY_LAB`` Lab units);
- diversity: every bimodal instance of the first scenes that have one, sampled with ``SEEDS``
  seeds: the share of samples taking each of its class's two colours, and purity, the share of the
  instance's pixels nearer to the colour most of them took. Beside it, the same figures for
  independent per-pixel sampling from f_theta's own mixture (what a non-autoregressive colorizer
  does): similar shares, but pixels that disagree with each other ("colour pollution");
- reproducibility: a scene sampled twice with one seed is identical, and differs with another.

Pixels counted for an instance are the blocks wholly inside it (``ChromaScene.pure``); an instance
with none (a thin ring) counts its majority blocks.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from langcolor.client.lab import AB_SCALE
from langcolor.client.spec import stage_specs

from . import data
from .config import BIMODAL, CLASS_COLOURS, CLASSES, SEED, SEM_OVERRIDE, TEMPERATURE
from .sampler import Sampler, draw, uniforms

SEEDS = 32  # samples per bimodal instance in the diversity test
DIVERSITY_SCENES = 32  # scenes with a bimodal instance, at most
STAY_LAB = 5.0  # Lab units: an untouched region "stays" if its mean moves less than this (and keeps its colour)
BATCH = 64  # images per sampler call
PURE_TARGET = 0.9


@dataclass(frozen=True)
class Share:
    value: float
    count: int

    @staticmethod
    def of(hits: list[bool]) -> "Share":
        return Share(float(np.mean(hits)) if hits else float("nan"), len(hits))


@dataclass(frozen=True)
class Diversity:
    mode_share: dict  # class -> {colour: share of samples}
    purity: float  # mean share of an instance's pixels in its dominant colour
    pure_samples: float  # share of samples with purity >= PURE_TARGET
    instances: int
    samples: int


@dataclass(frozen=True)
class SemanticReport:
    scenes: int
    seed: int
    miou: float
    iou: dict  # class -> IoU
    class_colour: Share  # unimodal instances at their class's colour
    class_colour_by_class: dict  # class -> Share
    bimodal_colour: Share  # bimodal instances at either of their class's colours
    background_colour: Share
    override_moved: Share
    override_stayed: Share  # every other region of the relabelled scenes
    override_shift_lab: float  # mean |change| of those regions' mean ab
    diversity: Diversity  # the sampler
    independent: Diversity  # independent per-pixel sampling from f_theta's mixture
    reproducible: bool
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary_lines(self) -> list[str]:
        def pct(x: float) -> str:
            return f"{100 * x:5.1f}%"

        lines = [
            f"segmentation mIoU (16x16)         {self.miou:.3f}  ("
            + ", ".join(f"{c} {v:.2f}" for c, v in self.iou.items()) + ")",
            f"class-consistent colour           {pct(self.class_colour.value)} of {self.class_colour.count} unimodal instances",
            "  by class: " + ", ".join(f"{c} {pct(s['value']).strip()}" for c, s in self.class_colour_by_class.items()),
            f"  bimodal at one of their colours {pct(self.bimodal_colour.value)} of {self.bimodal_colour.count}",
            f"  background                      {pct(self.background_colour.value)} of {self.background_colour.count}",
            f"override moves a relabelled one   {pct(self.override_moved.value)} of {self.override_moved.count}",
            f"  other regions unchanged         {pct(self.override_stayed.value)} of {self.override_stayed.count} "
            f"(mean shift {self.override_shift_lab:.2f} Lab units)",
        ]
        for name, d in (("sampler", self.diversity), ("independent per-pixel (f_theta)", self.independent)):
            shares = "; ".join(f"{c}: " + ", ".join(f"{k} {pct(v).strip()}" for k, v in m.items())
                               for c, m in d.mode_share.items())
            lines.append(f"diversity, {name}: {shares}; purity {pct(d.purity).strip()}, "
                         f"samples >= {PURE_TARGET:.0%} pure {pct(d.pure_samples).strip()} "
                         f"({d.instances} instances x {SEEDS} seeds)")
        lines.append(f"seeded reproducibility            {'yes' if self.reproducible else 'NO'}")
        lines += [f"note: {n}" for n in self.notes]
        return lines


# ------------------------------------------------------------------------------------- running
def torch_call_stage(model: torch.nn.Module):
    """``call_stage`` for the sampler over the PyTorch stages (numpy in, numpy out)."""
    specs = stage_specs(model.geometry)

    def call(stage: str, feeds) -> dict[str, np.ndarray]:
        spec, module = specs[stage], getattr(model, stage)
        with torch.no_grad():
            out = module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in spec.input_names))
        out = out if isinstance(out, tuple) else (out,)
        return {name: o.numpy() for name, o in zip(spec.output_names, out)}

    return call


def sample(model, L: np.ndarray, seeds: np.ndarray, override: np.ndarray | None = None,
           temperature: float = 1.0) -> dict[str, np.ndarray]:
    """The sampler over the PyTorch stages, in batches: L [N,1,S,S] -> AB [N,2,Q,Q], SEG [N,Q,Q]."""
    g = model.geometry
    k, q = model.cfg.num_classes, model.cfg.chroma_size
    call, driver, outs = torch_call_stage(model), Sampler(), []
    for start in range(0, len(L), BATCH):
        n = min(BATCH, len(L) - start)
        feeds = {
            g.image.name: L[start : start + n].astype(np.float32),
            SEED: seeds[start : start + n, None].astype(np.int64),
            TEMPERATURE: np.full((n, 1), temperature, np.float32),
            SEM_OVERRIDE: (np.zeros((n, k, q, q), np.float32) if override is None else override[start : start + n]),
        }
        outs.append(driver.run(call, feeds, g))
    return {name: np.concatenate([o[name] for o in outs]) for name in outs[0]}


def _cells(c: data.ChromaScene, instance: int) -> np.ndarray:
    """bool [Q,Q]: the blocks that speak for an instance (0 = the background)."""
    mine = c.instances == instance
    return mine & c.pure if (mine & c.pure).any() else mine


def _mean_ab(ab: np.ndarray, cells: np.ndarray) -> np.ndarray:  # ab [2,Q,Q] -> [2]
    return ab[:, cells].mean(1)


def _colour_class(mean: np.ndarray) -> int:
    return int(data.MODE_CLASS[data.nearest_mode(mean)])


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:  # [N,Q,Q] -> [N,K,Q,Q]
    return np.eye(k, dtype=np.float32)[labels].transpose(0, 3, 1, 2).copy()


def _diversity(ab_samples: np.ndarray, cells: list[np.ndarray], classes: list[int]) -> Diversity:
    """ab_samples [I, SEEDS, 2, Q, Q]: per instance, its samples; two-colour classes only."""
    shares: dict[str, list[int]] = {}
    purity, pure = [], []
    for samples, where, cls in zip(ab_samples, cells, classes):
        modes = data.MODES[cls]  # [2,2]
        for ab in samples:
            px = ab[:, where].T  # [P,2]
            nearest = ((px[:, None] - modes[None]) ** 2).sum(-1).argmin(1)  # [P]
            counts = np.bincount(nearest, minlength=len(modes))
            dominant = int(counts.argmax())
            shares.setdefault(CLASSES[cls], []).append(dominant)
            purity.append(counts[dominant] / counts.sum())
            pure.append(purity[-1] >= PURE_TARGET)
    mode_share = {c: {colour: float(np.mean(np.array(d) == i)) for i, colour in enumerate(CLASS_COLOURS[c])}
                  for c, d in shares.items()}
    return Diversity(mode_share, float(np.mean(purity)), float(np.mean(pure)), len(cells), len(purity))


def evaluate(model: torch.nn.Module, conditioner, scenes: int = 256, seed: int = 0) -> SemanticReport:
    model.eval()
    cfg = model.cfg
    q, k = cfg.chroma_size, cfg.num_classes
    test = data.make_scenes(seed, "test", 0, scenes, cfg.image_size)
    small = [data.chroma(s, q) for s in test]
    L = np.stack([s.L for s in test])[:, None]  # [N,1,S,S]
    truth = np.stack([c.labels for c in small])  # [N,Q,Q]

    # Segmentation.
    with torch.no_grad():
        emb, logits = model.encoder(torch.from_numpy(L))
    pred = logits.argmax(1).numpy()
    iou = {}
    for c, name in enumerate(CLASSES):
        union = ((pred == c) | (truth == c)).sum()
        iou[name] = float(((pred == c) & (truth == c)).sum() / union) if union else float("nan")

    # Class-consistent colour: one sample per scene.
    seeds = np.arange(scenes, dtype=np.int64) + seed * 100_003
    ab = sample(model, L, seeds)["AB"]
    uni, bi, bg = [], [], []
    by_class: dict[str, list[bool]] = {}
    for i, (scene, c) in enumerate(zip(test, small)):
        bg.append(_colour_class(_mean_ab(ab[i], _cells(c, 0))) == 0)
        for n, obj in enumerate(scene.objects, start=1):
            where = _cells(c, n)
            if not where.any():
                continue  # an instance smaller than a block
            hit = _colour_class(_mean_ab(ab[i], where)) == obj.cls
            (bi if CLASSES[obj.cls] in BIMODAL else uni).append(hit)
            if CLASSES[obj.cls] not in BIMODAL:
                by_class.setdefault(CLASSES[obj.cls], []).append(hit)

    # Override: the true map, then one instance relabelled; same seeds.
    rng = np.random.default_rng([seed, 5])
    picks = [i for i, s in enumerate(test) if s.objects]
    base_map = _one_hot(truth[picks], k)
    relabelled = base_map.copy()
    chosen = []
    for row, i in enumerate(picks):
        n = int(rng.integers(1, len(test[i].objects) + 1))
        new = int(rng.choice([c for c in range(1, k) if c != test[i].objects[n - 1].cls]))
        cells = small[i].instances == n
        relabelled[row][:, cells] = 0.0
        relabelled[row][new, cells] = 1.0
        chosen.append((n, new))
    before = sample(model, L[picks], seeds[picks], base_map)["AB"]
    after = sample(model, L[picks], seeds[picks], relabelled)["AB"]
    moved, stayed, shifts = [], [], []
    for row, i in enumerate(picks):
        n, new = chosen[row]
        where = _cells(small[i], n)
        if where.any():
            moved.append(_colour_class(_mean_ab(after[row], where)) == new)
        for other in range(len(test[i].objects) + 1):
            cells = _cells(small[i], other)
            if other == n or not cells.any():
                continue
            m0, m1 = _mean_ab(before[row], cells), _mean_ab(after[row], cells)
            shift = float(np.abs(m1 - m0).max())
            shifts.append(shift)
            stayed.append(data.nearest_mode(m0) == data.nearest_mode(m1) and shift < STAY_LAB)

    # Diversity: bimodal instances, many seeds; beside it, independent per-pixel sampling from f_theta.
    holders = [(i, n) for i, s in enumerate(test) for n, o in enumerate(s.objects, start=1)
               if CLASSES[o.cls] in BIMODAL and _cells(small[i], n).any()]
    scene_ids = sorted({i for i, _ in holders})[:DIVERSITY_SCENES]
    holders = [(i, n) for i, n in holders if i in scene_ids]
    reps = np.repeat(np.array(scene_ids), SEEDS)
    div_seeds = np.tile(np.arange(SEEDS, dtype=np.int64), len(scene_ids)) + 7_000_000 + seed
    div_ab = sample(model, L[reps], div_seeds)["AB"].reshape(len(scene_ids), SEEDS, 2, q, q)
    with torch.no_grad():
        emb_mix = model.embedding_mixture(emb[scene_ids]).numpy()  # [D,6M,Q,Q]
    indep = np.empty_like(div_ab)
    for d in range(len(scene_ids)):
        mix = emb_mix[d].reshape(emb_mix.shape[1], q * q).T  # [Q*Q,6M]
        for s in range(SEEDS):
            u = uniforms(int(div_seeds[d * SEEDS + s]), q * q, cfg.mixtures)
            indep[d, s] = (draw(mix, u, np.ones(q * q)) * AB_SCALE).T.reshape(2, q, q)
    where = [_cells(small[i], n) for i, n in holders]
    classes = [test[i].objects[n - 1].cls for i, n in holders]
    index = {i: d for d, i in enumerate(scene_ids)}
    diversity = _diversity(np.stack([div_ab[index[i]] for i, _ in holders]), where, classes)
    independent = _diversity(np.stack([indep[index[i]] for i, _ in holders]), where, classes)

    # Reproducibility (the sampler over PyTorch; export checks ONNX against it).
    # The first scenes again with their seeds: the same colours; with other seeds, other colours.
    # (PyTorch's kernels may round differently at another batch size, so the batch is the same;
    # onnxruntime's do not, and the tests check the served path at other batch sizes.)
    n = min(BATCH, scenes)
    again = sample(model, L[:n], seeds[:n])["AB"]
    other = sample(model, L[:n], seeds[:n] + 1)["AB"]
    reproducible = bool(np.array_equal(again, ab[:n]) and not np.array_equal(other, ab[:n]))

    return SemanticReport(
        scenes=scenes, seed=seed, miou=float(np.nanmean(list(iou.values()))), iou=iou,
        class_colour=Share.of(uni), class_colour_by_class={c: asdict(Share.of(h)) for c, h in by_class.items()},
        bimodal_colour=Share.of(bi), background_colour=Share.of(bg),
        override_moved=Share.of(moved), override_stayed=Share.of(stayed),
        override_shift_lab=float(np.mean(shifts)) if shifts else float("nan"),
        diversity=diversity, independent=independent, reproducible=reproducible,
    )
