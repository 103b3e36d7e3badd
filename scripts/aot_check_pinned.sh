#!/usr/bin/env bash
# aot_check (python -m fastrnn.kernels.aot_check) under the GPU machine's Triton, pinned by TRITON_PIN
# (default 3.6.0), in its own venv (TRITON_PIN_VENV, default .venv-triton36, git-ignored) that reuses
# ./.venv's torch and editable fastrnn through a .pth file. Arguments go to aot_check, e.g. --quick --no-spills.
set -euo pipefail
cd "$(dirname "$0")/.."
PIN=${TRITON_PIN:-3.6.0}
VENV=${TRITON_PIN_VENV:-.venv-triton36}
[ -x .venv/bin/python ] || bash scripts/setup_venv.sh
if ! "$VENV/bin/python" -c "import sys, triton; sys.exit(triton.__version__ != '$PIN')" 2>/dev/null; then
  base=$(.venv/bin/python -c "import sys; print(sys._base_executable)")
  "$base" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "triton==$PIN"
fi
main_site=$(.venv/bin/python -c "import site; print(site.getsitepackages()[0])")
pin_site=$("$VENV/bin/python" -c "import site; print(site.getsitepackages()[0])")
echo "import site; site.addsitedir('$main_site')" > "$pin_site/fastrnn-main-venv.pth"
unset TRITON_INTERPRET
exec "$VENV/bin/python" -m fastrnn.kernels.aot_check "$@"
