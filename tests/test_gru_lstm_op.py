"""The gated recurrence ops themselves: C++ against the reference on random shapes, gradcheck in float64,
determinism, first-order-only, argument validation, NaN and the float32 sigmoid."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastrnn
from fastrnn import gated_reference as ref
from fastrnn.gated_ops import _use_cpp, gru_recurrence, lstm_recurrence

CPU_BACKENDS = ["cpp", "reference"]


def _cpp_or_skip():
    from fastrnn._cpp import load_cpp_ops

    missing = load_cpp_ops()
    if missing is not None:
        pytest.skip(missing)


def _layout(steps, batch, packed, gen):
    if not packed:
        return None, (steps, batch)
    lengths = sorted(torch.randint(1, steps + 1, (batch,), generator=gen).tolist(), reverse=True)
    lengths[0] = steps
    batch_sizes = torch.tensor([sum(1 for n in lengths if n > t) for t in range(steps)])
    return batch_sizes, (int(batch_sizes.sum()),)


def _gru_args(steps, batch, hidden, packed, bias, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    batch_sizes, lead = _layout(steps, batch, packed, gen)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=dtype) * scale

    b_hn = randn(hidden) if bias else None
    w_hh = randn(3 * hidden, hidden, scale=hidden**-0.5)
    return randn(*lead, 3 * hidden), randn(batch, hidden), w_hh, b_hn, batch_sizes


def _lstm_args(steps, batch, hidden, proj, packed, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    batch_sizes, lead = _layout(steps, batch, packed, gen)
    p = proj or hidden

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=dtype) * scale

    w_hr = randn(p, hidden, scale=hidden**-0.5) if proj else None
    return (randn(*lead, 4 * hidden), randn(batch, p), randn(batch, hidden), randn(4 * hidden, p, scale=p**-0.5),
            w_hr, batch_sizes)


@settings(max_examples=40, deadline=None)
@given(
    steps=st.integers(1, 9),
    batch=st.integers(1, 9),
    hidden=st.sampled_from([1, 2, 7, 16, 33, 40]),
    packed=st.booleans(),
    reverse=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_cpp_gru_equals_reference_on_random_shapes(steps, batch, hidden, packed, reverse, bias, seed):
    _cpp_or_skip()
    xw, h0, w, b_hn, batch_sizes = _gru_args(steps, batch, hidden, packed, bias, torch.float64, seed)
    got = torch.ops.fastrnn.gru_fwd(xw, h0, w, b_hn, batch_sizes, reverse)
    want = ref.gru_recurrence_ref(xw, h0, w, b_hn, batch_sizes, reverse)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    dy, dh_n = torch.randn_like(got[0]), torch.randn_like(got[1])
    got_b = torch.ops.fastrnn.gru_bwd(dy, dh_n, got[0], got[2], h0, w, batch_sizes, reverse, True)
    want_b = ref.gru_recurrence_bwd_ref(dy, dh_n, want[0], want[2], h0, w, batch_sizes, reverse)
    for a, b in zip(got_b, want_b):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    steps=st.integers(1, 9),
    batch=st.integers(1, 9),
    hidden=st.sampled_from([2, 7, 16, 33, 40]),
    proj=st.sampled_from([0, 1, 5]),
    packed=st.booleans(),
    reverse=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_cpp_lstm_equals_reference_on_random_shapes(steps, batch, hidden, proj, packed, reverse, seed):
    _cpp_or_skip()
    xw, h0, c0, w, w_hr, batch_sizes = _lstm_args(steps, batch, hidden, proj, packed, torch.float64, seed)
    got = torch.ops.fastrnn.lstm_fwd(xw, h0, c0, w, w_hr, batch_sizes, reverse)
    want = ref.lstm_recurrence_ref(xw, h0, c0, w, w_hr, batch_sizes, reverse)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    dy, dh_n, dc_n = torch.randn_like(got[0]), torch.randn_like(got[1]), torch.randn_like(got[2])
    got_b = torch.ops.fastrnn.lstm_bwd(dy, dh_n, dc_n, got[3], c0, w, w_hr, batch_sizes, reverse, True)
    want_b = ref.lstm_recurrence_bwd_ref(dy, dh_n, dc_n, want[3], c0, w, w_hr, batch_sizes, reverse)
    for a, b in zip(got_b, want_b):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_gradcheck_gru(use_backend, backend, reverse, packed):
    use_backend(backend)
    xw, h0, w, b_hn, batch_sizes = _gru_args(4, 3, 5, packed, True, torch.float64, seed=5)
    args = [t.requires_grad_(True) for t in (xw, h0, w, b_hn)]
    assert torch.autograd.gradcheck(lambda *a: gru_recurrence(*a, batch_sizes, reverse), args)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("proj", [0, 3], ids=["noproj", "proj"])
def test_gradcheck_lstm(use_backend, backend, reverse, packed, proj):
    use_backend(backend)
    xw, h0, c0, w, w_hr, batch_sizes = _lstm_args(4, 3, 5, proj, packed, torch.float64, seed=6)
    args = [t.requires_grad_(True) for t in (xw, h0, c0, w, w_hr) if t is not None]

    def f(xw, h0, c0, w, w_hr=None):
        return lstm_recurrence(xw, h0, c0, w, w_hr, batch_sizes, reverse)

    assert torch.autograd.gradcheck(f, args)


def _op_and_args(recurrence, packed, proj=0):
    if recurrence == "gru":
        *tensors, batch_sizes = _gru_args(4, 3, 5, packed, True, torch.float64, seed=7)
        return gru_recurrence, [t.requires_grad_(True) for t in tensors], batch_sizes
    *tensors, batch_sizes = _lstm_args(4, 3, 5, proj, packed, torch.float64, seed=8)
    return lstm_recurrence, [t.requires_grad_(True) for t in tensors if t is not None], batch_sizes


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("recurrence", ["gru", "lstm", "lstm-proj"])
def test_gradgradcheck_of_the_op_alone(use_backend, backend, reverse, packed, recurrence):
    """Issue 18: the op-level entries (a direct call, an exported program) are differentiable to any order,
    not only the modules' eager layer path."""
    use_backend(backend)
    op, args, batch_sizes = _op_and_args(recurrence[:4].rstrip("-"), packed, 3 if "proj" in recurrence else 0)
    assert torch.autograd.gradgradcheck(lambda *a: op(*a, batch_sizes=batch_sizes, reverse=reverse), args)


@pytest.mark.parametrize("recurrence", ["gru", "lstm"])
def test_second_order_of_the_op_equals_the_reference(recurrence):
    """d/dxw of |dL/dW_hh|^2 through the fast op (C++ forward, create_graph backward) against the same through
    the pure-PyTorch reference differentiated by autograd, in float64."""
    op, args, _ = _op_and_args(recurrence, packed=False)
    reference = ref.gru_recurrence_ref if recurrence == "gru" else ref.lstm_recurrence_ref

    def second(f):
        y = f(*args)[0]
        (dw,) = torch.autograd.grad(y.sin().sum(), args[-2 if recurrence == "gru" else -1], create_graph=True)
        return torch.autograd.grad(dw.square().sum(), args[0])[0]

    torch.testing.assert_close(second(op), second(lambda *a: reference(*a)), rtol=1e-10, atol=1e-10)


def test_second_order_through_an_exported_program():
    """torch.export records fastrnn::gru_recurrence; the exported module's double backward is the op's."""
    op, args, _ = _op_and_args("gru", packed=False)

    class Layer(torch.nn.Module):
        def forward(self, xw, h0, w_hh, b_hn):
            return gru_recurrence(xw, h0, w_hh, b_hn)

    program = torch.export.export(Layer(), tuple(a.detach() for a in args))
    assert "fastrnn.gru_recurrence" in str(program.graph)

    def second(f):
        (dh0,) = torch.autograd.grad(f(*args)[1].sum(), args[1], create_graph=True)
        return torch.autograd.grad(dh0.square().sum(), args[0])[0]

    torch.testing.assert_close(second(program.module()), second(lambda *a: ref.gru_recurrence_ref(*a)),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("cls", [fastrnn.GRU, fastrnn.LSTM])
def test_gradients_are_bitwise_deterministic(use_backend, backend, cls):
    use_backend(backend)
    torch.manual_seed(0)
    module = cls(16, 64, num_layers=2, bidirectional=True)
    x = torch.randn(20, 8, 16)

    def grads():
        module.zero_grad()
        out, _ = module(x)
        out.square().sum().backward()
        return [p.grad.clone() for p in module.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(grads(), grads()))


def test_backend_choice():
    x32 = torch.zeros(1)
    assert _use_cpp(x32) == (fastrnn.available_backends().count("cpp") == 1)
    assert not _use_cpp(x32.half())


def test_cpp_ops_reject_bad_arguments():
    _cpp_or_skip()
    xw, h0, w = torch.randn(3, 2, 12), torch.randn(2, 4), torch.randn(12, 4)
    with pytest.raises(RuntimeError, match=r"w_hh must be \[3H, H\]"):
        torch.ops.fastrnn.gru_fwd(xw, h0, torch.randn(12, 3), None, None, False)
    with pytest.raises(RuntimeError, match="must have 12 features"):
        torch.ops.fastrnn.gru_fwd(torch.randn(3, 2, 11), h0, w, None, None, False)
    with pytest.raises(RuntimeError, match="share a dtype"):
        torch.ops.fastrnn.gru_fwd(xw, h0.double(), w, None, None, False)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        torch.ops.fastrnn.gru_fwd(xw.half(), h0.half(), w.half(), None, None, False)
    with pytest.raises(RuntimeError, match="non-increasing"):
        torch.ops.fastrnn.gru_fwd(torch.randn(5, 12), h0, w, None, torch.tensor([2, 3]), False)
    with pytest.raises(RuntimeError, match="sum to"):
        torch.ops.fastrnn.gru_fwd(torch.randn(5, 12), h0, w, None, torch.tensor([2, 2]), False)
    c0 = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match=r"w_hh must be \[4H, P\]"):
        torch.ops.fastrnn.lstm_fwd(xw, h0, c0, torch.randn(12, 3), torch.randn(4, 3), None, False)
    with pytest.raises(RuntimeError, match=r"w_hr must be \[P, H\]"):
        torch.ops.fastrnn.lstm_fwd(xw, h0, c0, torch.randn(12, 4), torch.randn(3, 3), None, False)
    with pytest.raises(RuntimeError, match="same features"):
        torch.ops.fastrnn.lstm_fwd(xw, h0, c0, torch.randn(12, 4), None, None, False)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_inputs(use_backend, backend):
    use_backend(backend)
    xw, h0, c0, w, _, _ = _lstm_args(5, 4, 6, 0, False, torch.float64, seed=9)
    strided_xw = xw.transpose(0, 1).contiguous().transpose(0, 1)
    strided_w = w.t().contiguous().t()
    got = lstm_recurrence(strided_xw, h0, c0[::1], strided_w)
    want = ref.lstm_recurrence_ref(xw, h0, c0, w)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cls", [fastrnn.GRU, fastrnn.LSTM])
def test_nan_in_the_input_stays_nan_as_in_torch(cls):
    theirs = {fastrnn.GRU: torch.nn.GRU, fastrnn.LSTM: torch.nn.LSTM}[cls](3, 4)
    ours = cls.from_torch(theirs)
    x = torch.randn(4, 2, 3)
    x[1, 0, 0] = float("nan")
    want, got = theirs(x)[0], ours(x)[0]
    assert torch.equal(want.isnan(), got.isnan())
    assert got.isnan().any()


def test_float32_sigmoid_is_accurate_and_bounded():
    """sigmoid inside the C++ op (read through a GRU step with h = 0, W = 0: z = sigmoid(xw_z), h' = (1 - z) n)
    against torch.sigmoid: relative error within a few ulp down to x = -80, bounded in [0, 1], NaN kept."""
    _cpp_or_skip()
    x = torch.cat([torch.linspace(-80, 80, 4001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 200, -200, float("nan")])])
    n = x.numel()
    xw = torch.zeros(1, n, 3)
    xw[0, :, 1] = x
    xw[0, :, 2] = 20.0  # n = tanh(20) = 1 exactly, so h' = 1 - z... read z from ws instead
    _, _, ws = torch.ops.fastrnn.gru_fwd(xw, torch.zeros(n, 1), torch.zeros(3, 1), None, None, False)
    z = ws[0, :, 1]
    want = torch.sigmoid(x.double())
    finite = ~x.isnan()
    assert z[~finite].isnan().all()
    assert (z[finite] >= 0).all() and (z[finite] <= 1).all()
    sel = finite & (x.abs() <= 80)
    rel = ((z[sel].double() - want[sel]) / want[sel]).abs().max().item()
    assert rel < 8 * torch.finfo(torch.float32).eps, rel
