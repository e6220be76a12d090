"""Named sizes of an exemplar colorization network, its tensor contract and its training knobs.

``small`` is the configuration of the shipped weights: the paper's layout (a six-layer Siamese
encoder whose hypercolumn gives the queries and keys, SCM attention, a DCM classifier over the
in-gamut ab bins re-weighted by the reference's histogram, a per-cell softmax gate and a decoder
with skips) at 64 px with a 16 x 16 attention grid, about 0.45 M parameters, trainable on one CPU
thread. ``full`` keeps the layout at 128 px with wider layers (benchmarks of a larger size);
``tiny`` is for tests (32 px, an 8 x 8 grid). The config travels inside every checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from langcolor.client.lab import AB_SCALE, L_MAX
from langcolor.client.spec import BATCH, Condition, ModelGeometry, TensorSpec, ab_output, image_l

FAMILY = "exemplar"

# Tensor names of the contract (``L`` and ``AB`` are the shared ones).
REF_L, REF_AB = "REF_L", "REF_AB"  # the reference's lightness (encoder) and colour (fusion), at S x S
Q, K, FEAT = "Q", "K", "FEAT"  # encoder -> fusion: unit-norm queries (target) and keys (reference), last layer
SKIP_HALF, SKIP_FULL = "SKIP_HALF", "SKIP_FULL"  # the target's first two layers (S/2, S), for the decoder
# fusion -> decoder: the fused colour beside the target's features at each decoder scale, and the gate
GUIDE_GRID, GUIDE_HALF, GUIDE_FULL, ALPHA = "GUIDE_GRID", "GUIDE_HALF", "GUIDE_FULL", "ALPHA"
GATE = "GATE"  # decoder output for inspection: (alpha_reference, alpha_database) at S x S

BIN_GRID = 10.0  # Lab units between ab bin centres (Zhang et al. 2016)


@dataclass(frozen=True)
class ExemplarConfig:
    name: str
    image_size: int = 64  # S: L, REF_L, REF_AB and AB are [B, C, S, S]
    grid: int = 16  # G: attention grid side; N = G * G reference positions
    enc_channels: tuple[int, ...] = (16, 32, 64, 64, 64, 64)  # the six encoder layers
    enc_strides: tuple[int, ...] = (1, 2, 2, 1, 1, 1)
    enc_dilations: tuple[int, ...] = (1, 1, 1, 2, 4, 1)
    key_dim: int = 64  # D of Q and K
    top_k: int = 8  # sorted scores fed to each confidence MLP
    tau_init: float = 0.05  # SCM softmax temperature at initialisation (learnt)
    tau_min: float = 0.01  # the temperature never goes below this (attention stays trainable)
    bin_grid: float = BIN_GRID
    hist_sigma: float = 5.0  # Gaussian soft assignment to the bins, Lab units (Zhang: 5)
    hist_pool: int = 2  # REF_AB is average-pooled by this before the histogram (a global statistic)
    prior_eps: float = 1e-4  # log(R_H + eps): colours absent from the reference are unlikely, not impossible
    db_temperature: float = 1.0  # DCM readout: the mean of posterior^(1/T) (Zhang's annealed mean); 1 = plain mean
    dec_channels: tuple[int, ...] = (64, 32, 16)  # decoder widths at G, then after each x2 upsampling

    def __post_init__(self) -> None:
        n = len(self.enc_channels)
        assert n == 6 and len(self.enc_strides) == n and len(self.enc_dilations) == n, self
        assert self.grid * math.prod(self.enc_strides) == self.image_size, "the last layer must sit on the grid"
        assert self.enc_strides[0] == 1 and self.enc_strides[1] == 2, "skips at S and S/2 come from layers 1 and 2"
        assert self.image_size % self.hist_pool == 0 and 0 < self.tau_min < self.tau_init, self
        assert self.top_k <= self.grid * self.grid and self.db_temperature > 0, self
        assert len(self.dec_channels) == 1 + self.upsamplings, self

    @property
    def upsamplings(self) -> int:  # x2 steps from the grid to S
        return int(round(math.log2(self.image_size // self.grid)))

    @property
    def hyper_channels(self) -> int:  # hypercolumn width: six layers + L
        return sum(self.enc_channels) + 1

    def geometry(self) -> ModelGeometry:
        s, g, d, c = self.image_size, self.grid, self.key_dim, self.enc_channels
        f = lambda name, *dims, rng=None: TensorSpec(name, "float32", (BATCH, *dims), rng)  # noqa: E731
        conditions = (
            Condition(f(REF_L, 1, s, s, rng=(0.0, L_MAX)), "encoder"),
            Condition(f(REF_AB, 2, s, s, rng=(-AB_SCALE, AB_SCALE)), "fusion"),
        )
        features = (f(Q, d, g, g), f(K, d, g, g), f(FEAT, c[-1], g, g), f(SKIP_HALF, c[1], s // 2, s // 2),
                    f(SKIP_FULL, c[0], s, s))
        modulated = (f(GUIDE_GRID, 2 + c[-1], g, g), f(GUIDE_HALF, 2 + c[1], s // 2, s // 2),
                     f(GUIDE_FULL, 2 + c[0], s, s), f(ALPHA, 2, g, g))
        outputs = (ab_output(s), f(GATE, 2, s, s))
        return ModelGeometry(FAMILY, s, image_l(s), conditions, features, modulated, outputs)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "ExemplarConfig":
        fields = dict(raw)
        for key in ("enc_channels", "enc_strides", "enc_dilations", "dec_channels"):
            fields[key] = tuple(fields[key])
        return cls(**fields)


CONFIGS: dict[str, ExemplarConfig] = {
    # The paper's proportions at 128 px: Zhang et al.'s encoder widths halved, a 32 x 32 attention grid
    # (1024 reference positions). Not trained here; for benchmarks of a larger size.
    "full": ExemplarConfig(name="full", image_size=128, grid=32, enc_channels=(32, 64, 128, 256, 256, 256),
                           key_dim=128, dec_channels=(128, 64, 32), db_temperature=0.38),
    # The shipped weights: 64 px, 16 x 16 attention, about 0.45 M parameters.
    "small": ExemplarConfig(name="small", db_temperature=0.38),
    # Twice the widths (about 1 M parameters), for a machine with more time.
    "wide": ExemplarConfig(name="wide", enc_channels=(24, 48, 96, 96, 96, 96), dec_channels=(96, 48, 24)),
    # Seconds-fast, for tests: 32 px, an 8 x 8 grid.
    "tiny": ExemplarConfig(name="tiny", image_size=32, grid=8, enc_channels=(8, 8, 16, 16, 16, 16), key_dim=16,
                           dec_channels=(16, 8, 8)),
}


@dataclass(frozen=True)
class TrainingOptions:
    """Knobs of ``langcolor train --family exemplar`` (each a flag). ``--steps`` counts both stages."""

    stage1_steps: int = field(default=1500, metadata={
        "help": "steps of stage 1 (the encoder, the bin classifier and the decoder as an automatic colorizer); "
                "the rest of --steps is stage 2, with references"})
    photo_splits: str = field(default="train", metadata={
        "help": "comma-separated photo splits to train on (train, val; the test photos are never trained on)"})
    synthetic_rate: float = field(default=0.5, metadata={
        "help": "share of each batch drawn from synthetic shape scenes (0: photos only, 1: synthetic only)"})
    palette_rate: float = field(default=0.3, metadata={
        "help": "share of the synthetic stage-2 pairs whose reference is a palette of swatches"})
    free_rate: float = field(default=0.5, metadata={
        "help": "share of the synthetic scene-reference pairs coloured freely (the others from each shape's "
                "two-colour set, which the bin classifier learns)"})
    joint_hue_rate: float = field(default=0.5, metadata={
        "help": "share of stage-2 photo pairs whose target and reference get the same random hue rotation"})
    l1_weight: float = field(default=1000.0, metadata={"help": "weight of L1 on ab / 110 (the paper's 1000)"})
    hist_weight: float = field(default=1.0, metadata={"help": "weight of the histogram loss (the paper's 1)"})
    sparse_weight: float = field(default=1.0, metadata={"help": "weight of the gate's entropy loss (the paper's 1)"})
    db_ce_weight: float = field(default=10.0, metadata={
        "help": "weight of the bin classifier's cross-entropy against each cell's true colours (not in the paper)"})
    ref_l1_weight: float = field(default=1000.0, metadata={
        "help": "weight of L1 on the attention's own colour against the true colours (not in the paper)"})
    gate_ce_weight: float = field(default=10.0, metadata={
        "help": "weight of the gate's cross-entropy against the module whose colour is nearer the truth in each "
                "cell (not in the paper; without it the gate saturates on the attention and never learns palettes)"})
    lr_min_ratio: float = field(default=0.05, metadata={"help": "each stage's cosine decay ends at lr times this"})
    init: str = field(default="", metadata={
        "help": "weights.pt of an earlier run to start from (e.g. a stage-1 run, with --stage1-steps 0)"})

    def __post_init__(self) -> None:
        from langcolor.client.errors import LangcolorError

        for name in ("synthetic_rate", "palette_rate", "free_rate", "joint_hue_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise LangcolorError(f"--{name.replace('_', '-')} lies in [0, 1], got {getattr(self, name)}")
        if self.stage1_steps < 0 or not 0.0 < self.lr_min_ratio <= 1.0:
            raise LangcolorError("--stage1-steps must be >= 0 and --lr-min-ratio in (0, 1]")
        bad = sorted(set(self.splits) - {"train", "val"})
        if bad or not self.splits:
            raise LangcolorError(f"--photo-splits: train and/or val, got {self.photo_splits!r}")

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.photo_splits.split(",") if s.strip())
