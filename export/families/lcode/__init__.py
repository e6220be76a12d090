"""L-CoDe (AAAI 2022): a caption colours the objects it names.

Image encoder (VGG16-BN layout) -> language fusion (Bi-LSTM, OCCM, attention transfer, soft-gated
injection) -> colour decoder. The condition is the tokenized caption (``TOKENS``). The network lives
in ``network``, training batches and losses in ``training``, evaluation in ``evaluation``.
"""

from __future__ import annotations

from langcolor.client.caption import CAPTION, caption_conditioner, vocabulary_size
from langcolor.client.families import Family, register
from langcolor.export.synthetic import COLOURS

from .config import CONFIGS, FAMILY, LCoDeConfig, TrainingOptions

FAMILY_RECORD = register(
    Family(
        name=FAMILY,
        title="L-CoDe: Language-based Colorization using Color-object Decoupled Conditions (AAAI 2022)",
        summary="a caption names the colours of objects and background (synthetic-scene vocabulary)",
        inputs=(CAPTION,),
        configs=CONFIGS,
        config_from_dict=LCoDeConfig.from_dict,
        geometry=lambda cfg, assets: cfg.geometry(vocabulary_size(assets)),
        conditioner=caption_conditioner(frozenset(COLOURS)),
        training_options=TrainingOptions,
        package=__name__,
    )
)
