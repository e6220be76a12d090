#!/usr/bin/env bash
# The whole benchmark on a GPU machine, in one command, from the repository root:
#
#     bash benchmarks/gpu_bench.sh [--quick] [extra `langcolor bench` flags]
#
# - checks for an NVIDIA GPU (exits 0 with a message when there is none: nothing to measure);
# - makes a venv (.venv-gpu) with the project, onnxruntime-gpu (CUDA + TensorRT execution providers),
#   the TensorRT Python wheels (libnvinfer for the TensorRT EP) and a CUDA build of torch;
# - runs `langcolor bench` with the GPU paths on: PyTorch eager on CUDA (fp32, fp16 autocast),
#   onnxruntime CUDA EP, onnxruntime TensorRT EP with min/opt/max batch profiles 1/8/16 in FP32 and
#   FP16, trtexec engines (FP32, FP16) when trtexec is on PATH, plus every CPU and Triton path;
#   once per registered model family (`langcolor models`), or for the one given with --model;
# - stores the JSON and plots under benchmarks/results/ named after the GPU, the host and the family.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_bench: no NVIDIA GPU here (nvidia-smi -L fails); the CPU benchmark is: langcolor bench" >&2
    exit 0
fi
nvidia-smi -L
GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' /' '__')"

VENV="${LANGCOLOR_GPU_VENV:-.venv-gpu}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e ".[test]"
    # Swap the CPU onnxruntime and torch for GPU builds (same versions where the registry has them).
    "$VENV/bin/pip" uninstall -q -y onnxruntime torch || true
    "$VENV/bin/pip" install -q "onnxruntime-gpu" "tensorrt-cu12" "torch" "numpy<2"
fi

# The TensorRT EP loads libnvinfer from the tensorrt wheels; put them on the loader path.
TRT_LIBS="$("$VENV/bin/python" - <<'PY'
import importlib.util, pathlib
for name in ("tensorrt_libs", "tensorrt"):
    spec = importlib.util.find_spec(name)
    if spec and spec.origin:
        print(pathlib.Path(spec.origin).parent)
        break
PY
)"
export LD_LIBRARY_PATH="${TRT_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$VENV/bin/python" -c "import onnxruntime as o; print('onnxruntime providers:', o.get_available_providers())"
command -v trtexec >/dev/null 2>&1 && echo "trtexec: $(command -v trtexec)" || echo "trtexec: not on PATH (engines through the TensorRT EP only)"

STAMP="$(date -u +%Y%m%d-%H%M%S)"
MODE=full
MODELS=""
PREV=""
for a in "$@"; do
    [ "$a" = "--quick" ] && MODE=quick
    [ "$PREV" = "--model" ] && MODELS="$a"
    case "$a" in --model=*) MODELS="${a#--model=}" ;; esac
    PREV="$a"
done
if [ -z "$MODELS" ]; then  # every registered family, the default first
    MODELS="$("$VENV/bin/python" -c 'from langcolor.client import families; print(" ".join(families.names()))')"
    SET_MODEL=1
else
    SET_MODEL=0
fi
for MODEL in $MODELS; do
    OUT="benchmarks/results/gpu-${GPU_NAME}-$(hostname -s)-${MODEL}-${MODE}-${STAMP}.json"
    EXTRA=()
    [ "$SET_MODEL" = 1 ] && EXTRA=(--model "$MODEL")
    "$VENV/bin/langcolor" bench --paths pytorch,onnxruntime,gpu,triton-grpc,triton-http,perf_analyzer,colorize,prepost \
        --output "$OUT" ${EXTRA[@]+"${EXTRA[@]}"} "$@"
    echo "gpu_bench: wrote $OUT"
done
