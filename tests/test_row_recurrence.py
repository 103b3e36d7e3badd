"""The latency-bound Elman step for a single batch row (csrc/row_recurrence.h: float32, B = 1, H a multiple of 16
up to 64, on AVX-512 CPUs): every way a call reaches it — the module's whole inference call, the C++ stack, the
op's training forward — against torch.nn.RNN in float32 and the reference in float64, with the neighbouring
shapes (H = 8, 80; B = 2) that take the general path beside it."""

import copy

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import fastrnn
from fastrnn import reference

pytestmark = pytest.mark.skipif("cpp" not in fastrnn.available_backends(), reason="the C++ extension is absent")


def _pair(hidden, nonlinearity, **config):
    torch.manual_seed(hidden)
    ref = torch.nn.RNN(8, hidden, nonlinearity=nonlinearity, **config)
    return ref, fastrnn.RNN.from_torch(ref)


def _double(module):
    return copy.deepcopy(module).double()


def _close_to_torch(got, want, want64):
    """fastrnn's float32 error against the float64 result at most twice torch's, plus a floor (STYLE.md)."""
    ours = (got.double() - want64).abs().max().item()
    theirs = (want.double() - want64).abs().max().item()
    assert ours <= 2 * theirs + 1e-6, (ours, theirs)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("hidden", [8, 16, 32, 48, 64, 80])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_single_row_inference_matches_torch(hidden, nonlinearity, bidirectional):
    ref, ours = _pair(hidden, nonlinearity, num_layers=2, bidirectional=bidirectional)
    x = torch.randn(300, 1, 8)
    h0 = torch.randn(4 if bidirectional else 2, 1, hidden)
    with torch.no_grad():
        want = ref(x, h0)
        want64 = _double(ref)(x.double(), h0.double())
        got = ours(x, h0)
    for g, w, w64 in zip(got, want, want64):
        _close_to_torch(g, w, w64)


@pytest.mark.parametrize("batch", [1, 2])
def test_single_row_packed_and_unbatched(batch):
    ref, ours = _pair(32, "tanh", bidirectional=True)
    with torch.no_grad():
        if batch == 1:
            x = torch.randn(50, 8)  # unbatched: one row
            for g, w, w64 in zip(ours(x), ref(x), _double(ref)(x.double())):
                _close_to_torch(g, w, w64)
        packed = pack_sequence([torch.randn(n, 8) for n in (40, 17)[:batch]])  # B = 1: one row, every step
        got, want = ours(packed), ref(packed)
        torch.testing.assert_close(got[0].data, want[0].data, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_single_row_op_forward_and_gradients(reverse, activation):
    """The op's training forward takes the same loop; its output and the gradients through it match the
    float64 reference."""
    gen = torch.Generator().manual_seed(3)
    xw = torch.randn(200, 1, 32, generator=gen)
    h0 = torch.randn(1, 32, generator=gen)
    w = torch.randn(32, 32, generator=gen) * 32**-0.5
    args = [t.requires_grad_() for t in (xw, h0, w)]
    y, h_n = torch.ops.fastrnn.recurrence(*args, None, reverse, reference.activation_id(activation))
    args64 = [t.detach().double().requires_grad_() for t in (xw, h0, w)]
    y64, h_n64 = reference.rnn_recurrence_ref(*args64, None, reverse, activation)
    torch.testing.assert_close(y.double(), y64, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h_n.double(), h_n64, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad((y * y).sum() + h_n.sum(), args)
    grads64 = torch.autograd.grad((y64 * y64).sum() + h_n64.sum(), args64)
    for g, g64 in zip(grads, grads64):
        torch.testing.assert_close(g.double(), g64, rtol=1e-3, atol=1e-4)


def test_non_finite_values_propagate_like_torch():
    ref, ours = _pair(32, "tanh")
    x = torch.randn(20, 1, 8)
    x[5, 0, 3] = float("nan")
    x[9, 0, 1] = float("inf")
    with torch.no_grad():
        got, want = ours(x), ref(x)
    for g, w in zip(got, want):
        assert torch.equal(g.isnan(), w.isnan())
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, equal_nan=True)
