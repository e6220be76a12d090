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

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from langcolor.client import names
from langcolor.client.errors import LangcolorError, clip
from langcolor.client.runtime import session_options
from langcolor.client.spec import BATCH, TensorSpec

from .triton_backend import invalid

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
        self.output_dtypes = {t["name"]: np.dtype(_NUMPY_DTYPES[t["data_type"]]) for t in config["output"]}

        onnx_path = Path(args["model_repository"]) / args["model_version"] / params.get(names.PARAM_ONNX_FILE, "model.onnx")
        opts = session_options(int(params.get(names.PARAM_INTRA_OP_THREADS, "1")))
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

    def _read(self, request) -> dict[str, np.ndarray]:
        """The request's inputs by name, validated; raises LangcolorError naming the first problem."""
        arrays: dict[str, np.ndarray] = {}
        for t in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, t.name)
            if tensor is None:
                raise LangcolorError(f"missing input {t.name}")
            array = tensor.as_numpy()
            t.validate(array)
            t.validate_values(array)
            arrays[t.name] = array
        sizes = {a.shape[0] for a in arrays.values()}
        if len(sizes) != 1:
            raise LangcolorError(f"inputs disagree on the batch size: {sorted(sizes)}")
        return arrays

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        good: list[tuple[int, dict[str, np.ndarray]]] = []
        for i, request in enumerate(requests):
            try:
                good.append((i, self._read(request)))
            except LangcolorError as e:
                responses[i] = pb_utils.InferenceResponse(error=invalid(f"{self.name}: {e}"))
        if good:
            feeds = {t.name: np.concatenate([a[t.name] for _, a in good]) for t in self.inputs}  # (sum n, ...)
            try:
                outputs = self.session.run(self.output_names, feeds)
            except Exception as e:  # onnxruntime raises its own types; the batch fails, the model stays up
                for i, _ in good:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(clip(f"{self.name}: {e}")))
                return responses
            start = 0
            for i, arrays in good:
                n = next(iter(arrays.values())).shape[0]
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(out[start : start + n], dtype=self.output_dtypes[name]))
                    for name, out in zip(self.output_names, outputs)
                ]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += n
        return responses

    def finalize(self) -> None:
        self.session = None
