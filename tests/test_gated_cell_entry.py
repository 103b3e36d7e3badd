"""GRUCell / LSTMCell steps: one C++ call when nothing differentiates them (``fastrnn._C.gated_cell_if_plain``),
torch's cell kernel otherwise, the layer op's path with ``FASTRNN_BACKEND`` set."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import fastrnn
from fastrnn import gated_modules
from fastrnn.testing import max_error, parity_failures

CELLS = {"gru": (nn.GRUCell, fastrnn.GRUCell), "lstm": (nn.LSTMCell, fastrnn.LSTMCell)}

pytestmark = pytest.mark.skipif(gated_modules._gated_cell_if_plain() is None, reason="the built extension is absent")


@pytest.fixture
def taken(monkeypatch):
    """Per C++ step call: whether it took the call (True) or declined it (False)."""
    calls = []
    run = gated_modules._gated_cell_if_plain()

    def spy(*args):
        out = run(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(gated_modules, "_gated_cell_if_plain", lambda: spy)
    return calls


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


@pytest.mark.parametrize("name", sorted(CELLS))
def test_training_steps_run_torchs_cell_exactly(taken, name):
    theirs, ours = _pair(name, 6, 8, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(5, 3, 6, generator=gen)
    grads = []
    for cell in (theirs, ours):
        leaf = xs.clone().requires_grad_()
        state = None
        for x in leaf:
            state = cell(x, state)
        (state[0] if isinstance(state, tuple) else state).pow(2).sum().backward()
        grads.append([leaf.grad, *(p.grad for p in cell.parameters())])
    for got, want in zip(grads[1], grads[0]):
        assert torch.equal(got, want)
    assert taken == []  # training steps never reach the C++ entry


@pytest.mark.parametrize("name", sorted(CELLS))
def test_input_that_requires_grad_under_frozen_weights_is_declined(taken, name):
    theirs, ours = _pair(name, 4, 5)
    ours.requires_grad_(False)
    theirs.requires_grad_(False)
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    got, want = _flat(ours(x)), _flat(theirs(x))
    assert all(g.requires_grad for g in got)
    torch.autograd.grad(sum(g.sum() for g in got), x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert taken == [False]


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
