#!/usr/bin/env bash
# Serve an onnxruntime/GPU model repository with NVIDIA's Triton container on this host.
# Usage: server_config/run_gpu.sh [MODEL_REPOSITORY]        (default: model_repository_gpu)
# Environment: LANGCOLOR_IMAGE (langcolor-triton:24.10), LANGCOLOR_HOST (127.0.0.1: loopback only),
#              LANGCOLOR_GPUS (all, or e.g. '"device=0"'), LANGCOLOR_HTTP_PORT/GRPC_PORT/METRICS_PORT.
# Not run on the development machines (no GPU there); see server_config/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(realpath "${1:-model_repository_gpu}")
IMAGE=${LANGCOLOR_IMAGE:-langcolor-triton:24.10}
HOST=${LANGCOLOR_HOST:-127.0.0.1}
GPUS=${LANGCOLOR_GPUS:-all}
HTTP=${LANGCOLOR_HTTP_PORT:-8000}
GRPC=${LANGCOLOR_GRPC_PORT:-8001}
METRICS=${LANGCOLOR_METRICS_PORT:-8002}

if [ ! -f "$REPO/colorize/config.pbtxt" ]; then
    echo "no model repository at $REPO; create it with:" >&2
    echo "  langcolor export --backend onnxruntime --gpu --output $REPO" >&2
    exit 2
fi
if grep -lq 'backend: "langcolor"' "$REPO"/*_encoder/config.pbtxt; then
    echo "warning: $REPO holds python-backend stages (CPU); export with --backend onnxruntime --gpu for the GPU" >&2
fi

docker build -f server_config/Dockerfile.gpu -t "$IMAGE" .
# --shm-size: the Python backend exchanges tensors with its stub through /dev/shm (64 MB by default).
exec docker run --rm --gpus "$GPUS" --shm-size=1g \
    -p "$HOST:$HTTP:8000" -p "$HOST:$GRPC:8001" -p "$HOST:$METRICS:8002" \
    -v "$REPO:/models:ro" "$IMAGE"
