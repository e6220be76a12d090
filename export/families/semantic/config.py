"""Named sizes of a pixelated semantic colorization network, its classes, and its tensor contract.

The paper (Zhao et al., IJCV 2020) works at 128 px with 32x32 chroma, a ResNet-style trunk of
64-512 channels, 21 or 183 classes and a 10-logistic mixture. ``small`` keeps every part and the
ratios (chroma a quarter of the input side, the colour embedding and the segmentation head sharing
the lower layers, ASPP summed over three rates, a gated PixelCNN with vertical and horizontal
stacks) at 64 px with 16x16 chroma, trainable on one CPU thread. ASPP rates 2/4/6 replace the
paper's 6/12/18, which would reach past a 16x16 map. ``full`` is the paper's size; ``tiny`` is for
tests. The config travels inside every checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from langcolor.client.lab import AB_SCALE
from langcolor.client.spec import BATCH, Condition, ModelGeometry, Serving, TensorSpec, ab_output, image_l

FAMILY = "semantic"

# Tensor names of the contract (the family's own; ``L`` and ``AB`` are the shared ones).
EMB, SEG_LOGITS = "EMB", "SEG_LOGITS"  # encoder -> fusion
SEM_OVERRIDE = "SEM_OVERRIDE"  # fusion condition: a semantic map that replaces the prediction where non-zero
COND = "COND"  # fusion -> decoder: every gated layer's conditioning term, computed once per image
AB_CANVAS = "AB_CANVAS"  # decoder condition: the chroma sampled so far (raster order)
ROW = "ROW"  # decoder condition: the canvas row whose mixtures to compute
MIX = "MIX"  # decoder output: the mixture of logistics of that row's pixels
SEED, TEMPERATURE, SEG = "SEED", "TEMPERATURE", "SEG"  # the sampler's request inputs and extra output

SEED_MAX = 2**31 - 1
TEMPERATURE_MAX = 2.0  # 0 = the most likely mixture component's mean, 1 = the model's distribution
BINS = 256  # a* and b* are discretised into this many bins over [-AB_SCALE, AB_SCALE] (0.86 Lab units)


@dataclass(frozen=True)
class SemanticConfig:
    name: str
    image_size: int  # S: L [B,1,S,S]
    trunk: tuple[int, ...]  # channels: stem at S, then S/2, S/4 (strided), then the shared dilated stage
    emb_dim: int  # E: the colour embedding f_theta's channels (160 in the paper)
    aspp_rates: tuple[int, ...]  # h_phi's atrous rates, summed (6/12/18 in the paper at 32x32)
    gen_channels: int  # C: width of both PixelCNN stacks
    gen_layers: int  # gated layers, the first one causal-strict ("mask A")
    mixtures: int  # M: logistics in the (a, b) mixture (10 in the paper)
    res_blocks: int = 1  # gated residual blocks per trunk stage (2-3 in the paper)
    first_kernel: int = 5  # width of the first layer's vertical and horizontal reach
    classes: tuple[str, ...] = field(default=())  # filled from CLASSES when empty

    def __post_init__(self) -> None:
        if not self.classes:
            object.__setattr__(self, "classes", CLASSES)
        assert len(self.trunk) == 4 and self.image_size % 4 == 0, self
        assert self.gen_layers >= 2 and self.mixtures >= 1 and self.first_kernel % 2 == 1, self

    @property
    def chroma_size(self) -> int:  # Q: the chroma canvas side, a quarter of the input side
        return self.image_size // 4

    @property
    def num_classes(self) -> int:  # K, background included
        return len(self.classes)

    @property
    def cond_channels(self) -> int:
        """COND: per gated layer, a 2C gate term for the vertical and one for the horizontal stack."""
        return self.gen_layers * 2 * 2 * self.gen_channels

    @property
    def mix_channels(self) -> int:
        """MIX: per logistic, its logit, means (a, b), log-scales (a, b) and the a->b coefficient."""
        return 6 * self.mixtures

    def geometry(self) -> ModelGeometry:
        s, q, k = self.image_size, self.chroma_size, self.num_classes
        emb = TensorSpec(EMB, "float32", (BATCH, self.emb_dim, q, q))
        seg_logits = TensorSpec(SEG_LOGITS, "float32", (BATCH, k, q, q))
        override = TensorSpec(SEM_OVERRIDE, "float32", (BATCH, k, q, q), (0.0, 1.0))
        cond = TensorSpec(COND, "float32", (BATCH, self.cond_channels, q, q))
        canvas = TensorSpec(AB_CANVAS, "float32", (BATCH, 2, q, q), (-AB_SCALE, AB_SCALE))
        row = TensorSpec(ROW, "int64", (BATCH, 1), (0, q - 1))
        mix = TensorSpec(MIX, "float32", (BATCH, self.mix_channels, q))
        serving = Serving(
            inputs=(
                TensorSpec(SEED, "int64", (BATCH, 1), (0, SEED_MAX)),
                TensorSpec(TEMPERATURE, "float32", (BATCH, 1), (0.0, TEMPERATURE_MAX)),
                override,
            ),
            outputs=(ab_output(q), TensorSpec(SEG, "int64", (BATCH, q, q), (0, k - 1))),
        )
        return ModelGeometry(
            FAMILY, s, image_l(s),
            (Condition(override, "fusion"), Condition(canvas, "decoder"), Condition(row, "decoder")),
            (emb, seg_logits), (cond,), (mix,), serving,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "SemanticConfig":
        fields = dict(raw)
        for key in ("trunk", "aspp_rates", "classes"):
            if key in fields:
                fields[key] = tuple(fields[key])
        return cls(**fields)


# --------------------------------------------------------------------------------- classes, colours
# Class 0 is the background. Each class has one colour, or two (bimodal, drawn 50/50 per instance);
# colours are a*, b* in Lab units, pairwise at least 36 apart (export/synthetic.py's palette).
CLASS_COLOURS: dict[str, tuple[str, ...]] = {
    "background": ("brown",),
    "circle": ("red", "blue"),
    "square": ("yellow",),
    "triangle": ("green",),
    "ring": ("orange", "purple"),
    "cross": ("pink",),
}
CLASSES: tuple[str, ...] = tuple(CLASS_COLOURS)
BIMODAL: tuple[str, ...] = tuple(c for c, modes in CLASS_COLOURS.items() if len(modes) > 1)

CONFIGS: dict[str, SemanticConfig] = {
    # The paper: 128 px (32x32 chroma), trunk 64/128/256/512, 160-d embedding, 10 logistics.
    "full": SemanticConfig("full", 128, (64, 128, 256, 512), 160, (6, 12, 18), 128, 8, 10, res_blocks=2,
                           first_kernel=7),
    # The shipped weights: 64 px, 16x16 chroma, about 0.4M parameters.
    "small": SemanticConfig("small", 64, (16, 32, 48, 48), 32, (2, 4, 6), 32, 5, 4),
    # Seconds-fast, for tests.
    "tiny": SemanticConfig("tiny", 32, (8, 8, 16, 16), 8, (1, 2, 3), 8, 3, 2),
}


@dataclass(frozen=True)
class TrainingOptions:
    emb_weight: float = field(default=1.0, metadata={"help": "weight of f_theta's own mixture NLL (L_emb)"})
    seg_weight: float = field(default=10.0, metadata={"help": "weight of the segmentation cross-entropy (L_seg)"})
    gen_weight: float = field(default=1.0, metadata={"help": "weight of the PixelCNN's mixture NLL (L_gen)"})
    ema_decay: float = field(default=0.998, metadata={"help": "decay of the weight average the shipped file holds"})
    override_rate: float = field(default=0.5, metadata={
        "help": "share of training images whose generator sees the true semantic map (SEM_OVERRIDE) "
                "instead of the predicted one"})
    relabel_rate: float = field(default=0.6, metadata={
        "help": "share of those where one instance is relabelled and its generator target recoloured to match"})

    def __post_init__(self) -> None:
        from langcolor.client.errors import LangcolorError

        if not 0.0 <= self.ema_decay < 1.0:
            raise LangcolorError("--ema-decay must lie in [0, 1)")
        for flag, value in (("--override-rate", self.override_rate), ("--relabel-rate", self.relabel_rate)):
            if not 0.0 <= value <= 1.0:
                raise LangcolorError(f"{flag} must lie in [0, 1]")
