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
from langcolor.client.errors import LangcolorError, clip
from langcolor.client.spec import ModelGeometry, ensemble_spec, stage_specs

from .triton_backend import invalid


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

    def _read(self, request) -> dict[str, np.ndarray]:
        arrays = {}
        for t in self.spec.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, t.name)
            if tensor is None:
                raise LangcolorError(f"missing input {t.name}")
            array = tensor.as_numpy()
            t.validate(array)
            t.validate_values(array)
            arrays[t.name] = array
        if len({a.shape[0] for a in arrays.values()}) != 1:
            raise LangcolorError("inputs disagree on the batch size")
        return arrays

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        good: list[tuple[int, dict[str, np.ndarray]]] = []
        for i, request in enumerate(requests):
            try:
                good.append((i, self._read(request)))
            except LangcolorError as e:
                responses[i] = pb_utils.InferenceResponse(error=invalid(f"{self.name}: {e}"))
        if not good:
            return responses
        feeds = {t.name: np.concatenate([a[t.name] for _, a in good]) for t in self.spec.inputs}
        try:
            outputs = self.driver.run(self._call_stage, feeds, self.geometry)
        except Exception as e:  # a stage failed: the batch fails, the model stays up
            for i, _ in good:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(clip(f"{self.name}: {e}")))
            return responses
        start = 0
        for i, arrays in good:
            n = next(iter(arrays.values())).shape[0]
            tensors = [pb_utils.Tensor(t.name, np.ascontiguousarray(outputs[t.name][start : start + n], dtype=t.dtype))
                       for t in self.spec.outputs]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
            start += n
        return responses
