"""The ``langcolor`` backend's model class: a stage, the ``colorize`` endpoint or a driven family's
pipeline, by config ``role``.

Triton's Python backend instantiates ``TritonPythonModel`` once per model instance; ``initialize``
reads the ``role`` parameter of the model's own config and hands over to that role's implementation.
"""

from __future__ import annotations

import json

from langcolor.client import names
from langcolor.client.errors import clip

ROLES = {"stage": ("langcolor.server.stage_model", "StageModel"),
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
