#!/usr/bin/env bash
# Creates ./.venv (if missing) with torch, the test and benchmark tools, and fastrnn installed editable
# (which builds the C++ extension). TORCH_SPEC picks the torch to install (default: torch==2.13.0, the
# CPU build on this project's machines); a machine that already has a suitable torch can pass
# FASTRNN_SYSTEM_SITE=1 to reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  if [ "${FASTRNN_SYSTEM_SITE:-0}" = "1" ]; then
    "$PYTHON" -m venv --system-site-packages .venv
  else
    "$PYTHON" -m venv .venv
  fi
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" "$TORCH_SPEC"
fi
"${PIP[@]}" setuptools wheel ninja numpy pytest hypothesis expecttest tqdm matplotlib pytest-benchmark triton ruff \
  onnx onnxruntime onnxscript
"${PIP[@]}" --no-build-isolation --no-deps -e .
