"""Pixelated Semantic Colorization (Zhao, Han, Shao, Snoek; IJCV 2020): automatic, diverse colourings.

No caption, no reference: a segmentation branch tells the network what each region is, and a
conditional PixelCNN samples the chroma pixel by pixel from p(ab | L), so every seed gives another
coherent colouring. The stages are in ``network``, the sampling loop (the family's driver) in
``sampler``, the synthetic data in ``data``, training in ``training``, evaluation in ``evaluation``.
"""

from __future__ import annotations

from langcolor.client.families import Family, register

from .conditioner import SEED_INPUT, TEMPERATURE_INPUT, build_conditioner
from .config import CONFIGS, FAMILY, SemanticConfig, TrainingOptions
from .sampler import Sampler

FAMILY_RECORD = register(
    Family(
        name=FAMILY,
        title="Pixelated Semantic Colorization (Zhao, Han, Shao, Snoek; IJCV 2020)",
        summary="automatic: predicts what each region is and samples diverse colourings (--seed, --temperature)",
        inputs=(SEED_INPUT, TEMPERATURE_INPUT),
        configs=CONFIGS,
        config_from_dict=SemanticConfig.from_dict,
        geometry=lambda cfg, assets: cfg.geometry(),
        conditioner=build_conditioner,
        training_options=TrainingOptions,
        driver=Sampler(),
        package=__name__,
    )
)
