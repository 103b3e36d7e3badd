"""Calls fastrnn's gated op does not take run torch's own implementation, with the same weights: CUDA tensors
(cuDNN, until fused GPU kernels for these cells exist), other dtypes, autocast. Bitwise torch's results."""

import pytest
import torch

import fastrnn
from fastrnn.modules import _op_takes
from tests.family import GATED, params

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _fast_path_takes(input, states, weights, batch_sizes):
    return _op_takes(input, states, weights, batch_sizes, elman=False)


def test_fast_path_takes_only_cpu_float32_float64():
    x = torch.zeros(2, 3, 4)
    assert _fast_path_takes(x, [torch.zeros(1, 3, 5)], [torch.zeros(5, 4)], None)
    assert _fast_path_takes(x.double(), [torch.zeros(1, 3, 5).double()], [torch.zeros(5, 4).double()], None)
    assert not _fast_path_takes(x.half(), [torch.zeros(1, 3, 5).half()], [torch.zeros(5, 4).half()], None)
    assert not _fast_path_takes(x.to("meta"), [torch.zeros(1, 3, 5, device="meta")], [], None)
    assert not _fast_path_takes(x, [torch.zeros(1, 3, 5).double()], [torch.zeros(5, 4)], None)
    assert not _fast_path_takes(torch.zeros(0, 3, 4), [], [], None)
    assert not _fast_path_takes(torch.zeros(5, 4), [], [], torch.tensor([2, 3]))
    assert _fast_path_takes(torch.zeros(5, 4), [], [], torch.tensor([3, 2]))


@pytest.mark.parametrize("spec", params(GATED))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_on_cpu_is_torchs_result(spec, dtype):
    theirs = spec.theirs(5, 7, 2, dtype=dtype, **spec.extra)
    ours = spec.ours.from_torch(theirs)
    x = torch.randn(6, 3, 5, dtype=dtype)
    want, got = theirs(x), ours(x)
    assert torch.equal(got[0], want[0])


@pytest.mark.parametrize("spec", params(GATED))
def test_autocast_on_cpu_is_torchs_result(spec):
    theirs = spec.theirs(5, 7, **spec.extra)
    ours = spec.ours.from_torch(theirs)
    x = torch.randn(6, 3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = theirs(x), ours(x)
    assert got[0].dtype == want[0].dtype
    assert torch.equal(got[0], want[0])


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("spec", params(GATED))
def test_cuda_runs_torchs_cudnn_with_the_same_weights(spec):
    torch.manual_seed(0)
    theirs = spec.theirs(5, 16, 2, bidirectional=True, device="cuda", **spec.extra)
    ours = spec.ours.from_torch(theirs)
    x = torch.randn(7, 4, 5, device="cuda", requires_grad=True)
    want, got = theirs(x)[0], ours(x)[0]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    (g_want,) = torch.autograd.grad(want.sum(), x)
    (g_got,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(g_got, g_want)


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("cell", [(torch.nn.GRUCell, fastrnn.GRUCell), (torch.nn.LSTMCell, fastrnn.LSTMCell)])
def test_cuda_cells_run_torchs_implementation(cell):
    theirs = cell[0](5, 16, device="cuda")
    ours = cell[1].from_torch(theirs)
    x = torch.randn(4, 5, device="cuda")
    want, got = theirs(x), ours(x)
    want, got = (want, got) if isinstance(want, torch.Tensor) else (want[0], got[0])
    assert torch.equal(got, want)
