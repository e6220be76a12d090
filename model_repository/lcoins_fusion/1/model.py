"""One generic Triton Python-backend model for every stage (copied as ``<stage>/1/model.py``).

It knows nothing about L-CoDe: tensor names, dtypes, dims, the ONNX file, thread count and the value
ranges to check all come from its own ``config.pbtxt``, which ``langcolor export`` generated from the
stage spec. It runs ``model.onnx`` (the same file the in-process client and the onnxruntime backend
load) with onnxruntime on CPU.

Triton hands ``execute`` every request of a dynamic batch. Each request is validated on its own
(shape, dtype, finite values, declared ranges); a bad one gets a ``TritonError`` for itself alone,
the good ones are concatenated along the batch axis, run in one onnxruntime call and split back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

_RANGE_PREFIX = "input_range."  # must match langcolor.export.triton_config.PARAM_RANGE_PREFIX


def _error(message: str) -> "pb_utils.TritonError":
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


class _Tensor:
    """One declared input: name, numpy dtype, dims without the batch axis, optional inclusive range."""

    def __init__(self, cfg: dict, value_range: tuple[float, float] | None) -> None:
        self.name = cfg["name"]
        self.dtype = np.dtype(pb_utils.triton_string_to_numpy(cfg["data_type"]))
        self.dims = tuple(int(d) for d in cfg["dims"])
        self.range = value_range

    def check(self, array: np.ndarray) -> None:
        """Raise ValueError naming this tensor if ``array`` [n, *dims] does not fit."""
        if array.dtype != self.dtype:
            raise ValueError(f"{self.name}: expected dtype {self.dtype}, got {array.dtype}")
        if array.ndim != len(self.dims) + 1 or tuple(array.shape[1:]) != self.dims:
            raise ValueError(f"{self.name}: expected shape [N, {', '.join(map(str, self.dims))}], got {list(array.shape)}")
        if array.size == 0:
            raise ValueError(f"{self.name}: empty tensor {list(array.shape)}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"{self.name}: contains NaN or infinite values")
        if self.range is not None:
            lo, hi = self.range
            a_min, a_max = array.min(), array.max()
            if a_min < lo or a_max > hi:
                raise ValueError(f"{self.name}: values must lie in [{lo:g}, {hi:g}], got [{a_min:g}, {a_max:g}]")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = config["name"]
        ranges = {}
        for key, value in params.items():
            if key.startswith(_RANGE_PREFIX):
                lo, hi = (float(x) for x in value.split())
                ranges[key[len(_RANGE_PREFIX):]] = (lo, hi)
        self.inputs = [_Tensor(t, ranges.get(t["name"])) for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]
        self.output_dtypes = {
            t["name"]: np.dtype(pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]
        }

        onnx_path = Path(args["model_repository"]) / args["model_version"] / params.get("onnx_file", "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        opts.inter_op_num_threads = 1
        # No busy-waiting threads: several stage instances share the CPU with tritonserver itself.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

        # The ONNX file and the config were generated from the same spec; refuse to serve if not.
        onnx_inputs = [i.name for i in self.session.get_inputs()]
        onnx_outputs = [o.name for o in self.session.get_outputs()]
        if onnx_inputs != [t.name for t in self.inputs] or onnx_outputs != self.output_names:
            raise pb_utils.TritonModelException(
                f"{self.name}: {onnx_path} has inputs {onnx_inputs} and outputs {onnx_outputs}, "
                f"config.pbtxt declares {[t.name for t in self.inputs]} -> {self.output_names}"
            )
        pb_utils.Logger.log_info(f"{self.name}: loaded {onnx_path.name}, {opts.intra_op_num_threads} thread(s)")

    def _read(self, request) -> dict[str, np.ndarray]:
        """The request's inputs by name, validated; raises ValueError naming the first problem."""
        arrays: dict[str, np.ndarray] = {}
        for t in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, t.name)
            if tensor is None:
                raise ValueError(f"missing input {t.name}")
            array = tensor.as_numpy()
            t.check(array)
            arrays[t.name] = array
        sizes = {a.shape[0] for a in arrays.values()}
        if len(sizes) != 1:
            raise ValueError(f"inputs disagree on the batch size: {sorted(sizes)}")
        return arrays

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        good: list[tuple[int, dict[str, np.ndarray]]] = []
        for i, request in enumerate(requests):
            try:
                good.append((i, self._read(request)))
            except ValueError as e:
                responses[i] = pb_utils.InferenceResponse(error=_error(f"{self.name}: {e}"))
        if good:
            feeds = {t.name: np.concatenate([a[t.name] for _, a in good]) for t in self.inputs}  # (sum n, ...)
            try:
                outputs = self.session.run(self.output_names, feeds)
            except Exception as e:  # onnxruntime raises its own types; the batch fails, the model stays up
                for i, _ in good:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {e}"))
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
