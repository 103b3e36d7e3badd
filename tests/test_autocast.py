"""torch.autocast: CPU bfloat16 matches a float32 run within bf16 tolerance; CUDA runs in the autocast dtype."""

import pytest
import torch

import fastrnn


@pytest.mark.parametrize("cell", [False, True], ids=["rnn", "cell"])
def test_cpu_bfloat16_autocast_matches_float32(cell):
    torch.manual_seed(0)
    module = fastrnn.RNNCell(8, 16) if cell else fastrnn.RNN(8, 16, num_layers=2, bidirectional=True)
    x = torch.randn(4, 8) if cell else torch.randn(20, 4, 8)
    out32 = module(x)[0] if not cell else module(x)
    want_grads = torch.autograd.grad(out32.float().square().sum(), list(module.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)[0] if not cell else module(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), out32, atol=0.05, rtol=0.05)
    grads = torch.autograd.grad(out.float().square().sum(), list(module.parameters()))
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, atol=0.1 * want.abs().max().item(), rtol=0.05)


def test_cpu_autocast_output_dtype_matches_torch():
    ref = torch.nn.RNN(4, 6, 2)
    ours = fastrnn.RNN.from_torch(ref)
    x = torch.randn(5, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = ref(x), ours(x)
    assert [t.dtype for t in got] == [t.dtype for t in want]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_runs_in_the_autocast_dtype(dtype):
    torch.manual_seed(0)
    ours = fastrnn.RNN(8, 64, 2, device="cuda")
    x = torch.randn(50, 4, 8, device="cuda")
    out32, _ = ours(x)
    with torch.autocast("cuda", dtype=dtype):
        out, h_n = ours(x)
    assert out.dtype == dtype and h_n.dtype == dtype
    torch.testing.assert_close(out.float(), out32, atol=0.05, rtol=0.05)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.parameters())
