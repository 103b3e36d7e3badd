"""The unified whole-call bindings ``fastrnn._C.stack_if_plain(kind, ...)`` and ``cell_if_plain(kind, ...)``
(csrc/whole_call.h; kind 0 / 1 RNN tanh / relu, 3 GRU, 4 LSTM) against torch's modules on the same float64
weights: every layout the module preamble handles (batch-first, unbatched, a missing state), the gradients
of a recorded call, the calls they decline, and the module's call of them giving the same numbers."""

from __future__ import annotations

import pytest
import torch

import fastrnn

_C = pytest.importorskip("fastrnn._C")
KINDS = {0: ("RNN", {"nonlinearity": "tanh"}), 1: ("RNN", {"nonlinearity": "relu"}), 3: ("GRU", {}), 4: ("LSTM", {})}
IN, H, T, B = 3, 5, 4, 2


def _modules(kind: int, cell: bool, **kwargs):
    name, extra = KINDS[kind]
    torch.manual_seed(kind)
    theirs = getattr(torch.nn, name + ("Cell" if cell else ""))(IN, H, dtype=torch.float64, **extra, **kwargs)
    return theirs


def _stack_args(kind, module, x, state, batch_first=False):
    h, c = (state if state is not None else (None, None)) if kind == 4 else (state, None)
    return (kind, x, h, c, [getattr(module, n) for n in module._flat_weights_names], module.bias, module.num_layers,
            module.bidirectional, batch_first, IN, H, getattr(module, "proj_size", 0))


@pytest.mark.parametrize("kind", list(KINDS), ids=[f"kind{k}" for k in KINDS])
@pytest.mark.parametrize("layout", ["padded", "batch_first", "unbatched", "no_state", "2layer_bi", "no_bias"])
def test_stack_entry_matches_torch(kind, layout):
    kwargs = {"num_layers": 2, "bidirectional": True} if layout == "2layer_bi" else {}
    if layout == "no_bias":
        kwargs["bias"] = False
    batch_first = layout == "batch_first"
    theirs = _modules(kind, False, batch_first=batch_first, **kwargs)
    layers = theirs.num_layers * (2 if theirs.bidirectional else 1)
    shape = (T, IN) if layout == "unbatched" else (B, T, IN) if batch_first else (T, B, IN)
    x = torch.randn(shape, dtype=torch.float64)
    lead = (layers,) if layout == "unbatched" else (layers, B)
    state = None if layout == "no_state" else torch.randn(*lead, H, dtype=torch.float64)
    if kind == 4 and state is not None:
        state = (state, torch.randn_like(state))
    with torch.no_grad():
        want_out, want_state = theirs(x, state)
        got = _C.stack_if_plain(*_stack_args(kind, theirs, x, state, batch_first))
    assert got is not None
    want = [want_out, *(want_state if kind == 4 else (want_state,))]
    assert (got[2] is None) == (kind != 4)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_stack_entry_lstm_projection_matches_torch():
    theirs = _modules(4, False, proj_size=2, num_layers=2)
    x = torch.randn(T, B, IN, dtype=torch.float64)
    with torch.no_grad():
        want_out, (want_h, want_c) = theirs(x)
        got = _C.stack_if_plain(*_stack_args(4, theirs, x, (None, None)))
    for g, w in zip(got, (want_out, want_h, want_c)):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", list(KINDS), ids=[f"kind{k}" for k in KINDS])
def test_stack_entry_records_the_call_with_torchs_gradients_of_two_orders(kind):
    theirs = _modules(kind, False, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, IN, dtype=torch.float64, requires_grad=True)
    h = torch.randn(4, B, H, dtype=torch.float64, requires_grad=True)
    state = (h, torch.randn(4, B, H, dtype=torch.float64)) if kind == 4 else h
    params = list(theirs.parameters())

    def second_order(out, h_n):
        first = torch.autograd.grad((out.tanh() * 1.5).sum() + h_n.pow(2).sum(), [x, h, *params], create_graph=True)
        return torch.autograd.grad(sum((g * g).sum() for g in first), [x, h, *params])

    got = _C.stack_if_plain(*_stack_args(kind, theirs, x, state))
    assert "StackFunction" in got[0].grad_fn.name()
    want_out, want_state = theirs(x, state)
    want_h = want_state[0] if kind == 4 else want_state
    for g, w in zip(second_order(got[0], got[1]), second_order(want_out, want_h)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_stack_entry_declines_what_torch_must_check():
    theirs = _modules(3, False)
    x = torch.randn(T, B, IN, dtype=torch.float64)
    args = list(_stack_args(3, theirs, x, None))
    with torch.no_grad():
        assert _C.stack_if_plain(2, *args[1:]) is None  # no such kind
        assert _C.stack_if_plain(*args[:3], torch.zeros(1, B, H, dtype=torch.float64), *args[4:]) is None  # GRU with c
        assert _C.stack_if_plain(*args[:1], x.float(), *args[2:]) is None  # dtypes differ
        assert _C.stack_if_plain(*args[:-3], IN, H + 1, 0) is None  # hidden_size
        assert _C.stack_if_plain(*args[:4], args[4][:-1], *args[5:]) is None  # a weight missing


@pytest.mark.parametrize("kind", list(KINDS), ids=[f"kind{k}" for k in KINDS])
def test_module_plain_call_is_the_stack_binding(kind):
    """A plain module call (``_Recurrent._eager_forward``, fastrnn/modules.py) gives the direct binding call's bits;
    the per-family bindings (rnn_forward_if_plain, gated_forward_if_plain) that this replaced are gone."""
    theirs = _modules(kind, False, num_layers=2)
    ours = getattr(fastrnn, KINDS[kind][0]).from_torch(theirs)
    x = torch.randn(T, B, IN, dtype=torch.float64)
    args = _stack_args(kind, theirs, x, (None, None) if kind == 4 else None)
    with torch.no_grad():
        new = _C.stack_if_plain(*args)
        output, state = ours(x)
    assert len(new) == 3 and (new[2] is None) == (kind != 4)  # c_n: LSTM only
    for o, n in zip((output, *(state if kind == 4 else (state, None))), new):
        assert (o is None and n is None) or torch.equal(o, n)


def _cell_args(kind, cell, x, state):
    h, c = state if kind == 4 and state is not None else (state, None)
    return kind, x, h, c, cell._parameters


@pytest.mark.parametrize("kind", list(KINDS), ids=[f"kind{k}" for k in KINDS])
@pytest.mark.parametrize("layout", ["batched", "unbatched", "no_state", "no_bias"])
def test_cell_entry_matches_torch_with_gradients(kind, layout):
    theirs = _modules(kind, True, bias=layout != "no_bias")
    lead = () if layout == "unbatched" else (B,)
    x = torch.randn(*lead, IN, dtype=torch.float64, requires_grad=True)
    state = None
    if layout != "no_state":
        state = torch.randn(*lead, H, dtype=torch.float64, requires_grad=True)
        if kind == 4:
            state = (state, torch.randn(*lead, H, dtype=torch.float64, requires_grad=True))
    leaves = [x, *([] if state is None else state if kind == 4 else [state]), *theirs.parameters()]
    got = _C.cell_if_plain(*_cell_args(kind, theirs, x, state))
    want = theirs(x, state)
    got, want = (list(got), list(want)) if kind == 4 else ([got], [want])
    assert got[0].grad_fn is not None
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)

    def grads(outs):
        return torch.autograd.grad(sum((o.tanh() * (i + 1)).sum() for i, o in enumerate(outs)), leaves)

    for g, w in zip(grads(got), grads(want)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", list(KINDS), ids=[f"kind{k}" for k in KINDS])
def test_cell_entry_declines_what_torch_must_check(kind):
    theirs = _modules(kind, True)
    x, h = torch.randn(B, IN, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    with torch.no_grad():
        assert _C.cell_if_plain(2, x, h, None, theirs._parameters) is None  # no such kind
        assert _C.cell_if_plain(kind, x.float(), h, None if kind != 4 else h, theirs._parameters) is None
        assert _C.cell_if_plain(kind, x[None], None, None, theirs._parameters) is None  # 3-D input
        assert _C.cell_if_plain(kind, x, h[0], h[0] if kind == 4 else None, theirs._parameters) is None  # ranks
        if kind == 4:
            assert _C.cell_if_plain(kind, x, h, None, theirs._parameters) is None  # h without c
        else:
            assert _C.cell_if_plain(kind, x, h, h, theirs._parameters) is None  # a c for a one-state cell
        if kind >= 3:  # the gated cells take contiguous tensors only
            assert _C.cell_if_plain(kind, x.t().contiguous().t(), h, h if kind == 4 else None,
                                    theirs._parameters) is None


@pytest.mark.parametrize("kind", list(KINDS), ids=[f"kind{k}" for k in KINDS])
def test_calls_without_a_state_leave_the_shared_zeros_untouched(kind):
    """A call without a state starts from zeros a thread keeps between calls (csrc/stack.cpp, initial_state), which
    the layers must only read: calls after calls, bidirectional and 2-layer (and the LSTM's h and c of two
    widths), each give torch's result."""
    name, extra = KINDS[kind]
    torch.manual_seed(10 + kind)
    proj = {"proj_size": 3} if kind == 4 else {}
    theirs = getattr(torch.nn, name)(IN, H, num_layers=2, bidirectional=True, dtype=torch.float64, **extra, **proj)
    ours = getattr(fastrnn, name).from_torch(theirs)
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(T, B, IN, dtype=torch.float64) * 3
            got, want = ours(x), theirs(x)
            torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)
