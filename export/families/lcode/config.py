"""Named sizes of an L-CoDe network. The config travels inside every checkpoint.

``full`` is the paper's network (VGG16-BN widths, 224x224 input, feature stride 16). ``small`` is the
configuration of the shipped weights: the same layout at 64x64 with narrower layers, trainable on a
CPU in minutes. At 64 px four max-pools would leave a 4x4 feature map, where a 12-pixel object covers
less than one cell, so ``small`` pools after the first three blocks only (feature stride 8, an 8x8 map)
and decodes with three stride-2 transposed convolutions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from langcolor.client.spec import ModelGeometry, caption_geometry

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
        return caption_geometry(FAMILY, self.image_size, self.max_tokens, int(vocab_size), self.feature_shape)

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


@dataclass(frozen=True)
class TrainingOptions:
    object_weight: float = field(default=4.0, metadata={"help": "ab-loss weight of object pixels vs background"})
    occm_weight: float = field(default=1.0, metadata={"help": "weight of the OCCM BCE loss (eq. 10)"})
    caption_free_rate: float = field(default=0.05, metadata={"help": "share of samples shown without a caption"})
    vocab_scenes: int = field(default=4000, metadata={"help": "training captions the vocabulary is built from"})
    coco_images: str | None = field(default=None, metadata={"help": "image folder of COCO-Stuff-style data"})
    coco_captions: str | None = field(default=None, metadata={"help": "COCO captions JSON (with --coco-images)"})

    def __post_init__(self) -> None:
        from langcolor.client.errors import LangcolorError

        if (self.coco_images is None) != (self.coco_captions is None):
            raise LangcolorError("--coco-images and --coco-captions go together")
