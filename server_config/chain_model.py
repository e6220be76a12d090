"""The ``chain`` role of the ``langcolor`` backend: a family's three stages in one Python model.

On the python target, the model named like the family is a one-step ensemble over ``<family>_impl``,
and this is that model: it runs the stage models' own ``model.onnx`` files (found beside it in the
repository, named by the ``stage_models`` parameter) one after the other in this process, so a
request makes one trip through the Python backend instead of three (each trip costs a message and
a copy through shared memory, which is most of a small network's served latency). The stage models
stay in the repository for direct per-stage calls.

Requests of a dynamic batch are validated one by one (the client's ``TensorSpec`` checks: shape,
dtype, finite values, declared ranges); a bad one gets an error for itself alone, the good ones run
as one batch and the outputs are split back.
"""

from __future__ import annotations

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from langcolor.client import names
from langcolor.client.errors import LangcolorError
from langcolor.client.runtime import VERSION, open_session, resolve_threads, session_options
from langcolor.client.spec import STAGES, ModelGeometry, ensemble_spec, stage_specs

from .triton_backend import execute_batched


class ChainModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = config["name"]
        self.geometry = ModelGeometry.from_dict(json.loads(params[names.PARAM_GEOMETRY]))
        self.spec = ensemble_spec(self.geometry)
        self.specs = stage_specs(self.geometry)
        models = params.get(names.PARAM_STAGE_MODELS, "").split(",")
        expected = [self.specs[s].model_name for s in STAGES]
        if models != expected:
            raise pb_utils.TritonModelException(
                f"{self.name}: parameter '{names.PARAM_STAGE_MODELS}' is {models}, the geometry's stages are {expected}")
        threads = resolve_threads(params.get(names.PARAM_INTRA_OP_THREADS))
        opts = session_options(threads)
        repository = Path(args["model_repository"]).parent  # args["model_repository"] is this model's folder
        try:
            self.sessions = {s: open_session(repository / self.specs[s].model_name / VERSION / "model.onnx",
                                             self.specs[s], opts, ["CPUExecutionProvider"]) for s in STAGES}
        except LangcolorError as e:  # a missing file, or one that disagrees with the geometry
            raise pb_utils.TritonModelException(f"{self.name}: {e}") from e
        pb_utils.Logger.log_info(f"{self.name}: {', '.join(expected)} in one model, {threads} thread(s)")

    def _chain(self, feeds: dict) -> dict:
        tensors = dict(feeds)
        for stage in STAGES:
            spec = self.specs[stage]
            outs = self.sessions[stage].run(spec.output_names, {t.name: tensors[t.name] for t in spec.inputs})
            tensors.update(zip(spec.output_names, outs))
        return tensors

    def execute(self, requests: list) -> list:
        return execute_batched(self.name, requests, self.spec.inputs, self.spec.outputs, self._chain)

    def finalize(self) -> None:
        self.sessions = {}
