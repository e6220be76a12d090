"""The ``langcolor`` backend's model class: a stage, a family's fused chain of stages, the ``colorize``
endpoint or a driven family's pipeline, by config ``role``.

Triton's Python backend instantiates ``TritonPythonModel`` once per model instance; ``initialize``
reads the ``role`` parameter of the model's own config and hands over to that role's implementation.
"""

from __future__ import annotations

import json

from langcolor.client import names
from langcolor.client.errors import clip

ROLES = {"stage": ("langcolor.server.stage_model", "StageModel"),
         "chain": ("langcolor.server.chain_model", "ChainModel"),
         "colorize": ("langcolor.server.colorize_model", "ColorizeModel"),
         "pipeline": ("langcolor.server.pipeline_model", "PipelineModel")}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import importlib

        import triton_python_backend_utils as pb_utils

        config = json.loads(args["model_config"])
        role = config.get("parameters", {}).get(names.PARAM_ROLE, {}).get("string_value", "")
        if role not in ROLES:
            raise pb_utils.TritonModelException(
                f"{config.get('name')}: parameter '{names.PARAM_ROLE}' must be one of {sorted(ROLES)}, got {role!r}"
            )
        module, cls = ROLES[role]
        self._impl = getattr(importlib.import_module(module), cls)()
        self._impl.initialize(args)
        # The implementation's own execute (a coroutine function for colorize): Triton's stub calls
        # the instance attribute, and awaits what it returns when that is a coroutine.
        self.execute = self._impl.execute

    def execute(self, requests: list) -> list:  # replaced per instance in initialize
        return self._impl.execute(requests)

    def finalize(self) -> None:
        impl = getattr(self, "_impl", None)
        if impl is not None and hasattr(impl, "finalize"):
            impl.finalize()


def invalid(message: str):
    """A request's own error (Triton's INVALID_ARG where the backend has it), its message clipped."""
    import triton_python_backend_utils as pb_utils

    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    message = clip(message)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


def execute_batched(name: str, requests: list, inputs, outputs, compute) -> list:
    """The requests of one dynamic batch, each checked on its own against ``inputs`` (``TensorSpec``s:
    shape, dtype, finite values, declared range); a bad one is answered with its error alone, the good
    ones are concatenated on the batch axis, run by ``compute(feeds) -> {name: array}`` once, and the
    outputs (``TensorSpec``s) split back in order. A failing ``compute`` fails the batch, not the model."""
    import numpy as np
    import triton_python_backend_utils as pb_utils

    from langcolor.client.errors import LangcolorError

    responses: list = [None] * len(requests)
    good: list[tuple[int, dict]] = []
    for i, request in enumerate(requests):
        try:
            arrays = {}
            for t in inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, t.name)
                if tensor is None:
                    raise LangcolorError(f"missing input {t.name}")
                array = tensor.as_numpy()
                t.validate(array)
                t.validate_values(array)
                arrays[t.name] = array
            if len({a.shape[0] for a in arrays.values()}) != 1:
                raise LangcolorError(f"inputs disagree on the batch size: {sorted({a.shape[0] for a in arrays.values()})}")
            good.append((i, arrays))
        except LangcolorError as e:
            responses[i] = pb_utils.InferenceResponse(error=invalid(f"{name}: {e}"))
    if not good:
        return responses
    feeds = {t.name: np.concatenate([a[t.name] for _, a in good]) for t in inputs}  # (sum n, ...)
    try:
        result = compute(feeds)
    except Exception as e:  # onnxruntime, a stage behind BLS: the batch fails, the model stays up
        for i, _ in good:
            responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(clip(f"{name}: {e}")))
        return responses
    start = 0
    for i, arrays in good:
        n = next(iter(arrays.values())).shape[0]
        tensors = [pb_utils.Tensor(t.name, np.ascontiguousarray(result[t.name][start : start + n], dtype=t.dtype))
                   for t in outputs]
        responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        start += n
    return responses
