"""The recurrence ops of every family member (tests/family.py) themselves: C++ against the reference on random
shapes, gradcheck in float64, determinism, argument validation, strides, NaN, and what only one family has (the
gated ops' float32 sigmoid); second order of every op (gradgradcheck, and through an exported program)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastrnn
from fastrnn import gated_reference as ref
from fastrnn.autograd import rnn_recurrence
from fastrnn.backends import _BACKENDS
from fastrnn.gated_ops import _use_cpp, gru_recurrence, lstm_recurrence
from fastrnn.reference import rnn_recurrence_bwd_ref, rnn_recurrence_ref
from tests.cases import recurrence_inputs
from tests.family import LAYER_CLASSES, LAYERS, Spec, params

CPU_BACKENDS = ["cpp", "reference"]


def _cpp_or_skip():
    if _BACKENDS["cpp"].unavailable_reason() is not None:
        pytest.skip(_BACKENDS["cpp"].unavailable_reason())


def _inputs(steps, batch, hidden, packed, dtype, seed):
    return recurrence_inputs(steps, batch, hidden, packed, dtype, seed)


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


def _gradcheck_case(spec: Spec, packed: bool, reverse: bool):
    """(function of the differentiable tensors, those tensors) for the spec's op on a float64 [4, 3, 5] case."""
    if spec.recurrence == "rnn":
        xw, h0, w, batch_sizes = _inputs(4, 3, 5, packed, torch.float64, seed=5)
        activation = spec.extra.get("nonlinearity", "tanh")
        return (lambda xw, h0, w: rnn_recurrence(xw, h0, w, batch_sizes, reverse, activation)), [xw, h0, w]
    if spec.recurrence == "gru":
        xw, h0, w, b_hn, batch_sizes = _gru_args(4, 3, 5, packed, True, torch.float64, seed=5)
        return (lambda *a: gru_recurrence(*a, batch_sizes, reverse)), [xw, h0, w, b_hn]
    proj = 3 if "proj_size" in spec.extra else 0
    xw, h0, c0, w, w_hr, batch_sizes = _lstm_args(4, 3, 5, proj, packed, torch.float64, seed=6)

    def f(xw, h0, c0, w, w_hr=None):
        return lstm_recurrence(xw, h0, c0, w, w_hr, batch_sizes, reverse)

    return f, [t for t in (xw, h0, c0, w, w_hr) if t is not None]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("spec", params(LAYERS))
def test_gradcheck(use_backend, spec, backend, reverse, packed):
    use_backend(backend)
    f, tensors = _gradcheck_case(spec, packed, reverse)
    args = [t.requires_grad_(True) for t in tensors]
    assert torch.autograd.gradcheck(f, args)
    # Every op entry is differentiable to any order (issue 18: the gated ones differentiate the reference
    # recomputed on their saved inputs under create_graph), not only the modules' eager layer path.
    assert torch.autograd.gradgradcheck(f, args)


@pytest.mark.parametrize("recurrence", ["gru", "lstm"])
def test_second_order_of_the_gated_op_equals_the_reference(recurrence):
    """d/dxw of |dL/dW_hh|^2 through the fast op (C++ forward, create_graph backward) against the same through
    the pure-PyTorch reference differentiated by autograd, in float64."""
    if recurrence == "gru":
        *tensors, _ = _gru_args(4, 3, 5, False, True, torch.float64, seed=7)
        op, reference, w_hh = gru_recurrence, ref.gru_recurrence_ref, 2
    else:
        *tensors, _, _ = _lstm_args(4, 3, 5, 0, False, torch.float64, seed=8)
        op, reference, w_hh = lstm_recurrence, ref.lstm_recurrence_ref, 3
    args = [t.requires_grad_(True) for t in tensors]

    def second(f):
        (dw,) = torch.autograd.grad(f(*args)[0].sin().sum(), args[w_hh], create_graph=True)
        return torch.autograd.grad(dw.square().sum(), args[0])[0]

    torch.testing.assert_close(second(op), second(lambda *a: reference(*a)), rtol=1e-10, atol=1e-10)


def test_second_order_through_an_exported_program():
    """torch.export records fastrnn::gru_recurrence; the exported module's double backward is the op's."""
    *tensors, _ = _gru_args(4, 3, 5, False, True, torch.float64, seed=9)
    args = [t.requires_grad_(True) for t in tensors]

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


# C++ against the reference on random shapes: one property test per op signature.
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
def test_cpp_rnn_equals_reference_on_random_shapes(steps, batch, hidden, packed, reverse, activation, seed):
    _cpp_or_skip()
    cpp = _BACKENDS["cpp"]
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
@pytest.mark.parametrize("spec", params(LAYER_CLASSES, by="name"))
def test_gradients_are_bitwise_deterministic(use_backend, spec, backend):
    use_backend(backend)
    torch.manual_seed(0)
    module = spec.ours(16, 64, num_layers=2, bidirectional=True)
    x = torch.randn(50 if spec.name == "RNN" else 20, 8, 16)  # the RNN's steps are the cheapest

    def grads():
        module.zero_grad()
        out, state = module(x)
        finals = state if isinstance(state, tuple) else (state,)
        (out.square().sum() + sum(s.sum() for s in finals)).backward()
        return [p.grad.clone() for p in module.parameters()]

    first, second = grads(), grads()
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def _rnn_op_rejects_bad_arguments():
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


def _gru_op_rejects_bad_arguments():
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


def _lstm_op_rejects_bad_arguments():
    xw, h0 = torch.randn(3, 2, 12), torch.randn(2, 4)
    c0 = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match=r"w_hh must be \[4H, P\]"):
        torch.ops.fastrnn.lstm_fwd(xw, h0, c0, torch.randn(12, 3), torch.randn(4, 3), None, False)
    with pytest.raises(RuntimeError, match=r"w_hr must be \[P, H\]"):
        torch.ops.fastrnn.lstm_fwd(xw, h0, c0, torch.randn(12, 4), torch.randn(3, 3), None, False)
    with pytest.raises(RuntimeError, match="same features"):
        torch.ops.fastrnn.lstm_fwd(xw, h0, c0, torch.randn(12, 4), None, None, False)


REJECTS_BAD_ARGUMENTS = {"rnn": _rnn_op_rejects_bad_arguments, "gru": _gru_op_rejects_bad_arguments,
                         "lstm": _lstm_op_rejects_bad_arguments}


@pytest.mark.parametrize("spec", params(LAYER_CLASSES, by="name"))
def test_cpp_op_rejects_bad_arguments(spec):
    _cpp_or_skip()
    REJECTS_BAD_ARGUMENTS[spec.recurrence]()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("spec", params(LAYER_CLASSES, by="name"))
def test_non_contiguous_inputs(use_backend, spec, backend):
    use_backend(backend)
    if spec.recurrence == "rnn":
        xw, h0, w, _ = _inputs(5, 4, 6, False, torch.float64, seed=9)
        state, run, oracle = (h0[::1],), rnn_recurrence, rnn_recurrence_ref
    elif spec.recurrence == "gru":
        xw, h0, w, b_hn, _ = _gru_args(5, 4, 6, False, True, torch.float64, seed=9)
        state = (h0[::1],)
        run, oracle = (lambda *a: gru_recurrence(*a, b_hn)), (lambda *a: ref.gru_recurrence_ref(*a, b_hn))
    else:
        xw, h0, c0, w, _, _ = _lstm_args(5, 4, 6, 0, False, torch.float64, seed=9)
        state, run, oracle = (h0, c0[::1]), lstm_recurrence, ref.lstm_recurrence_ref
    strided_xw = xw.transpose(0, 1).contiguous().transpose(0, 1)
    strided_w = w.t().contiguous().t()
    got = run(strided_xw, *state, strided_w)
    want = oracle(xw, *state, w)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("spec", params(LAYER_CLASSES, by="name"))
def test_nan_in_the_input_stays_nan_as_in_torch(spec):
    theirs = spec.theirs(3, 4)
    ours = spec.ours.from_torch(theirs)
    x = torch.randn(4, 2, 3)
    x[1, 0, 0] = float("nan")
    want, got = theirs(x)[0], ours(x)[0]
    assert torch.equal(want.isnan(), got.isnan())
    assert got.isnan().any()


def test_backend_choice():
    x32 = torch.zeros(1)
    assert _use_cpp(x32) == (fastrnn.available_backends().count("cpp") == 1)
    assert not _use_cpp(x32.half())



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
