"""The recurrence op itself: every backend against the reference, gradcheck, determinism, validation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrnn.autograd import rnn_recurrence
from fastrnn.backends import _BACKENDS
from fastrnn.reference import rnn_recurrence_bwd_ref, rnn_recurrence_ref
from tests.cases import recurrence_inputs

CPU_BACKENDS = ["cpp", "reference"]


def _inputs(steps, batch, hidden, packed, dtype, seed):
    return recurrence_inputs(steps, batch, hidden, packed, dtype, seed)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_gradcheck_function(use_backend, backend, reverse, activation, packed):
    use_backend(backend)
    xw, h0, w, batch_sizes = _inputs(4, 3, 5, packed, torch.float64, seed=5)
    args = [t.requires_grad_(True) for t in (xw, h0, w)]

    def f(xw, h0, w):
        return rnn_recurrence(xw, h0, w, batch_sizes, reverse, activation)

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.integers(1, 12),
    batch=st.integers(1, 9),
    hidden=st.sampled_from([1, 2, 3, 8, 17, 32, 40, 65]),
    packed=st.booleans(),
    reverse=st.booleans(),
    activation=st.sampled_from(["tanh", "relu"]),
    seed=st.integers(0, 2**16),
)
def test_cpp_op_equals_reference_on_random_shapes(steps, batch, hidden, packed, reverse, activation, seed):
    cpp = _BACKENDS["cpp"]
    if cpp.unavailable_reason() is not None:
        pytest.skip(cpp.unavailable_reason())
    xw, h0, w, batch_sizes = _inputs(steps, batch, hidden, packed, torch.float64, seed)
    y, h_n = cpp.fwd(xw, h0, w, batch_sizes, reverse, activation)
    y_ref, h_ref = rnn_recurrence_ref(xw, h0, w, batch_sizes, reverse, activation)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, h_ref, rtol=1e-12, atol=1e-12)
    dy, dh_n = torch.randn_like(y), torch.randn_like(h_n)
    dz, dh0 = cpp.bwd(dy, dh_n, y, w, batch_sizes, reverse, activation)
    dz_ref, dh0_ref = rnn_recurrence_bwd_ref(dy, dh_n, y_ref, w, batch_sizes, reverse, activation)
    torch.testing.assert_close(dz, dz_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dh0, dh0_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradients_are_bitwise_deterministic(use_backend, backend):
    use_backend(backend)
    import fastrnn

    torch.manual_seed(0)
    rnn = fastrnn.RNN(16, 64, num_layers=2, bidirectional=True)
    x = torch.randn(50, 8, 16)

    def grads():
        rnn.zero_grad()
        out, h_n = rnn(x)
        (out.square().sum() + h_n.sum()).backward()
        return [p.grad.clone() for p in rnn.parameters()]

    first, second = grads(), grads()
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_cpp_op_rejects_bad_arguments():
    cpp = _BACKENDS["cpp"]
    if cpp.unavailable_reason() is not None:
        pytest.skip(cpp.unavailable_reason())
    op = torch.ops.fastrnn.rnn_fwd
    xw, h0, w = torch.randn(3, 2, 4), torch.randn(2, 4), torch.randn(4, 4)
    with pytest.raises(RuntimeError, match="square"):
        op(xw, h0, torch.randn(4, 3), None, False, 0)
    with pytest.raises(RuntimeError, match=r"expected h0 of shape \[2, 4\]"):
        op(xw, torch.randn(3, 4), w, None, False, 0)
    with pytest.raises(RuntimeError, match="share a dtype"):
        op(xw, h0.double(), w, None, False, 0)
    with pytest.raises(RuntimeError, match="activation"):
        op(xw, h0, w, None, False, 7)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        op(xw.half(), h0.half(), w.half(), None, False, 0)
    with pytest.raises(RuntimeError, match="non-increasing"):
        op(torch.randn(5, 4), h0, w, torch.tensor([2, 3]), False, 0)
    with pytest.raises(RuntimeError, match="sum to"):
        op(torch.randn(5, 4), h0, w, torch.tensor([2, 2]), False, 0)
    with pytest.raises(RuntimeError, match="positive"):
        op(torch.randn(2, 4), h0, w, torch.tensor([2, 0]), False, 0)
    with pytest.raises(RuntimeError, match="int64"):
        op(torch.randn(4, 4), h0, w, torch.tensor([2, 2], dtype=torch.int32), False, 0)
    with pytest.raises(RuntimeError, match="features"):
        op(torch.randn(3, 2, 5), h0, w, None, False, 0)
    with pytest.raises(RuntimeError, match="shape of y"):
        torch.ops.fastrnn.rnn_bwd(torch.randn(2, 2, 4), h0, xw, w, None, False, 0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_inputs(use_backend, backend):
    use_backend(backend)
    xw, h0, w, _ = _inputs(5, 4, 6, False, torch.float64, seed=9)
    strided_xw = xw.transpose(0, 1).contiguous().transpose(0, 1)
    strided_w = w.t().contiguous().t()
    y, h_n = rnn_recurrence(strided_xw, h0[::1], strided_w)
    y_ref, h_ref = rnn_recurrence_ref(xw, h0, w)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(h_n, h_ref)
