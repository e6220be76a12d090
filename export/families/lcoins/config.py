"""Named sizes of an L-CoIns network (paper 001). The config travels inside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from langcolor.client.errors import LangcolorError
from langcolor.client.spec import ModelGeometry, caption_geometry

FAMILY = "lcoins"


@dataclass(frozen=True)
class LCoInsConfig:
    """Sizes of an L-CoIns network (paper 001, section 3): ViT image tokens, BERT-style language
    tokens, N_G group tokens, L grouping blocks. Image tokens are the tensors between stages:
    FEATURES / MODULATED have the per-sample shape (P, D), P = (S / patch)^2 patches of width D."""

    name: str
    image_size: int  # S: input side in pixels
    max_tokens: int  # T: fixed WordPiece caption length, token id 0 = padding
    patch_size: int  # pixels per patch side
    dim: int  # C_T: width of every token (image, language, group)
    heads: int  # attention heads (N_H)
    vit_layers: int  # depth of the image encoder (ViT)
    text_layers: int  # depth of the language encoder (BERT-style)
    group_tokens: int  # N_G learnable group tokens
    grouping_blocks: int  # L grouping blocks (eqs. 4-9)
    mlp_ratio: int = 4
    dec_channels: tuple[int, ...] = (64, 32, 16)  # one stride-2 transposed conv per entry (eq. 10)
    max_words: int = 16  # caption length in words of the synthetic scenes (shared with L-CoDe's T=16)
    wordpiece_vocab: int = 400  # target WordPiece vocabulary size (the trainer may stop earlier)

    def __post_init__(self) -> None:
        assert self.image_size % self.patch_size == 0, "image_size must divide by patch_size"
        assert self.dim % self.heads == 0, "dim must divide by heads"
        grid = self.image_size // self.patch_size
        assert grid * 2 ** len(self.dec_channels) == self.image_size, "decoder must upsample the grid to S"
        assert self.max_tokens >= self.max_words >= 1 and self.group_tokens >= 1, self

    @property
    def grid(self) -> int:  # patches per side
        return self.image_size // self.patch_size

    @property
    def patches(self) -> int:  # P = N_I
        return self.grid**2

    @property
    def feature_shape(self) -> tuple[int, int]:  # per-sample FEATURES / MODULATED shape
        return (self.patches, self.dim)

    def geometry(self, vocab_size: int) -> ModelGeometry:
        return caption_geometry(FAMILY, self.image_size, self.max_tokens, int(vocab_size), self.feature_shape)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "LCoInsConfig":
        fields = dict(raw)
        fields["dec_channels"] = tuple(fields["dec_channels"])
        return cls(**fields)


CONFIGS: dict[str, LCoInsConfig] = {
    # The paper: 224x224, 16-pixel patches (ViT-B/16-like widths), 8 group tokens.
    "full": LCoInsConfig(
        name="full", image_size=224, max_tokens=40, patch_size=16, dim=768, heads=12, vit_layers=12,
        text_layers=6, group_tokens=8, grouping_blocks=4, dec_channels=(256, 128, 64, 32), max_words=32,
        wordpiece_vocab=30000,
    ),
    # The shipped weights: 64x64, 8-pixel patches -> 64 image tokens of width 64.
    "small": LCoInsConfig(
        name="small", image_size=64, max_tokens=24, patch_size=8, dim=64, heads=4, vit_layers=2,
        text_layers=3, group_tokens=8, grouping_blocks=2, dec_channels=(64, 32, 16),
    ),
    # Seconds-fast network for tests.
    "tiny": LCoInsConfig(
        name="tiny", image_size=32, max_tokens=16, patch_size=8, dim=16, heads=2, vit_layers=1,
        text_layers=1, group_tokens=4, grouping_blocks=1, dec_channels=(16, 8, 8), max_words=12,
        wordpiece_vocab=200,
    ),
}


@dataclass(frozen=True)
class TrainingOptions:
    object_weight: float = field(default=4.0, metadata={"help": "ab-loss weight of object pixels vs background"})
    caption_free_rate: float = field(default=0.05, metadata={"help": "share of samples shown without a caption"})
    vocab_scenes: int = field(default=4000, metadata={"help": "training captions the vocabulary is built from"})
    instance_rate: float = field(default=0.5, metadata={"help": "share of instance scenes per batch"})
    augment_rate: float = field(default=0.5, metadata={"help": "share of samples given luminance augmentation"})
    gamma_max: float = field(default=3.0, metadata={"help": "gamma in [1, gamma_max] or its inverse (paper: 5)"})
    counter_weight: float = field(default=-1e-4, metadata={"help": "beta of the counter-colour loss (paper: -1e-4; 0 = off)"})
    warmup_steps: int = field(default=100, metadata={"help": "linear learning-rate warm-up steps"})
    stage: str = field(default="joint", metadata={"help": "joint (colour from captions) | pretrain-text (masked words) | pretrain-image (masked patches)"})
    init: str = field(default="", metadata={"help": "weights.pt of an earlier stage to start from (its tokenizer is kept); '' = from scratch"})
    frozen: str = field(default="", metadata={"help": "comma-separated parts kept fixed: language, encoder, decoder"})
    instance_contrast: float = field(default=0.0, metadata={"help": "joint: luminance augmentation redrawn until two instances' gray levels differ by this much (L units; 0 = off)"})
    pair_rate: float = field(default=0.7, metadata={"help": "pretrain-text: share of samples given a second description of the same scene"})
    word_mask_rate: float = field(default=0.15, metadata={"help": "pretrain-text: share of words hidden (plus one colour, noun or location word)"})
    patch_mask_rate: float = field(default=0.4, metadata={"help": "pretrain-image: share of patches hidden"})
    colour_weight: float = field(default=0.0, metadata={"help": "pretrain-image: weight of the caption-free colorizer's ab loss (0 = masked patches only)"})

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise LangcolorError(f"--stage must be one of {', '.join(STAGES)}, not {self.stage!r}")
        unknown = set(self.frozen_parts) - set(PARTS)
        if unknown:
            raise LangcolorError(f"--frozen: unknown part(s) {', '.join(sorted(unknown))}; parts are {', '.join(PARTS)}")

    @property
    def frozen_parts(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.frozen.split(",") if p.strip())


STAGES = ("joint", "pretrain-text", "pretrain-image")
PARTS = ("language", "encoder", "decoder")  # what --frozen may name
