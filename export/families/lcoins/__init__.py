"""L-CoIns (CVPR 2023): a caption colours the instances it names, told apart by a grouping transformer.

ViT image tokens -> BERT-style language tokens + group tokens in grouping blocks -> transposed-conv
upsampler. The condition is the WordPiece-tokenized caption (``TOKENS``).
"""

from __future__ import annotations

from langcolor.client.caption import CAPTION, caption_conditioner, vocabulary_size
from langcolor.client.families import Family, register
from langcolor.export.synthetic import COLOURS

from .config import CONFIGS, FAMILY, LCoInsConfig, TrainingOptions

FAMILY_RECORD = register(
    Family(
        name=FAMILY,
        title="L-CoIns: Language-based Colorization with Instance Awareness (CVPR 2023)",
        summary="a caption names the colours of instances, e.g. 'the left square is red' (synthetic scenes)",
        inputs=(CAPTION,),
        configs=CONFIGS,
        config_from_dict=LCoInsConfig.from_dict,
        geometry=lambda cfg, assets: cfg.geometry(vocabulary_size(assets)),
        conditioner=caption_conditioner(frozenset(COLOURS)),
        training_options=TrainingOptions,
        package=__name__,
    )
)
