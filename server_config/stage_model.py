"""The ``stage`` role of the ``langcolor`` backend: one ONNX stage of any family, with onnxruntime on CPU.

It knows nothing about a family: tensor names, dtypes, dims, the ONNX file, thread count and the value
ranges to check all come from its own ``config.pbtxt``, which ``langcolor export`` generated from the
stage spec. It runs ``model.onnx`` (the same file the in-process client and the onnxruntime backend
load) with the project's own session options.

Triton hands ``execute`` every request of a dynamic batch. Each request is validated on its own (the
same ``TensorSpec`` checks as the client: shape, dtype, finite values, declared ranges); a bad one gets
a ``TritonError`` for itself alone, the good ones are concatenated along the batch axis, run in one
onnxruntime call and split back.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from langcolor.client import names
from langcolor.client.runtime import resolve_threads, session_options
from langcolor.client.spec import BATCH, TensorSpec

from .triton_backend import execute_batched

_NUMPY_DTYPES = {"TYPE_FP32": "float32", "TYPE_FP16": "float16", "TYPE_INT64": "int64", "TYPE_INT32": "int32"}


def specs_from_config(config: dict, params: dict[str, str]) -> list[TensorSpec]:
    """The model's declared inputs as ``TensorSpec``s, value ranges from the ``input_range.*`` parameters."""
    specs = []
    for t in config["input"]:
        rng = params.get(names.PARAM_RANGE_PREFIX + t["name"])
        value_range = tuple(float(x) for x in rng.split()) if rng else None
        dims = tuple(int(d) for d in t["dims"])
        specs.append(TensorSpec(t["name"], _NUMPY_DTYPES[t["data_type"]], (BATCH, *dims), value_range))
    return specs


class StageModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = config["name"]
        self.inputs = specs_from_config(config, params)
        self.output_names = [t["name"] for t in config["output"]]
        self.outputs = [TensorSpec(t["name"], _NUMPY_DTYPES[t["data_type"]], (BATCH, *map(int, t["dims"])))
                        for t in config["output"]]

        onnx_path = Path(args["model_repository"]) / args["model_version"] / params.get(names.PARAM_ONNX_FILE, "model.onnx")
        opts = session_options(resolve_threads(params.get(names.PARAM_INTRA_OP_THREADS)))
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

        # The ONNX file and the config were generated from the same spec; refuse to serve if not.
        onnx_inputs = [i.name for i in self.session.get_inputs()]
        onnx_outputs = [o.name for o in self.session.get_outputs()]
        if onnx_inputs != [t.name for t in self.inputs] or not set(self.output_names) <= set(onnx_outputs):
            raise pb_utils.TritonModelException(
                f"{self.name}: {onnx_path} has inputs {onnx_inputs} and outputs {onnx_outputs}, "
                f"config.pbtxt declares {[t.name for t in self.inputs]} -> {self.output_names}"
            )
        pb_utils.Logger.log_info(f"{self.name}: loaded {onnx_path.name}, {opts.intra_op_num_threads} thread(s)")

    def execute(self, requests: list) -> list:
        run = lambda feeds: dict(zip(self.output_names, self.session.run(self.output_names, feeds)))  # noqa: E731
        return execute_batched(self.name, requests, self.inputs, self.outputs, run)

    def finalize(self) -> None:
        self.session = None
