"""The fused RNNCell step (csrc/cell.cpp, ``fastrnn::rnn_cell``) against torch.nn.RNNCell.

Its backward has two forms: one pass on raw pointers when no graph is recorded (a plain ``backward()``), and
differentiable ATen ops under ``create_graph=True`` (double backward). Both are checked here across the
loop / BLAS switch (a few rows and small sizes run loops), every subset of inputs that need gradients, and
float64 / float32.
"""

import itertools

import pytest
import torch

import fastrnn
from fastrnn.testing import parity_failures

SIZES = [(1, 5, 7), (1, 32, 32), (3, 8, 64), (4, 64, 64), (5, 16, 16), (32, 32, 32), (2, 300, 100), (32, 128, 256)]


def _cells(inp, hidden, bias, nonlinearity, dtype):
    torch.manual_seed(inp * 100 + hidden)
    ref = torch.nn.RNNCell(inp, hidden, bias, nonlinearity, dtype=dtype)
    return ref, fastrnn.RNNCell.from_torch(ref)


def _grads(cell, x, h, wanted, create_graph=False):
    """Output and the gradients of a weighted sum of it with respect to ``wanted`` (names)."""
    x = x.clone().requires_grad_("input" in wanted)
    h = h.clone().requires_grad_("hx" in wanted)
    params = dict(cell.named_parameters())
    for name, p in params.items():
        p.requires_grad_(name in wanted)
    out = cell(x, h)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    leaves = {"input": x, "hx": h, **params}
    names = [n for n in wanted if n in leaves]
    grads = torch.autograd.grad((out * weight).sum(), [leaves[n] for n in names], create_graph=create_graph)
    return {"output": out.detach(), **{f"grad_{n}": g.detach() for n, g in zip(names, grads)}}


ALL = ("input", "hx", "weight_ih", "weight_hh", "bias_ih", "bias_hh")


@pytest.mark.parametrize("batch,inp,hidden", SIZES)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_cell_gradients_equal_torchs_across_kernel_paths(batch, inp, hidden, nonlinearity):
    ref, ours = _cells(inp, hidden, True, nonlinearity, torch.float64)
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, inp, generator=gen, dtype=torch.float64)
    h = torch.randn(batch, hidden, generator=gen, dtype=torch.float64)
    want = _grads(ref, x, h, ALL)
    for create_graph in (False, True):  # raw-pointer backward, then the differentiable ATen one
        got = _grads(ours, x, h, ALL, create_graph)
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-11, atol=1e-11, msg=key)
    got32 = _grads(ours.float(), x.float(), h.float(), ALL)
    want32 = _grads(ref.float(), x.float(), h.float(), ALL)
    assert parity_failures(got32, want32, want) == []


@pytest.mark.parametrize("wanted", [w for n in (1, 2) for w in itertools.combinations(ALL, n)],
                         ids=lambda w: "+".join(w))
@pytest.mark.parametrize("batch,inp,hidden", [(1, 5, 7), (32, 32, 32)])
def test_cell_computes_the_gradients_asked_for(wanted, batch, inp, hidden):
    ref, ours = _cells(inp, hidden, True, "tanh", torch.float64)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(batch, inp, generator=gen, dtype=torch.float64)
    h = torch.randn(batch, hidden, generator=gen, dtype=torch.float64)
    want, got = _grads(ref, x, h, wanted), _grads(ours, x, h, wanted)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-11, atol=1e-11, msg=key)


def test_cell_without_bias_and_bias_gradients_are_separate_tensors():
    ref, ours = _cells(6, 9, False, "tanh", torch.float64)
    x, h = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 9, dtype=torch.float64)
    want, got = _grads(ref, x, h, ALL), _grads(ours, x, h, ALL)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-11, atol=1e-11)
    _, ours = _cells(6, 9, True, "tanh", torch.float64)
    ours(x, h).sum().backward()
    assert ours.bias_ih.grad.data_ptr() != ours.bias_hh.grad.data_ptr()
    torch.testing.assert_close(ours.bias_ih.grad, ours.bias_hh.grad)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_cell_gradcheck_and_gradgradcheck(nonlinearity):
    _, ours = _cells(4, 5, True, nonlinearity, torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    h = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)

    def f(x, h, *weights):
        return torch.func.functional_call(ours, dict(zip(["weight_ih", "weight_hh", "bias_ih", "bias_hh"], weights)),
                                          (x, h))

    weights = [p.detach().clone().requires_grad_(True) for p in ours.parameters()]
    assert torch.autograd.gradcheck(f, (x, h, *weights))
    assert torch.autograd.gradgradcheck(f, (x, h, *weights))


def test_cell_loop_training_matches_torch():
    """The course's loop: many steps, then one backward through all of them."""
    ref, ours = _cells(8, 16, True, "tanh", torch.float64)
    xs = torch.randn(20, 3, 8, dtype=torch.float64)
    results = []
    for cell in (ref, ours):
        cell.zero_grad()
        h = torch.zeros(3, 16, dtype=torch.float64)
        total = 0
        for x in xs:
            h = cell(x, h)
            total = total + h.sum()
        total.backward()
        results.append([h.detach()] + [p.grad for p in cell.parameters()])
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)


_cell_if_plain = pytest.importorskip("fastrnn._C").cell_if_plain


def cell_if_plain(x, h, parameters, activation):
    """RNNCell's call of the entry in torch.nn.RNNCell's argument order (kind = activation, no cx): h' or None."""
    return _cell_if_plain(activation, x, h, None, parameters)


def test_module_takes_the_one_call_entry_for_plain_calls(entry_calls):
    taken = entry_calls("_cell_if_plain")
    ref, ours = _cells(5, 7, True, "relu", torch.float64)
    x, h = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    for args in ((x, h), (x,), (x[0], h[0]), (x[0],)):
        torch.testing.assert_close(ours(*args), ref(*args), rtol=1e-12, atol=1e-12)
    assert taken == [True] * 4
    ours.nonlinearity = "gelu"  # torch raises at call time; so must we, with torch's error
    with pytest.raises(RuntimeError, match="Unknown nonlinearity: gelu"):
        ours(x, h)
    assert taken == [True] * 4 + [False]


def _declined_cell_calls():
    cell = fastrnn.RNNCell(3, 5, dtype=torch.float64)
    x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    params = dict(cell._parameters)
    return {
        "input size": (torch.randn(2, 4, dtype=torch.float64), h, params, 0),
        "3-D input": (x[None], None, params, 0),
        "hx rank": (x, h[0], params, 0),
        "hx rank unbatched": (x[0], h, params, 0),
        "hx batch": (x, h[:1], params, 0),
        "hx size": (x, h[:, :4], params, 0),
        "hx dtype": (x, h.float(), params, 0),
        "input dtype": (x.float(), h, params, 0),
        "integer input": (x.long(), None, params, 0),
        "half input": (x.half(), None, params, 0),
        "meta input": (x.to("meta"), None, params, 0),
        "activation": (x, h, params, -1),
        "parametrized weight": (x, h, {k: v for k, v in params.items() if k != "weight_hh"}, 0),
        "bias shape": (x, h, {**params, "bias_ih": params["bias_ih"][:4]}, 0),
        "bias dtype": (x, h, {**params, "bias_hh": params["bias_hh"].float()}, 0),
        "weight shape": (x, h, {**params, "weight_ih": params["weight_ih"][:, :2]}, 0),
    }


@pytest.mark.parametrize("name", list(_declined_cell_calls()))
def test_cell_entry_declines_what_torch_must_check(name):
    assert cell_if_plain(*_declined_cell_calls()[name]) is None
