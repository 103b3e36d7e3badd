"""GRUCell / LSTMCell steps: one C++ call with one C++ autograd node (``fastrnn._C.cell_if_plain``,
csrc/cell.cpp), torch's cell kernel for what that call declines, the layer op's path with
``FASTRNN_BACKEND`` set."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import fastrnn
from fastrnn import modules
from fastrnn.testing import max_error, parity_failures

CELLS = {"gru": (nn.GRUCell, fastrnn.GRUCell), "lstm": (nn.LSTMCell, fastrnn.LSTMCell)}

pytestmark = pytest.mark.skipif(modules._cell_if_plain() is None, reason="the built extension is absent")


@pytest.fixture
def taken(entry_calls):
    """Per C++ step call: whether it took the call (True) or declined it (False)."""
    return entry_calls("_cell_if_plain")


def _pair(name, input_size, hidden, bias=True, dtype=torch.float64):
    torch.manual_seed(hidden)
    theirs = CELLS[name][0](input_size, hidden, bias, dtype=dtype)
    return theirs, CELLS[name][1].from_torch(theirs)


def _state(name, shape, gen, dtype):
    h = torch.randn(*shape, generator=gen, dtype=dtype)
    return (h, torch.randn(*shape, generator=gen, dtype=dtype)) if name == "lstm" else h


def _flat(out):
    return list(out) if isinstance(out, tuple) else [out]


SIZES = [(1, 5, 7), (3, 32, 32), (6, 70, 66), (40, 16, 130), (None, 9, 12)]


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("rows, input_size, hidden", SIZES)
@pytest.mark.parametrize("name", sorted(CELLS))
def test_inference_step_matches_torch(taken, name, rows, input_size, hidden, bias, with_hx):
    """Rows and sizes on both sides of the dot-loop / BLAS switch (kSmallCell), unbatched (rows None)."""
    gen = torch.Generator().manual_seed(hidden)
    shape = (rows,) if rows is not None else ()
    oracle_cell, ours64 = _pair(name, input_size, hidden, bias)
    x = torch.randn(*shape, input_size, generator=gen, dtype=torch.float64)
    hx = _state(name, (*shape, hidden), gen, torch.float64) if with_hx else None
    with torch.no_grad():
        oracle = _flat(oracle_cell(x, hx))
        for got, want in zip(_flat(ours64(x, hx)), oracle):
            assert got.shape == want.shape
            assert max_error(got, want) < 1e-13
        theirs32, ours32 = oracle_cell.float(), CELLS[name][1].from_torch(oracle_cell.float())
        x32 = x.float()
        hx32 = None if hx is None else tuple(s.float() for s in hx) if name == "lstm" else hx.float()
        got32, torch32 = _flat(ours32(x32, hx32)), _flat(theirs32(x32, hx32))
    keys = ["h", "c"][: len(oracle)]
    assert parity_failures(dict(zip(keys, got32)), dict(zip(keys, torch32)), dict(zip(keys, oracle))) == []
    assert taken == [True, True]


def _loop_grads(cell, xs, state, wrt_state):
    cell.zero_grad(set_to_none=True)
    leaf = xs.clone().requires_grad_()
    states = None if state is None else tuple(t.clone().requires_grad_(wrt_state) for t in state)
    current = None if states is None else states if len(states) == 2 else states[0]
    for x in leaf:
        current = cell(x, current)
    outs = current if isinstance(current, tuple) else (current,)
    gen = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
    loss.backward()
    grads = {"x": leaf.grad, **{f"state{i}": t.grad for i, t in enumerate(states or ()) if wrt_state}}
    grads.update({name: p.grad for name, p in cell.named_parameters()})
    return {**grads, **{f"out{i}": o.detach() for i, o in enumerate(outs)}}


@pytest.mark.parametrize("wrt_state", [True, False], ids=["state_grad", "no_state_grad"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("rows, input_size, hidden", [(1, 5, 7), (3, 32, 32), (40, 16, 130)])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_training_loop_matches_torch(taken, name, rows, input_size, hidden, bias, wrt_state):
    """A 4-step loop's outputs and every gradient, across the axpy / BLAS switch of the C++ backward."""
    theirs, ours = _pair(name, input_size, hidden, bias)
    gen = torch.Generator().manual_seed(rows)
    xs = torch.randn(4, rows, input_size, generator=gen, dtype=torch.float64)
    state = _state(name, (rows, hidden), gen, torch.float64)
    state = state if isinstance(state, tuple) else (state,)
    oracle, got = _loop_grads(theirs, xs, state, wrt_state), _loop_grads(ours, xs, state, wrt_state)
    assert got.keys() == oracle.keys()
    for key, want in oracle.items():
        torch.testing.assert_close(got[key], want, rtol=1e-11, atol=1e-12, msg=key)
    theirs32 = copy.deepcopy(theirs).float()
    ours32 = CELLS[name][1].from_torch(theirs32)
    state32 = tuple(t.float() for t in state)
    assert parity_failures(_loop_grads(ours32, xs.float(), state32, wrt_state),
                           _loop_grads(theirs32, xs.float(), state32, wrt_state), oracle) == []
    assert taken and all(taken)


def _step(name, x, h, c, w_ih, w_hh, b_ih, b_hh):
    run = modules._cell_if_plain()
    params = {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": b_ih, "bias_hh": b_hh}
    out = run(4 if name == "lstm" else 3, x, h, c, params)
    assert out is not None
    return out


@pytest.mark.parametrize("name", sorted(CELLS))
def test_gradcheck_and_gradgradcheck(name):
    """First order: the raw C++ backward; second order: torch's cell recomputed under create_graph."""
    gen = torch.Generator().manual_seed(1)
    gates = 4 if name == "lstm" else 3

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)

    x, h, w_ih, w_hh = rand(3, 4), rand(3, 5), rand(gates * 5, 4), rand(gates * 5, 5)
    b_ih, b_hh = rand(gates * 5), rand(gates * 5)
    c = rand(3, 5) if name == "lstm" else None
    inputs = (x, h, c, w_ih, w_hh, b_ih, b_hh) if name == "lstm" else (x, h, w_ih, w_hh, b_ih, b_hh)

    def f(*args):
        if name == "lstm":
            return _step(name, *args)
        x_, h_, *rest = args
        return _step(name, x_, h_, None, *rest)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non_reentrant", "reentrant"])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_checkpointed_loop_matches_plain(name, use_reentrant):
    _, ours = _pair(name, 4, 5)
    xs = torch.randn(3, 2, 4, dtype=torch.float64)

    def loop(leaf):
        state = None
        for x in leaf:
            state = ours(x, state)
        return state[0] if isinstance(state, tuple) else state

    grads = []
    for wrap in (False, True):
        ours.zero_grad()
        leaf = xs.clone().requires_grad_()
        out = torch.utils.checkpoint.checkpoint(loop, leaf, use_reentrant=use_reentrant) if wrap else loop(leaf)
        out.pow(2).sum().backward()
        grads.append([leaf.grad, *(p.grad for p in ours.parameters())])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_input_grad_under_frozen_weights(taken, name):
    theirs, ours = _pair(name, 4, 5)
    ours.requires_grad_(False)
    theirs.requires_grad_(False)
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    got, want = _flat(ours(x)), _flat(theirs(x))
    assert all(g.requires_grad for g in got)
    dx, dx_torch = (torch.autograd.grad(sum(o.sum() for o in outs), x)[0] for outs in (got, want))
    torch.testing.assert_close(dx, dx_torch, rtol=1e-12, atol=1e-13)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-13, atol=1e-14)
    assert taken == [True]


def _declined_calls(name):
    x, h = torch.randn(3, 4), torch.randn(3, 5)
    state = (h, torch.randn(3, 5)) if name == "lstm" else h

    def cast(dtype):
        return tuple(s.to(dtype) for s in state) if name == "lstm" else h.to(dtype)

    wide = torch.randn(3, 8)[:, ::2]
    return {
        "non-contiguous input": (x.t().contiguous().t(), state),
        "strided input": (wide, state),
        "float64 input, float32 weights": (x.double(), cast(torch.float64)),
        "float16": (x.half(), cast(torch.float16)),
    }


@pytest.mark.parametrize("case", ["non-contiguous input", "strided input", "float64 input, float32 weights", "float16"])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_declined_calls_give_torchs_result_or_error(taken, name, case):
    torch.manual_seed(0)
    theirs = CELLS[name][0](4, 5)
    ours = CELLS[name][1].from_torch(theirs)
    x, state = _declined_calls(name)[case]
    if case == "float16":
        theirs.half()
        ours.half()

    def outcome(cell):
        try:
            with torch.no_grad():
                return _flat(cell(x, state))
        except Exception as error:  # noqa: BLE001  (the type and message are what is compared)
            return type(error), str(error)

    got, want = outcome(ours), outcome(theirs)
    if isinstance(want, tuple):
        assert got == want
    else:
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert True not in taken


@pytest.mark.parametrize("name", sorted(CELLS))
def test_parametrized_weight_is_declined_and_used(taken, name):
    class Halved(nn.Module):
        def forward(self, w):
            return 0.5 * w

    theirs, ours = _pair(name, 4, 5)
    for cell in (theirs, ours):
        parametrize.register_parametrization(cell, "weight_hh", Halved())
    x = torch.randn(2, 4, dtype=torch.float64)
    with torch.no_grad():
        for got, want in zip(_flat(ours(x)), _flat(theirs(x))):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    assert taken == [False]


@pytest.mark.parametrize("name", sorted(CELLS))
def test_forced_backend_runs_the_layer_op(use_backend, taken, name):
    use_backend("reference")
    theirs, ours = _pair(name, 4, 5)
    x = torch.randn(2, 4, dtype=torch.float64)
    with torch.no_grad():
        for got, want in zip(_flat(ours(x)), _flat(theirs(x))):
            torch.testing.assert_close(got, want)
    assert taken == []
