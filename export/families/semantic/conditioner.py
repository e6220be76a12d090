"""The client side of the sampler: ``seed`` and ``temperature`` (text) -> its request tensors.

The family takes no condition beside the photo: a user only turns the sampler's two knobs. Both
arrive as text (a command-line flag, a manifest column, a BYTES input of the ``colorize`` endpoint)
and are parsed and range-checked here, so every caller refuses the same values with the same
message. ``SEM_OVERRIDE`` (a semantic map replacing the predicted one) is all zeros here, "use the
prediction"; callers that hold a map pass the tensor themselves.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from langcolor.client.errors import LangcolorError
from langcolor.client.families import TEXT, Conditioned, InputField, Note
from langcolor.client.spec import ModelGeometry

from .config import SEED, SEED_MAX, SEM_OVERRIDE, TEMPERATURE, TEMPERATURE_MAX

DEFAULT_SEED = 0
DEFAULT_TEMPERATURE = 1.0
MAX_TEXT = 32  # characters: a number is never longer; a longer value is refused without being echoed

SEED_INPUT = InputField("seed", TEXT, f"the sampler's seed, an integer in [0, {SEED_MAX}] (default {DEFAULT_SEED}); "
                        "the same seed gives the same colours", required=False, examples=("0", "7", "123"))
TEMPERATURE_INPUT = InputField(
    "temperature", TEXT, f"sampling temperature in [0, {TEMPERATURE_MAX:g}] (default {DEFAULT_TEMPERATURE:g}): "
    "1 samples the model's distribution, lower is safer and less varied, 0 is its most likely colours",
    required=False, examples=("1", "0.7"))


class SamplingError(LangcolorError):
    """A seed or temperature that is not a number in its range."""


def _text(name: str, raw: Any) -> str:
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise SamplingError(f"{name} is not UTF-8 text") from e
    text = str(raw).strip()
    if not text:
        raise SamplingError(f"{name} is empty; leave it out for the default")
    if len(text) > MAX_TEXT:
        raise SamplingError(f"{name} must be a number; got {len(text)} characters")
    return text


def parse_seed(raw: Any) -> int:
    if isinstance(raw, (int, np.integer)) and not isinstance(raw, bool):
        value = int(raw)
    else:
        text = _text("seed", raw)
        try:
            value = int(text)
        except ValueError as e:
            raise SamplingError(f"seed must be an integer in [0, {SEED_MAX}], got {text!r}") from e
    if not 0 <= value <= SEED_MAX:
        raise SamplingError(f"seed must be an integer in [0, {SEED_MAX}], got {value}")
    return value


def parse_temperature(raw: Any) -> float:
    if isinstance(raw, (int, float, np.floating, np.integer)) and not isinstance(raw, bool):
        value = float(raw)
    else:
        text = _text("temperature", raw)
        try:
            value = float(text)
        except ValueError as e:
            raise SamplingError(f"temperature must be a number in [0, {TEMPERATURE_MAX:g}], got {text!r}") from e
    if not (math.isfinite(value) and 0.0 <= value <= TEMPERATURE_MAX):
        raise SamplingError(f"temperature must be a number in [0, {TEMPERATURE_MAX:g}], got {value:g}")
    return value


class SamplingConditioner:
    def __init__(self, geometry: ModelGeometry):
        self.override_shape = next(t for t in geometry.request_inputs if t.name == SEM_OVERRIDE).dims

    def condition(self, values: Mapping[str, Any]) -> Conditioned:
        seed_raw, temp_raw = values.get(SEED_INPUT.name), values.get(TEMPERATURE_INPUT.name)
        seed = DEFAULT_SEED if seed_raw is None else parse_seed(seed_raw)
        temperature = DEFAULT_TEMPERATURE if temp_raw is None else parse_temperature(temp_raw)
        tensors = {
            SEED: np.array([seed], np.int64),
            TEMPERATURE: np.array([temperature], np.float32),
            SEM_OVERRIDE: np.zeros(self.override_shape, np.float32),  # all zeros: the predicted semantics
        }
        note = Note("sampling", f"sampled with seed {seed}, temperature {temperature:g}")
        return Conditioned(tensors, (note,))

    def describe(self) -> dict:
        return {"notes": f"automatic: no caption or reference; knobs --seed (default {DEFAULT_SEED}) and "
                         f"--temperature (default {DEFAULT_TEMPERATURE:g}); --samples N draws N colourings"}


def build_conditioner(geometry: ModelGeometry, assets: Mapping[str, bytes]) -> SamplingConditioner:
    return SamplingConditioner(geometry)
