#!/usr/bin/env bash
# The test suite (what CI runs): sets up ./.venv, lints with ruff, then runs pytest. Extra arguments go to
# pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
