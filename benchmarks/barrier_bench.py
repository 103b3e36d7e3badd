"""Latency of the multi-program tier's grid barrier alone, per step, for several program counts.

    python -m benchmarks.barrier_bench        (needs a CUDA GPU)
"""

from __future__ import annotations

import sys

import torch
import triton
import triton.language as tl
from fastrnn.kernels.rnn_multi import _grid_barrier


@triton.jit(do_not_specialize=["n_steps"])
def _barrier_loop_kernel(p_counter, p_error, n_steps):
    n_programs = tl.num_programs(0)
    for s in range(n_steps):
        _grid_barrier(p_counter, n_programs * (s + 1), p_error, 10**9, 0)


def main() -> int:
    if not torch.cuda.is_available():
        print("barrier_bench: needs a CUDA device", file=sys.stderr)
        return 0
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    steps = 2000
    print(f"grid barrier on {torch.cuda.get_device_name()} ({sms} SMs), {steps} steps per launch")
    print("| programs | us per step |\n|---:|---:|")
    for programs in (2, 8, 32, 64, 128, sms):
        if programs > sms:
            continue
        counter = torch.zeros(1, dtype=torch.int32, device="cuda")
        error = torch.zeros(1, dtype=torch.int32, device="cuda")
        _barrier_loop_kernel[(programs,)](counter, error, 10)  # compile and warm up
        times = []
        for _ in range(5):
            counter.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            _barrier_loop_kernel[(programs,)](counter, error, steps)
            end.record()
            end.synchronize()
            assert int(counter.item()) == programs * steps and int(error.item()) == 0
            times.append(start.elapsed_time(end) * 1e3 / steps)
        print(f"| {programs} | {sorted(times)[len(times) // 2]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
