#!/usr/bin/env bash
# The main job: parity + benchmark report on whatever hardware is here. Arguments go to benchmarks.run
# (default preset: quick, under 2 minutes on 2 CPU cores; --preset full for the whole grid).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
exec .venv/bin/python -m benchmarks.run "$@"
