"""Exemplar colorization (Yin et al., ACM MM 2021): colour a photo like a reference photo you give it.

"Yes, Attention Is All You Need, for Exemplar based Colorization": a Siamese encoder finds, for each
part of the gray photo, the matching parts of the reference (the paper's SCM, attention from the photo
to the reference); a classifier over ab bins re-weighted by the reference's colour histogram (the
database colour module, DCM) covers what the reference does not show; a per-position gate mixes the
two and a decoder returns ab. The condition is the reference (``REF_L``, ``REF_AB``), from a photo (``--reference``)
or from swatches the client renders (``--palette``). Trained from real photographs that install
offline (``photos``) and synthetic shape scenes (``scenes``). The network lives in ``network``,
training in ``training``, the figures of ``langcolor evaluate`` in ``evaluation``.
"""

from __future__ import annotations

from langcolor.client.families import Family, register

from .conditioner import PALETTE, REFERENCE, build
from .config import CONFIGS, FAMILY, ExemplarConfig, TrainingOptions

FAMILY_RECORD = register(
    Family(
        name=FAMILY,
        title='"Yes, Attention Is All You Need, for Exemplar based Colorization" (ACM MM 2021)',
        summary="colours a photo like a reference photo (or a palette) you give it; works on real photographs",
        inputs=(REFERENCE, PALETTE),
        configs=CONFIGS,
        config_from_dict=ExemplarConfig.from_dict,
        geometry=lambda cfg, assets: cfg.geometry(),
        conditioner=build,
        training_options=TrainingOptions,
        package=__name__,
    )
)
