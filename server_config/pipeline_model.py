"""The ``pipeline`` role of the ``langcolor`` backend: a driven family's model, named like the family.

A family whose stages run in a loop (an autoregressive sampler calls its decoder once per chroma
pixel) cannot be one static ensemble. This model runs the family's own driver, the same numpy code
the in-process runtime runs, and its stage calls go to ``<family>_<stage>`` through BLS, so they are
dynamically batched like any request. Requests of a dynamic batch are validated one by one (the
client's ``TensorSpec`` checks), the good ones run as one batch, and the outputs are split back; a
bad one gets an error for itself alone.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from langcolor.client import families, names
from langcolor.client.errors import LangcolorError
from langcolor.client.spec import ModelGeometry, ensemble_spec, stage_specs

from .triton_backend import execute_batched


class PipelineModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = config["name"]
        self.geometry = ModelGeometry.from_dict(json.loads(params[names.PARAM_GEOMETRY]))
        try:
            self.driver = families.get(self.geometry.family).driver
        except LangcolorError as e:
            raise pb_utils.TritonModelException(f"{self.name}: {e}") from e
        if self.driver is None:
            raise pb_utils.TritonModelException(f"{self.name}: family '{self.geometry.family}' has no driver")
        self.spec = ensemble_spec(self.geometry)
        self.stages = stage_specs(self.geometry)

    def _call_stage(self, stage: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.stages[stage]
        request = pb_utils.InferenceRequest(
            model_name=spec.model_name, requested_output_names=spec.output_names,
            inputs=[pb_utils.Tensor(t.name, np.ascontiguousarray(feeds[t.name])) for t in spec.inputs],
        )
        response = request.exec()
        if response.has_error():
            raise LangcolorError(f"{spec.model_name}: {response.error().message()}")
        return {n: pb_utils.get_output_tensor_by_name(response, n).as_numpy() for n in spec.output_names}

    def execute(self, requests: list) -> list:
        run = lambda feeds: self.driver.run(self._call_stage, feeds, self.geometry)  # noqa: E731
        return execute_batched(self.name, requests, self.spec.inputs, self.spec.outputs, run)
