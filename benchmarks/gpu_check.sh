#!/usr/bin/env bash
# One prepared call for a lent GPU machine (torch and Triton already there, no registry): builds fastrnn in
# place, runs the GPU tests and the Triton kernel tests on CUDA tensors (both tiers, every multi-tier launch
# mode, the never-hanging persistent launch, the algorithm finder), the grid-barrier microbenchmark, then
# times fastrnn against torch.nn.RNN (cuDNN, TF32 off) on the GPU grid: fastrnn[triton] is the Triton
# kernels forced, fastrnn[auto] the algorithm finder (FASTRNN_CUDA_ALGO=finder: its pick, checked against
# cuDNN, in the "ran" column; on an architecture not yet in fastrnn.algo.PROVEN_ARCHS a user's default is
# cuDNN itself). Everything lands in $OUT/<gpu>-<date>/ (or benchmarks/results/ without $OUT); the table is
# printed, then, if every test passed, the PROVEN_ARCHS entry this run earns (added by hand, with the log).
# Each step has its own time limit so that the whole call stays under 10 minutes:
# build ~1 min, GPU tests <= 160 s, Triton tests on CUDA <= 110 s, barrier <= 20 s, benchmark <= 160 s.
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET FASTRNN_BACKEND FASTRNN_CUDA_ALGO FASTRNN_MULTI_MODE
gpu=$($PY -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))" 2>/dev/null || echo no-gpu)
dir=${OUT:-benchmarks/results}/${gpu}-$(date +%F)
mkdir -p "$dir"
exec > >(tee "$dir/gpu_check.log") 2>&1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
$PY -m pip install --no-build-isolation --no-deps -q -e . || { echo "build failed"; exit 1; }

echo "== GPU tests (parity against cuDNN, launch modes, escape, device guard, graphs, finder, compile, autocast)"
timeout 160 $PY -m pytest -q -p no:cacheprovider -m gpu --durations=10 tests/
tests_rc=$?
echo "== Triton kernel tests on CUDA tensors (the interpreter suite, both tiers and every multi-tier geometry)"
timeout 110 $PY -m pytest -q -x -p no:cacheprovider tests/test_triton_interpreter.py tests/test_triton_multi.py \
  || tests_rc=$?

echo "== grid barrier"
timeout 20 $PY -m benchmarks.barrier_bench

echo "== performance model (kernels/plan.py) the benchmark should be read against"
$PY -m fastrnn.kernels.plan

echo "== benchmark (T=1000, B in 1..256, H in 128..2048 fp32, bf16 at B=64, packed; written after every case)"
FASTRNN_CUDA_ALGO=finder timeout 160 $PY -m benchmarks.run --preset gpu --skip "fastrnn[reference],nn.RNNCell loop,fastrnn[cpp],torch.nn.RNN (no cuDNN)" \
  --out "$dir/bench" | grep -v "^|---" | sed 's/,L=1,uni,tanh//'
echo "tests exit code: $tests_rc; results in $dir"
if [ "$tests_rc" -eq 0 ]; then
  arch=$($PY -c "import torch; print('(%d, %d)' % torch.cuda.get_device_capability())")
  echo "gpu_check passed: add to fastrnn.algo.PROVEN_ARCHS  $arch: (\"$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\", \"$(date +%F)\"),"
fi
exit $tests_rc
