"""The GPU tier: the shipped ONNX stages on onnxruntime's CUDA and TensorRT execution providers give
the CPU's answer. Skipped where onnxruntime has no CUDA provider or no GPU answers (CI never has one);
run on a GPU host with ``bash tests/run.sh -m gpu`` (onnxruntime-gpu installed in place of onnxruntime).
"""

from __future__ import annotations

import numpy as np
import pytest

from langcolor.client import families
from langcolor.client.errors import LangcolorError, ModelNotFoundError
from langcolor.client.runtime import ModelBundle, OnnxStages

pytestmark = pytest.mark.gpu

# Lab units: FP32 on another device differs by summation order only; TensorRT FP32 may use TF32-free
# kernels with other reductions; FP16 rounds every activation (a* and b* span +-110).
TOLERANCE = {"cuda": 1e-2, "tensorrt": 5e-2}


def _gpu_or_skip(device: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    provider = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[device]
    if provider not in ort.get_available_providers():
        pytest.skip(f"onnxruntime has no {provider} here (no GPU build or no GPU)")


def _feeds(bundle: ModelBundle, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    from langcolor.export.onnx_export import sample_input

    rng = np.random.default_rng(seed)
    spec_inputs = (bundle.geometry.image, *bundle.geometry.request_inputs)
    return {t.name: sample_input(t, batch, rng) for t in spec_inputs}


@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
@pytest.mark.parametrize("family", families.names())
def test_gpu_providers_give_the_cpu_answer(family, device):
    _gpu_or_skip(device)
    try:
        bundle = ModelBundle.load(family=family)
    except ModelNotFoundError as e:
        pytest.skip(f"{family} is not in the shipped repository: {e}")
    cpu = OnnxStages(bundle)
    try:
        gpu = OnnxStages(bundle, device=device)
    except LangcolorError as e:
        pytest.skip(str(e))
    for batch in (1, 8):
        feeds = _feeds(bundle, batch, seed=batch)
        want, got = cpu.infer(feeds), gpu.infer(feeds)
        for name, value in want.items():
            assert got[name].shape == value.shape
            diff = float(np.abs(got[name].astype(np.float64) - value).max())
            assert diff <= TOLERANCE[device], f"{family} {device} batch {batch}: {name} differs by {diff:.3e}"
