"""fastrnn.RNN / RNNCell against torch.nn.RNN / RNNCell on the CPU, over the whole configuration matrix.

float64: equal to torch within a few roundings. float32: err(fastrnn) <= 2 * err(torch) + floor, both
measured against the float64 torch.nn.RNN (itself checked against the reference in test_reference.py).
"""

import pytest
import torch

import fastrnn
from fastrnn.testing import max_error, outputs_and_grads, parity_failures
from tests.cases import INPUT_KINDS, make_input

CONFIGS = [
    pytest.param(
        dict(num_layers=layers, bidirectional=bi, bias=bias, nonlinearity=act),
        id=f"L{layers}-{'bi' if bi else 'uni'}-{'bias' if bias else 'nobias'}-{act}",
    )
    for layers in (1, 2, 3)
    for bi in (False, True)
    for bias in (True, False)
    for act in ("tanh", "relu")
]


def _modules(config, extra):
    torch_rnn = torch.nn.RNN(5, 7, dtype=torch.float64, **config, **extra)
    return torch_rnn, fastrnn.RNN.from_torch(torch_rnn)


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("config", CONFIGS)
def test_rnn_matches_torch(use_backend, config, kind):
    use_backend("cpp")
    gen = torch.Generator().manual_seed(hash((kind, str(config))) % 2**31)
    extra, x, hx = make_input(kind, config["num_layers"], config["bidirectional"], gen)
    torch_rnn, ours = _modules(config, extra)
    oracle = outputs_and_grads(torch_rnn, x, hx)
    got64 = outputs_and_grads(ours, x, hx)
    assert got64.keys() == oracle.keys()
    for key in oracle:
        scale = max(1.0, oracle[key].abs().max().item())
        assert max_error(got64[key], oracle[key]) < 1e-10 * scale, key
    torch32 = outputs_and_grads(torch_rnn, x, hx, dtype=torch.float32)
    got32 = outputs_and_grads(ours, x, hx, dtype=torch.float32)
    assert got32["output"].dtype == torch.float32
    assert parity_failures(got32, torch32, oracle) == []


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_cell_matches_torch(use_backend, backend, nonlinearity, batched, with_hx, bias):
    use_backend(backend)
    gen = torch.Generator().manual_seed(3)
    torch_cell = torch.nn.RNNCell(5, 7, bias, nonlinearity, dtype=torch.float64)
    ours = fastrnn.RNNCell.from_torch(torch_cell)
    shape = (4, 5) if batched else (5,)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    hx = torch.randn(*shape[:-1], 7, generator=gen, dtype=torch.float64) if with_hx else None
    oracle = outputs_and_grads(torch_cell, x, hx)
    got = outputs_and_grads(ours, x, hx)
    for key in oracle:
        assert max_error(got[key], oracle[key]) < 1e-12, key
    torch32 = outputs_and_grads(torch_cell, x, hx, dtype=torch.float32)
    got32 = outputs_and_grads(ours, x, hx, dtype=torch.float32)
    assert parity_failures(got32, torch32, oracle) == []


@pytest.mark.parametrize("hidden", [1, 16, 33, 64, 96, 128, 300])
@pytest.mark.parametrize("batch", [1, 3, 64])
def test_cpp_across_kernel_paths(use_backend, hidden, batch):
    """Hidden sizes and batches on both sides of the small-loop / BLAS switch and the vector blocks."""
    use_backend("cpp")
    gen = torch.Generator().manual_seed(hidden * 1000 + batch)
    torch_rnn = torch.nn.RNN(8, hidden, bidirectional=True, dtype=torch.float64)
    ours = fastrnn.RNN.from_torch(torch_rnn)
    x = torch.randn(5, batch, 8, generator=gen, dtype=torch.float64)
    oracle = outputs_and_grads(torch_rnn, x)
    got = outputs_and_grads(ours, x)
    for key in oracle:
        assert max_error(got[key], oracle[key]) < 1e-10 * max(1.0, oracle[key].abs().max().item()), key
    torch32 = outputs_and_grads(torch_rnn, x, dtype=torch.float32)
    got32 = outputs_and_grads(ours, x, dtype=torch.float32)
    assert parity_failures(got32, torch32, oracle) == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cpu_runs_the_reference_and_matches_torch(dtype):
    gen = torch.Generator().manual_seed(4)
    torch_rnn = torch.nn.RNN(5, 7, 2, dtype=torch.float64)
    ours = fastrnn.RNN.from_torch(torch_rnn)
    x = torch.randn(6, 3, 5, generator=gen, dtype=torch.float64)
    oracle = outputs_and_grads(torch_rnn, x)
    torch_low = outputs_and_grads(torch_rnn, x, dtype=dtype)
    got_low = outputs_and_grads(ours, x, dtype=dtype)
    assert got_low["output"].dtype == dtype
    assert parity_failures(got_low, torch_low, oracle, floor_eps=4.0) == []


def _forward_only(module, x, hx):
    with torch.no_grad():
        out, h_n = module(x, hx) if hx is not None else module(x)
    return {"output": out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out, "h_n": h_n}


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("config", CONFIGS)
def test_inference_stack_matches_torch(use_backend, config, kind):
    """Calls that record no autograd run the whole stack in one C++ call (csrc/rnn_stack.cpp)."""
    use_backend("cpp")
    gen = torch.Generator().manual_seed(hash(("inference", kind, str(config))) % 2**31)
    extra, x, hx = make_input(kind, config["num_layers"], config["bidirectional"], gen)
    torch_rnn, ours = _modules(config, extra)
    oracle = _forward_only(torch_rnn, x, hx)
    got = _forward_only(ours, x, hx)
    for key in oracle:
        assert max_error(got[key], oracle[key]) < 1e-10 * max(1.0, oracle[key].abs().max().item()), key
    to32 = (lambda t: t._replace(data=t.data.float())) if kind.startswith("packed") else (lambda t: t.float())
    torch32 = _forward_only(torch_rnn.float(), to32(x), hx.float() if hx is not None else None)
    got32 = _forward_only(ours.float(), to32(x), hx.float() if hx is not None else None)
    assert parity_failures(got32, torch32, oracle) == []
