#!/usr/bin/env bash
# Installs the peers of `python -m benchmarks.run --preset peers` into ./.venv, after scripts/setup_venv.sh:
# onnxruntime, OpenVINO and JAX (with jaxlib) at the releases issue 21's comparison names, each the newest
# patch of the named release. torch is held where setup_venv.sh put it (a constraints file), and the script
# fails if anything moved it anyway. It prints the numpy the peers left, which results.json records too.
#   bash scripts/setup_peers.sh && .venv/bin/python -m benchmarks.run --preset peers
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
PY=.venv/bin/python
PEERS=(onnxruntime==1.32.0 openvino==2026.4.1 jax==0.10.2 jaxlib==0.10.2)
torch_before=$("$PY" -c "import torch; print(torch.__version__)")
hold=$(mktemp)
trap 'rm -f "$hold"' EXIT
echo "torch==$torch_before" > "$hold"
"$PY" -m pip install --quiet --disable-pip-version-check -c "$hold" "${PEERS[@]}"
torch_after=$("$PY" -c "import torch; print(torch.__version__)")
if [ "$torch_after" != "$torch_before" ]; then
  echo "setup_peers.sh: installing the peers moved torch from $torch_before to $torch_after" >&2
  exit 1
fi
"$PY" - <<'PY'
import jax, numpy, onnxruntime, openvino, torch

print(f"peers installed: onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__.split('-')[0]}, "
      f"jax {jax.__version__}; torch {torch.__version__} (unchanged), numpy {numpy.__version__}")
PY
