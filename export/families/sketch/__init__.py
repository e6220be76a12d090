"""Sketch colorization (Zou et al., TOG 2019): instructions colour a line drawing, object by object.

Each instruction ("the left car is red", "all the trees are green", "the sky is blue and the ground is
green") colours the objects or the background regions it names; the rest of the picture stays as it
was. Three networks (instance matching, foreground and background colouring) in three served stages;
the client carries the canvas from one instruction to the next, so the server keeps no session.
``langcolor sketch`` runs whole sessions. The networks live in ``network``, training in ``training``,
the figures of ``langcolor evaluate`` in ``evaluation``; the drawing's objects come from ``regions``.
"""

from __future__ import annotations

from langcolor.client.caption import vocabulary_size
from langcolor.client.families import Family, register

from .codec import SKETCH_CODEC
from .conditioner import CANVAS_INPUT, INSTRUCTION, build
from .config import CONFIGS, FAMILY, SketchConfig, TrainingOptions

FAMILY_RECORD = register(
    Family(
        name=FAMILY,
        title="Language-based Colorization of Scene Sketches (ACM TOG 2019)",
        summary="instructions colour a line drawing object by object, e.g. 'the left car is red'",
        inputs=(INSTRUCTION, CANVAS_INPUT),
        configs=CONFIGS,
        config_from_dict=SketchConfig.from_dict,
        geometry=lambda cfg, assets: cfg.geometry(vocabulary_size(assets)),
        conditioner=build,
        training_options=TrainingOptions,
        codec=SKETCH_CODEC,
        commands={"sketch": f"{__name__}.sketch_cmd"},
        package=__name__,
    )
)
