#!/usr/bin/env bash
# The project's test command (README "Setup"): creates .venv if needed, installs langcolor with
# its test extras (torch pinned to the local CPU wheel, the real tritonserver from nvidia-pytriton),
# then runs the whole suite. Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not server"`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet -e '.[test]'
exec .venv/bin/python -m pytest "$@"
