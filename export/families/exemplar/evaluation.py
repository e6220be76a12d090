"""``langcolor evaluate --model exemplar``: does the output follow the reference, on real photos and synthetic scenes?

**Held-out real photographs** (``photos``' test split, never trained on): the target is a window of
the photo, shown gray; the reference another window of the same scene overlapping it little, flipped
half the time (``pairs.eval_pairs``, 4 per photo, laid out by ``seed``). The network runs through the
product's own path (``prepare_l``, the family's conditioner on the reference, ``reconstruct`` at full
resolution); every method's output is the 8-bit image a user would get. Per photo and overall:

- mean dE_ab against the true colours (Lab units, lower is better);
- HIS: histogram intersection of the output's ab with the reference's;
- M: Hasler-Suesstrunk colourfulness (the truth's own, for scale);

beside, on the same pairs: (a) the gray input, (b) Reinhard 2001, (c) Welsh 2002, and (d) each method
given an unrelated reference (the next photo's). Target: the network's mean dE at least
``PHOTO_GAIN`` below the better of (b) and (c). Without the Debian wallpapers, the bundled
(scikit-image, scikit-learn) test photos are scored alone, and the report says so.

**Synthetic scenes** (``scenes``, the test stream), instances whose mean colour is nearest to the one
the reference asks for: transfer (another layout), swap (the reference's colours permuted among the
classes), palette prior (a palette reference; the class's set member present in it), its swap, and
aligned against shuffled layout (no positional copying: within ``MAX_POSITIONAL_GAP``). The gate:
mean alpha_ref and entropy (nats) per kind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from langcolor.client.lab import lab_to_srgb8_keeping_l, rgb_to_l, rgb_to_lab
from langcolor.client.reconstruct import prepare_l, reconstruct

from . import baselines, photos
from . import scenes as synth
from .conditioner import REFERENCE
from .config import REF_AB, REF_L
from .pairs import eval_pairs

PAIRS_PER_PHOTO = 4
PHOTO_GAIN = 0.15  # the network's mean dE must be this fraction below the better classical baseline
GATES = {"transfer": 0.90, "swap": 0.90, "palette": 0.85}
MAX_POSITIONAL_GAP = 0.05  # |aligned - transfer|
SYNTHETIC_KINDS = {"transfer": ("free", "scene"), "aligned": ("free", "aligned"), "swap": ("free", "swap"),
                   "palette": ("set", "palette"), "palette_swap": ("set", "palette_swap")}
METHODS = ("gray", "reinhard", "welsh", "network")
_BATCH = 64  # synthetic pairs per forward pass
_LOG_EPS = 1e-8


@dataclass(frozen=True)
class PhotoScore:
    photo: str
    index: int
    method: str  # METHODS, "shuffled-<method>" with an unrelated reference, or "truth"
    delta_e: float
    his: float
    colourfulness: float


@dataclass(frozen=True)
class ExemplarReport:
    seed: int
    photos: tuple[str, ...]  # the test photos scored
    missing: tuple[str, ...]  # the test photos that could not be loaded, one line each
    scores: tuple[PhotoScore, ...]
    synthetic: dict  # kind -> accuracy; gate figures; count
    targets: dict = field(default_factory=dict)  # name -> {"value", "goal", "met"}

    def table(self, metric: str = "delta_e") -> dict:
        """{photo or "mean": {method: mean of ``metric``}}."""
        methods = list(dict.fromkeys(s.method for s in self.scores))
        out = {}
        for ph in (*self.photos, "mean"):
            sel = [s for s in self.scores if ph == "mean" or s.photo == ph]
            out[ph] = {m: float(np.mean([getattr(s, metric) for s in sel if s.method == m])) for m in methods}
        return out

    def to_dict(self) -> dict:
        return {"seed": self.seed, "photos": list(self.photos), "missing": list(self.missing),
                "photo_delta_e": self.table("delta_e") if self.scores else {},
                "photo_his": self.table("his") if self.scores else {},
                "photo_colourfulness": self.table("colourfulness") if self.scores else {},
                "synthetic": self.synthetic, "targets": self.targets,
                "scores": [asdict(s) for s in self.scores]}

    def summary_lines(self) -> list[str]:
        lines = []
        if self.missing:
            lines.append(f"  {len(self.missing)} test photo(s) not available here; scored the other "
                         f"{len(self.photos)} only:")
            lines += [f"    {m}" for m in self.missing]
        if self.scores:
            de, his, m = self.table("delta_e"), self.table("his"), self.table("colourfulness")
            cols = [c for c in (*METHODS, "shuffled-network", "shuffled-welsh") if c in de["mean"]]
            lines.append(f"  held-out photos: mean dE_ab vs the true colours ({PAIRS_PER_PHOTO} pairs per photo, "
                         "lower is better)")
            lines.append("    " + f"{'photo':<14}" + "".join(f"{c:>17}" for c in cols))
            for ph in (*self.photos, "mean"):
                lines.append("    " + f"{ph:<14}" + "".join(f"{de[ph][c]:>17.2f}" for c in cols))
            lines.append("    HIS with the reference: " + ", ".join(
                f"{c} {his['mean'][c]:.2f}" for c in ("truth", *METHODS) if c in his["mean"]))
            lines.append("    colourfulness M: " + ", ".join(
                f"{c} {m['mean'][c]:.1f}" for c in ("truth", *METHODS) if c in m["mean"]))
        else:
            lines.append("  held-out photos: none available (install scikit-image, scikit-learn or the wallpapers)")
        s = self.synthetic
        if s:
            lines.append(f"  synthetic scenes ({s['count']} pairs per kind; chance about 1/{len(synth.COLOURS)}, "
                         "palette 1/2):")
            for kind in SYNTHETIC_KINDS:
                lines.append(f"    {kind:<13} {100 * s[kind]:5.1f}%   alpha_ref {s['alpha_ref'][kind]:.2f}   "
                             f"gate entropy {s['gate_entropy'][kind]:.3f} nats")
            lines.append(f"    swap kept the true colour {100 * s['swap_kept_truth']:.1f}%; aligned - transfer "
                         f"{100 * s['positional_gap']:+.1f} points")
        for name, t in self.targets.items():
            lines.append(f"  target {name}: {t['value']:.3f} (goal {t['goal']}) {'met' if t['met'] else 'NOT met'}")
        return lines


# ------------------------------------------------------------------------------ held-out photos
def network_output(model, conditioner, target_rgb: np.ndarray, values: Mapping[str, Any]) -> np.ndarray:
    """The product's path around the PyTorch network: target RGB [H, W, 3] + the user's inputs (a
    reference or a palette) -> uint8 [H, W, 3]."""
    size = model.cfg.image_size
    l_full, l_small = prepare_l(target_rgb, size)  # [H, W], [1, S, S]
    cond = conditioner.condition(values).tensors
    feeds = [torch.from_numpy(np.ascontiguousarray(x)[None]) for x in (l_small, cond[REF_L], cond[REF_AB])]
    with torch.no_grad():
        ab, _ = model(*feeds)  # [1, 2, S, S]
    return reconstruct(l_full, ab[0].numpy())


def _baseline_output(method, target_rgb: np.ndarray, ref_rgb: np.ndarray) -> np.ndarray:
    target_l = rgb_to_l(target_rgb)  # [H, W]
    lab = np.concatenate([target_l[..., None], method(target_l, ref_rgb)], -1)  # [H, W, 3]
    return lab_to_srgb8_keeping_l(lab)


def score_photos(model, conditioner, names: list[str], seed: int, per_photo: int = PAIRS_PER_PHOTO,
                 split: str = "test", methods: tuple[str, ...] = METHODS) -> list[PhotoScore]:
    """``methods`` on every pair of ``names`` (photos of ``split``), with the pair's reference and an
    unrelated one (the next photo's)."""
    pairs = eval_pairs(split, per_photo, seed, only=names)
    classical = {"gray": baselines.gray, "reinhard": baselines.reinhard, "welsh": baselines.welsh}
    out = []
    for p in pairs:
        true_ab = rgb_to_lab(p.target_rgb)[..., 1:]  # [H, W, 2]
        other = names[(names.index(p.photo) + 1) % len(names)]
        refs = {"": p.ref_rgb}
        if other != p.photo:  # (d): the same pair index of the next photo
            refs["shuffled-"] = next(q.ref_rgb for q in pairs if q.photo == other and q.index == p.index)
        for prefix, ref in refs.items():
            ref_ab = rgb_to_lab(ref)[..., 1:]
            for name in methods:
                if prefix and name == "gray":
                    continue
                if name == "network":
                    rgb = network_output(model, conditioner, p.target_rgb, {REFERENCE.name: ref})
                else:
                    rgb = _baseline_output(classical[name], p.target_rgb, ref)
                out_ab = rgb_to_lab(rgb.astype(np.float32) / 255.0)[..., 1:]
                out.append(PhotoScore(p.photo, p.index, prefix + name, baselines.delta_e(out_ab, true_ab),
                                      baselines.histogram_intersection(out_ab, ref_ab), baselines.colourfulness(rgb)))
        truth = (p.target_rgb * 255.0 + 0.5).astype(np.uint8)
        out.append(PhotoScore(p.photo, p.index, "truth", 0.0,
                              baselines.histogram_intersection(true_ab, rgb_to_lab(p.ref_rgb)[..., 1:]),
                              baselines.colourfulness(truth)))
    return out


# ------------------------------------------------------------------------------ synthetic scenes
def synthetic_checks(model, count: int, seed: int) -> dict:
    """The synthetic figures on ``count`` test pairs per kind (``SYNTHETIC_KINDS``)."""
    size = model.cfg.image_size
    out: dict = {"count": count, "alpha_ref": {}, "gate_entropy": {}}
    for kind, (mode, ref) in SYNTHETIC_KINDS.items():
        pairs = [synth.make_pair(seed, "test", i, size, mode, ref) for i in range(count)]
        preds, alpha_ref, entropy = [], [], []
        for k in range(0, count, _BATCH):
            chunk = pairs[k : k + _BATCH]
            t = lambda xs: torch.from_numpy(np.stack(xs).astype(np.float32))  # noqa: E731
            with torch.no_grad():
                ab, gate = model(t([p.L[None] for p in chunk]), t([p.ref_L[None] for p in chunk]),
                                 t([p.ref_ab for p in chunk]))  # [b,2,S,S] each
            preds += list(ab.numpy())
            alpha_ref.append(gate[:, 0].numpy().ravel())
            g = gate.clamp_min(_LOG_EPS)
            entropy.append((-(g * g.log()).sum(1)).numpy().ravel())
        out[kind] = float(np.mean(synth.instance_hits(pairs, preds)))
        out["alpha_ref"][kind] = float(np.concatenate(alpha_ref).mean())
        out["gate_entropy"][kind] = float(np.concatenate(entropy).mean())
        if kind == "swap":
            out["swap_kept_truth"] = float(np.mean(synth.instance_hits(pairs, preds, truth=True)))
    out["positional_gap"] = out["aligned"] - out["transfer"]
    return out


def targets(scores: list[PhotoScore], synthetic: dict) -> dict:
    out = {}
    if scores:
        mean = lambda m: float(np.mean([s.delta_e for s in scores if s.method == m]))  # noqa: E731
        best = min(mean("reinhard"), mean("welsh"))
        gain = 1.0 - mean("network") / best
        out["photo_gain_vs_best_baseline"] = {"value": gain, "goal": f">= {PHOTO_GAIN}", "met": gain >= PHOTO_GAIN}
    if synthetic:
        for kind, goal in GATES.items():
            out[f"synthetic_{kind}"] = {"value": synthetic[kind], "goal": f">= {goal}", "met": synthetic[kind] >= goal}
        gap = abs(synthetic["positional_gap"])
        out["synthetic_positional_gap"] = {"value": gap, "goal": f"<= {MAX_POSITIONAL_GAP}",
                                           "met": gap <= MAX_POSITIONAL_GAP}
    return out


def evaluate(model, conditioner, scenes: int = 256, seed: int = 0) -> ExemplarReport:
    """``scenes`` synthetic pairs per kind; the held-out photos' fixed pairs laid out by ``seed``."""
    model.eval()
    names, missing = photos.available("test")
    scores = score_photos(model, conditioner, names, seed, PAIRS_PER_PHOTO) if names else []
    synthetic = synthetic_checks(model, scenes, seed)
    return ExemplarReport(seed, tuple(names), tuple(missing), tuple(scores), synthetic, targets(scores, synthetic))
