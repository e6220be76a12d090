#!/usr/bin/env bash
# Each optional extra on its own, in a fresh virtual environment: the commands it enables run, and
# the commands it does not enable answer with a one-line install hint and a non-zero exit, never a
# traceback. Run by CI before the test suite (.ci/run); takes a few minutes (four installs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
ROOT=$(pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp client/examples/shapes.png "$WORK/photo.png"

venv() {  # venv NAME EXTRA -> a fresh environment with langcolor[EXTRA] (plain langcolor for "")
    "$PY" -m venv "$WORK/$1"
    "$WORK/$1/bin/python" -m pip install --quiet --upgrade pip >/dev/null
    "$WORK/$1/bin/python" -m pip install --quiet -e "$ROOT${2:+[$2]}" >/dev/null 2>&1  # as the README installs it
    echo "extras: $1 installed ($("$WORK/$1/bin/python" -m pip freeze | wc -l) packages)"
}

expect_hint() {  # expect_hint VENV EXTRA COMMAND... : fails cleanly, naming the extra to install
    local out status=0
    out=$("$WORK/$1/bin/langcolor" "${@:3}" 2>&1) || status=$?
    if [ "$status" -eq 0 ] || ! grep -q "pip install 'langcolor\[$2\]'" <<<"$out" || grep -q Traceback <<<"$out"; then
        echo "extras: '$1' venv: 'langcolor ${*:3}' should name the [$2] extra and exit non-zero; got $status:" >&2
        echo "$out" >&2
        exit 1
    fi
    echo "extras: $1: langcolor $3 -> install hint for [$2]"
}

# The client alone: colorize in-process works; training, export, evaluation and serving say what to install.
venv base ""
"$WORK/base/bin/langcolor" colorize "$WORK/photo.png" -c "a red circle on a blue background" -o "$WORK/base.png"
"$WORK/base/bin/langcolor" models >/dev/null
for cmd in train evaluate export serve bench; do "$WORK/base/bin/langcolor" "$cmd" --help >/dev/null; done
expect_hint base train train --config tiny --steps 1 --out "$WORK/run"
expect_hint base train evaluate
expect_hint base train export --output "$WORK/repo"
expect_hint base serve serve --model-repository "$ROOT/model_repository"

# [train] alone: train, evaluate and export work without the bench or serve extras.
venv train train
"$WORK/train/bin/langcolor" train --config tiny --steps 2 --batch-size 4 --out "$WORK/run" --no-progress
"$WORK/train/bin/langcolor" evaluate --checkpoint "$WORK/run/weights.pt" --scenes 4
"$WORK/train/bin/langcolor" export --checkpoint "$WORK/run/weights.pt" --output "$WORK/repo"
expect_hint train serve serve --model-repository "$WORK/repo"

# [serve] alone: the server starts on the shipped repository (loopback, free ports) and stops.
venv serve serve
"$WORK/serve/bin/python" - "$ROOT/model_repository" <<'PYEOF'
import sys
from langcolor.server.launcher import TritonServer, free_ports
http, grpc, metrics = free_ports(3)
with TritonServer(sys.argv[1], http_port=http, grpc_port=grpc, metrics_port=metrics) as server:
    print(f"extras: serve: tritonserver ready in {server.startup_s:.1f} s")
PYEOF

# [bench] alone: the benchmark's own help works; measuring needs torch, and says so.
venv bench bench
"$WORK/bench/bin/langcolor" bench --help >/dev/null
expect_hint bench train bench --quick --configs small --output "$WORK/bench.json"
echo "extras: every extra works on its own"
