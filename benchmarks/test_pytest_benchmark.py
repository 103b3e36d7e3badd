"""The benchmark cases as pytest-benchmark groups: ``pytest benchmarks/ --benchmark-only``.

Each group holds one configuration and mode, with torch.nn.RNN and every available fastrnn backend side by
side, so ``--benchmark-json`` and ``--benchmark-compare`` work as usual. Not part of the normal test run.
"""

import os

import pytest
import torch

import fastrnn
from benchmarks import machine
from benchmarks.grid import select
from benchmarks.run import forced_backend, make_input

PRESET = os.environ.get("FASTRNN_BENCH_PRESET", "quick")
CASES = select(PRESET, os.environ.get("FASTRNN_BENCH_FILTER"))
IMPLS = ["torch"] + [
    f"fastrnn[{b}]" for b in fastrnn.available_backends() if b != "triton" or torch.cuda.is_available()
]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["inference", "training"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rnn(benchmark, case, mode, impl):
    dtype = getattr(torch, case.dtype)
    torch.manual_seed(0)
    module = torch.nn.RNN(case.input_size, case.H, case.layers, case.nonlinearity,
                          bidirectional=case.bidirectional, device=DEVICE, dtype=dtype)
    backend = None
    if impl != "torch":
        module, backend = fastrnn.RNN.from_torch(module), impl[len("fastrnn["):-1]
    x = make_input(case, DEVICE, dtype)
    benchmark.group = f"{case.id} {mode}"
    info = machine.describe(DEVICE)
    benchmark.extra_info.update(device=info.get("gpu") or info["cpu"], torch=info["torch"],
                                triton=info["triton"], dtype=case.dtype, impl=impl)

    def infer():
        with torch.no_grad():
            module(x)

    def train():
        out, _ = module(x)
        (out.data if hasattr(out, "batch_sizes") else out).sum().backward()

    fn = infer if mode == "inference" else train
    with forced_backend(backend):
        if DEVICE.type == "cuda":
            def fn_synced():
                fn()
                torch.cuda.synchronize()
            benchmark(fn_synced)
        else:
            benchmark(fn)
