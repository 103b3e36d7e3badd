#!/usr/bin/env bash
# One prepared call for a lent GPU machine (torch and Triton already there, no registry): builds fastrnn in
# place, runs the GPU tests (and the Triton tests on CUDA tensors), the grid-barrier microbenchmark, then
# times fastrnn against torch.nn.RNN (cuDNN, TF32 off) on the GPU grid. Everything lands in
# $OUT/<gpu>-<date>/ (or benchmarks/results/ without $OUT); the table is printed last.
#   bash benchmarks/gpu_check.sh            (about 6-8 minutes on an H100)
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
timeout 200 $PY -m pytest -q -p no:cacheprovider -m gpu tests/
tests_rc=$?
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_triton_interpreter.py || tests_rc=$?

echo "== grid barrier"
timeout 60 $PY -m benchmarks.barrier_bench

echo "== benchmark (T=1000, B in 1..256, H in 128..2048, fp32 + bf16, packed)"
timeout 300 $PY -m benchmarks.run --preset gpu --skip "fastrnn[reference],nn.RNNCell loop,fastrnn[cpp]" \
  --out "$dir/bench" | grep -v "^|---" | sed 's/,L=1,uni,tanh//'
echo "tests exit code: $tests_rc; results in $dir"
exit $tests_rc
