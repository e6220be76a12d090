"""Named sizes of an L-CoDe network. The config travels inside every checkpoint.

``full`` is the paper's network (VGG16-BN widths, 224x224 input, feature stride 16). ``small`` is the
configuration of the shipped weights: the same layout at 64x64 with narrower layers, trainable on a
CPU in minutes. At 64 px four max-pools would leave a 4x4 feature map, where a 12-pixel object covers
less than one cell, so ``small`` pools after the first three blocks only (feature stride 8, an 8x8 map)
and decodes with three stride-2 transposed convolutions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from langcolor.client.spec import ModelGeometry

FAMILY = "lcode"


@dataclass(frozen=True)
class LCoDeConfig:
    name: str
    image_size: int  # S: input side in pixels, L[B,1,S,S] and AB[B,2,S,S]
    max_tokens: int  # T: fixed caption length, token id 0 = padding
    enc_channels: tuple[int, ...]  # output channels of the four VGG blocks; the last is D_v
    enc_convs: tuple[int, ...] = (2, 2, 3, 3)  # convs per block (VGG16-BN)
    pooled_blocks: int = 4  # the first `pooled_blocks` blocks end with a 2x2 max-pool
    word_dim: int = 300  # word embedding size
    lstm_hidden: int = 256  # per direction; word vectors have D_w = 2 * lstm_hidden
    occm_dim: int = 256  # D_h: object/colour space of the biaffine OCCM predictor (eq. 1-2)
    occm_threshold: float = 0.1  # tau of ATM step T (eq. 4)

    def __post_init__(self) -> None:
        assert len(self.enc_channels) == len(self.enc_convs), self
        assert 1 <= self.pooled_blocks <= len(self.enc_channels), self
        assert self.image_size % (2**self.pooled_blocks) == 0, "image_size must divide by the feature stride"
        assert self.max_tokens >= 1 and 0.0 <= self.occm_threshold < 1.0, self

    @property
    def feature_channels(self) -> int:  # D_v
        return self.enc_channels[-1]

    @property
    def feature_size(self) -> int:  # H = W of the visual feature map
        return self.image_size // (2**self.pooled_blocks)

    @property
    def feature_shape(self) -> tuple[int, int, int]:  # per-sample FEATURES / MODULATED shape
        return (self.feature_channels, self.feature_size, self.feature_size)

    @property
    def dec_channels(self) -> tuple[int, ...]:
        """Output channels of the decoder's upsampling steps: the encoder widths mirrored."""
        widths = self.enc_channels[: self.pooled_blocks]  # one upsampling step per pool
        return tuple(reversed(widths))

    def geometry(self, vocab_size: int) -> ModelGeometry:
        return ModelGeometry(
            family=FAMILY,
            image_size=self.image_size,
            max_tokens=self.max_tokens,
            feature_shape=self.feature_shape,
            vocab_size=int(vocab_size),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "LCoDeConfig":
        fields = dict(raw)
        for key in ("enc_channels", "enc_convs"):
            fields[key] = tuple(fields[key])
        return cls(**fields)


CONFIGS: dict[str, LCoDeConfig] = {
    # The paper: VGG16-BN widths, 224x224, four pooled blocks -> 512x14x14 visual features.
    "full": LCoDeConfig(
        name="full",
        image_size=224,
        max_tokens=32,
        enc_channels=(64, 128, 256, 512),
        pooled_blocks=4,
        word_dim=300,
        lstm_hidden=256,
        occm_dim=256,
    ),
    # The shipped weights: 64x64, 96x8x8 visual features, about 0.9M parameters.
    "small": LCoDeConfig(
        name="small",
        image_size=64,
        max_tokens=16,
        enc_channels=(16, 32, 64, 96),
        pooled_blocks=3,
        word_dim=48,
        lstm_hidden=48,
        occm_dim=48,
    ),
    # Seconds-fast network for tests and smoke runs.
    "tiny": LCoDeConfig(
        name="tiny",
        image_size=32,
        max_tokens=12,
        enc_channels=(8, 8, 16, 16),
        enc_convs=(1, 1, 1, 1),
        pooled_blocks=2,
        word_dim=16,
        lstm_hidden=16,
        occm_dim=16,
    ),
}


LCOINS_FAMILY = "lcoins"


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
        return ModelGeometry(
            family=LCOINS_FAMILY,
            image_size=self.image_size,
            max_tokens=self.max_tokens,
            feature_shape=self.feature_shape,
            vocab_size=int(vocab_size),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "LCoInsConfig":
        fields = dict(raw)
        fields["dec_channels"] = tuple(fields["dec_channels"])
        return cls(**fields)


LCOINS_CONFIGS: dict[str, LCoInsConfig] = {
    # The paper: 224x224, 16-pixel patches (ViT-B/16-like widths), 8 group tokens.
    "full": LCoInsConfig(
        name="full", image_size=224, max_tokens=40, patch_size=16, dim=768, heads=12, vit_layers=12,
        text_layers=6, group_tokens=8, grouping_blocks=4, dec_channels=(256, 128, 64, 32), max_words=32,
        wordpiece_vocab=30000,
    ),
    # The shipped weights: 64x64, 8-pixel patches -> 64 image tokens of width 64.
    "small": LCoInsConfig(
        name="small", image_size=64, max_tokens=24, patch_size=8, dim=64, heads=4, vit_layers=2,
        text_layers=1, group_tokens=8, grouping_blocks=2, dec_channels=(64, 32, 16),
    ),
    # Seconds-fast network for tests.
    "tiny": LCoInsConfig(
        name="tiny", image_size=32, max_tokens=16, patch_size=8, dim=16, heads=2, vit_layers=1,
        text_layers=1, group_tokens=4, grouping_blocks=1, dec_channels=(16, 8, 8), max_words=12,
        wordpiece_vocab=200,
    ),
}

FAMILIES = (FAMILY, LCOINS_FAMILY)
FAMILY_CONFIGS: dict[str, dict] = {FAMILY: CONFIGS, LCOINS_FAMILY: LCOINS_CONFIGS}


def get_config(name: str, family: str = FAMILY):
    from langcolor.client.errors import LangcolorError

    if family not in FAMILY_CONFIGS:
        raise LangcolorError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    configs = FAMILY_CONFIGS[family]
    try:
        return configs[name]
    except KeyError as e:
        raise LangcolorError(f"unknown config {name!r}; choose one of {', '.join(configs)}") from e


def config_from_dict(family: str, raw: dict):
    return LCoInsConfig.from_dict(raw) if family == LCOINS_FAMILY else LCoDeConfig.from_dict(raw)
