"""Named sizes of the sketch colorizer, and its tensor contract. The config travels in every checkpoint.

``full`` is the three networks at 128 px with paper-like proportions (not trained here); ``small`` is
the shipped configuration, 64 px; ``tiny`` is for tests. Every size is 64 px or a multiple: the drawing
generator lays scenes out in 64ths of the side.

The contract (per sample; the batch axis is the only dynamic one). Unlike the Lab families there is no
L: the drawing is ink, and the answer is an RGB canvas, not ab to recombine with the input's lightness.

    encoder  SKETCH [1,S,S] (1 = ink) + INST_MASKS [K,S,S] (the drawing's objects, zero-padded)
             -> MATCH_FEATURES [Cm,S/4,S/4], MATCH_DETAIL [Cd,S/2,S/2], LAYERS [1+K,S,S]
    fusion   + TOKENS [T] -> referring logits, SELECTION [K], the colouring U-Nets' encoders with
             their RMI at the bottleneck: FG_FUSED / BG_FUSED and skips, REGION_LOGITS [2], AREAS
    decoder  + CANVAS [3,S,S] (RGB in [0,1], the picture so far) + BACKGROUND [1] (0/1: the instruction
             names the sky or the ground) -> NEW_CANVAS [3,S,S] first, then SELECTED [K],
             REGIONS [2] (sky, ground), FG_RGB, BG_RGB, BG_SEG (sky, ground, foreground) and REFERRED
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from langcolor.client.spec import BATCH, Condition, ModelGeometry, TensorSpec, tokens_spec

FAMILY = "sketch"

# Public tensor names of this family's contract (the shared ones, TOKENS, come from the client).
SKETCH, INST_MASKS, CANVAS, BACKGROUND = "SKETCH", "INST_MASKS", "CANVAS", "BACKGROUND"
NEW_CANVAS, SELECTED, REGIONS = "NEW_CANVAS", "SELECTED", "REGIONS"
FG_RGB, BG_RGB, BG_SEG, REFERRED = "FG_RGB", "BG_RGB", "BG_SEG", "REFERRED"


@dataclass(frozen=True)
class SketchConfig:
    name: str
    image_size: int  # S: the network's side, pixels
    max_tokens: int  # T: words of an instruction, 0 = padding
    max_instances: int  # K: object slots
    match_channels: tuple[int, int, int]  # matching CNN widths at S, S/2 and S/4
    match_hidden: int  # RMI hidden state of the matching network (paper: 500)
    word_dim: int  # word embedding (paper: 1000)
    text_hidden: int  # text LSTM hidden state (paper: 1000)
    head_channels: int  # the referring mask's upsampling head
    fg_channels: tuple[int, int, int, int]  # foreground U-Net widths at S, S/2, S/4, S/8 (the last: its RMI state)
    bg_channels: tuple[int, int, int, int]  # background network widths at S, S/2, S/4, S/8
    extra_steps: int = 2  # mLSTM steps after the last word (they see no new word; relations settle)

    def __post_init__(self) -> None:
        assert self.image_size % 64 == 0, "the drawing generator lays scenes out in 64ths of the side"
        assert self.max_tokens >= 1 and self.max_instances >= 1 and self.extra_steps >= 0, self

    @property
    def grid(self) -> int:  # the matching network's map side (S/4)
        return self.image_size // 4

    def geometry(self, vocab_size: int) -> ModelGeometry:
        s, k = self.image_size, self.max_instances
        f = lambda name, *dims, rng=None: TensorSpec(name, "float32", (BATCH, *dims), rng)  # noqa: E731
        unit = (0.0, 1.0)
        conditions = (
            Condition(f(INST_MASKS, k, s, s, rng=unit), "encoder"),
            Condition(tokens_spec(self.max_tokens, vocab_size), "fusion"),
            Condition(f(CANVAS, 3, s, s, rng=unit), "decoder"),
            Condition(TensorSpec(BACKGROUND, "int64", (BATCH, 1), (0, 1)), "decoder"),
        )
        c0, c1, c2, c3 = self.fg_channels
        g0, g1, g2, g3 = self.bg_channels
        m0, m1, m2 = self.match_channels
        features = (f("MATCH_FEATURES", m2, s // 4, s // 4), f("MATCH_DETAIL", m1, s // 2, s // 2), f("LAYERS", 1 + k, s, s))
        modulated = (
            f("FG_FUSED", c3, s // 8, s // 8), f("FG_SKIP2", c2, s // 4, s // 4), f("FG_SKIP1", c1, s // 2, s // 2),
            f("BG_FUSED", g3, s // 8, s // 8), f("BG_SKIP2", g2, s // 4, s // 4), f("BG_SKIP1", g1, s // 2, s // 2),
            f("SELECTION", k), f("REGION_LOGITS", 2), f("REF_LOGITS", 1, s, s), f("AREAS", 3, s, s),
        )
        outputs = (
            f(NEW_CANVAS, 3, s, s), f(SELECTED, k), f(REGIONS, 2), f(FG_RGB, 3, s, s), f(BG_RGB, 3, s, s),
            f(BG_SEG, 3, s, s), f(REFERRED, 1, s, s),
        )
        return ModelGeometry(FAMILY, s, f(SKETCH, 1, s, s, rng=unit), conditions, features, modulated, outputs)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "SketchConfig":
        fields = dict(raw)
        for key in ("match_channels", "fg_channels", "bg_channels"):
            fields[key] = tuple(fields[key])
        return cls(**fields)


CONFIGS: dict[str, SketchConfig] = {
    # Paper-like proportions at 128 px (the paper: 768 px scenes, 192 px instance crops).
    "full": SketchConfig("full", 128, 16, 16, (32, 64, 128), 128, 128, 128, 32, (32, 64, 128, 256), (32, 64, 128, 256)),
    # The shipped weights.
    "small": SketchConfig("small", 64, 12, 8, (16, 24, 32), 32, 32, 32, 16, (16, 16, 32, 48), (12, 12, 16, 24)),
    # Seconds-fast, for tests.
    "tiny": SketchConfig("tiny", 64, 12, 8, (4, 6, 8), 8, 8, 8, 4, (4, 4, 8, 8), (4, 4, 4, 8)),
}


@dataclass(frozen=True)
class TrainingOptions:
    colour_share: float = field(default=0.5, metadata={"help": "share of each batch's scenes the foreground colouring trains on"})
    background_share: float = field(default=0.5, metadata={"help": "share of each batch's scenes given a background instruction"})
    render_scales: str = field(default="1,2,4", metadata={"help": "comma-separated sizes, in multiples of S, scenes are drawn at before shrinking"})
    part_weight: float = field(default=4.0, metadata={"help": "colour-loss weight of a named part's pixels (roof, windows, trunk)"})
    category_weight: float = field(default=0.5, metadata={"help": "weight of the matching CNN's per-ink-pixel category loss"})
    seg_weight: float = field(default=0.5, metadata={"help": "weight of the sky/ground/foreground cross-entropy"})
    region_weight: float = field(default=0.5, metadata={"help": "weight of the BCE on which background regions are named"})

    def __post_init__(self) -> None:
        from langcolor.client.errors import LangcolorError

        try:
            scales = [int(s) for s in self.render_scales.split(",")]
        except ValueError as e:
            raise LangcolorError(f"--render-scales: comma-separated integers, got {self.render_scales!r}") from e
        if not scales or min(scales) < 1:
            raise LangcolorError("--render-scales: positive integers")
        if not (0.0 < self.colour_share <= 1.0 and 0.0 < self.background_share <= 1.0):
            raise LangcolorError("--colour-share and --background-share lie in (0, 1]")

    @property
    def scales(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.render_scales.split(","))
