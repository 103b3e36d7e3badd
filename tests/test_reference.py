"""The oracle first: the float64 reference equals torch.nn.RNN(dtype=float64), op by op and as a module."""

import pytest
import torch

import fastrnn
from fastrnn.reference import (
    prev_state_index,
    rnn_recurrence_bwd_ref,
    rnn_recurrence_double_bwd_ref,
    rnn_recurrence_ref,
)
from fastrnn.testing import max_error, outputs_and_grads
from tests.cases import INPUT_KINDS, make_input


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_reference_module_equals_torch_float64(use_backend, kind, bidirectional, nonlinearity):
    use_backend("reference")
    gen = torch.Generator().manual_seed(1)
    extra, x, hx = make_input(kind, 2, bidirectional, gen)
    torch_rnn = torch.nn.RNN(5, 7, 2, nonlinearity, bidirectional=bidirectional, dtype=torch.float64, **extra)
    ours = fastrnn.RNN.from_torch(torch_rnn)
    want = outputs_and_grads(torch_rnn, x, hx)
    got = outputs_and_grads(ours, x, hx)
    for key in want:
        assert max_error(got[key], want[key]) < 1e-12 * max(1.0, want[key].abs().max().item()), key


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_reference_backward_equals_autograd_of_reference(reverse, activation, packed):
    gen = torch.Generator().manual_seed(2)
    hidden, batch = 6, 4
    batch_sizes = torch.tensor([4, 4, 3, 1, 1]) if packed else None
    shape = (int(batch_sizes.sum()), hidden) if packed else (5, batch, hidden)
    xw = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(batch, hidden, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(hidden, hidden, generator=gen, dtype=torch.float64, requires_grad=True)
    y, h_n = rnn_recurrence_ref(xw, h0, w, batch_sizes, reverse, activation)
    dy, dh_n = torch.randn_like(y), torch.randn_like(h_n)
    want = torch.autograd.grad((y * dy).sum() + (h_n * dh_n).sum(), (xw, h0))
    dz, dh0 = rnn_recurrence_bwd_ref(dy, dh_n, y.detach(), w.detach(), batch_sizes, reverse, activation)
    assert max_error(dz, want[0]) < 1e-12
    assert max_error(dh0, want[1]) < 1e-12


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_double_backward_reference_equals_autograd_of_backward(reverse, activation, packed):
    gen = torch.Generator().manual_seed(3)
    hidden, batch = 5, 4
    batch_sizes = torch.tensor([4, 3, 3, 1]) if packed else None
    shape = (int(batch_sizes.sum()), hidden) if packed else (4, batch, hidden)

    def randn(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True)

    dy, dh_n, w = randn(*shape), randn(batch, hidden), randn(hidden, hidden)
    y = torch.tanh(torch.randn(*shape, generator=gen, dtype=torch.float64)).requires_grad_(True)
    dz, dh0 = rnn_recurrence_bwd_ref(dy, dh_n, y, w, batch_sizes, reverse, activation)
    ddz, ddh0 = torch.randn_like(dz), torch.randn_like(dh0)
    want = torch.autograd.grad((dz, dh0), (dy, dh_n, y, w), (ddz, ddh0), allow_unused=True)
    got = rnn_recurrence_double_bwd_ref(ddz, ddh0, dy.detach(), dh_n.detach(), y.detach(), w.detach(),
                                        batch_sizes, reverse, activation)
    for name, a, b in zip(("dy", "dh_n", "y", "w_hh"), got, want):
        expected = torch.zeros_like(a) if b is None else b
        assert max_error(a, expected) < 1e-12, name


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_prev_state_index_matches_step_walk(reverse):
    sizes = [4, 3, 3, 1]
    index = prev_state_index(torch.tensor(sizes), reverse, sum(sizes)).tolist()
    n, offsets = sum(sizes), [0, 4, 7, 10]
    for t, b in enumerate(sizes):
        for r in range(b):
            neighbour = t + 1 if reverse else t - 1
            if 0 <= neighbour < len(sizes) and r < sizes[neighbour]:
                expected = offsets[neighbour] + r
            else:
                expected = n + r
            assert index[offsets[t] + r] == expected, (t, r)
