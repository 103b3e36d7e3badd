#!/usr/bin/env bash
# One prepared call for a lent GPU machine (torch and Triton already there, no registry): builds fastrnn in
# place, runs the GPU tests (and the Triton tests on CUDA tensors), the grid-barrier microbenchmark, then
# times fastrnn against torch.nn.RNN (cuDNN, TF32 off) on the GPU grid. Everything lands in
# $OUT/<gpu>-<date>/ (or benchmarks/results/ without $OUT); the table is printed last.
# Each step has its own time limit so that the whole call stays under 8 minutes:
# build ~1 min, GPU tests <= 150 s, Triton tests on CUDA <= 60 s, barrier <= 20 s, benchmark <= 200 s.
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET
gpu=$($PY -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))" 2>/dev/null || echo no-gpu)
dir=${OUT:-benchmarks/results}/${gpu}-$(date +%F)
mkdir -p "$dir"
exec > >(tee "$dir/gpu_check.log") 2>&1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
$PY -m pip install --no-build-isolation --no-deps -q -e . || { echo "build failed"; exit 1; }

echo "== GPU tests (parity against cuDNN, compile, autocast), then the Triton kernel tests on CUDA tensors"
timeout 150 $PY -m pytest -q -p no:cacheprovider -m gpu tests/
tests_rc=$?
timeout 60 $PY -m pytest -q -x -p no:cacheprovider tests/test_triton_interpreter.py || tests_rc=$?

echo "== grid barrier"
timeout 20 $PY -m benchmarks.barrier_bench

echo "== benchmark (T=1000, B in 1..256, H in 128..2048 fp32, bf16 at B=64, packed; written after every case)"
timeout 200 $PY -m benchmarks.run --preset gpu --skip "fastrnn[reference],nn.RNNCell loop,fastrnn[cpp]" \
  --out "$dir/bench" | grep -v "^|---" | sed 's/,L=1,uni,tanh//'
echo "tests exit code: $tests_rc; results in $dir"
exit $tests_rc
