"""The one-C++-call inference entry (csrc/rnn_stack.cpp, ``fastrnn._C.rnn_forward_if_plain``).

A plain eager no-grad call of ``fastrnn.RNN`` on CPU tensors runs whole in C++ (issue 12); these tests check
that it is taken where it should be, equals torch.nn.RNN there in float64 across both projection paths (the
dot loop and the BLAS GEMM), and declines (returns None) every call that torch's checks must see.
"""

import re

import pytest
import torch
from torch.func import functional_call
from torch.nn.utils import parametrize

import fastrnn
from fastrnn import modules

plain = pytest.importorskip("fastrnn._C").rnn_forward_if_plain


@pytest.fixture
def plain_calls(monkeypatch):
    """Counts the module's calls of the C++ entry that returned a result."""
    taken = []

    def spy(*args):
        result = plain(*args)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(modules, "_forward_if_plain", lambda: spy)
    return taken


def _args(rnn, x, hx):
    return (x, hx, rnn._weights(), rnn.bias, rnn.num_layers, rnn.bidirectional,
            0 if rnn.nonlinearity == "tanh" else 1, rnn.batch_first, rnn.input_size, rnn.hidden_size)


@pytest.mark.parametrize("steps,batch,hidden", [(5, 1, 8), (3, 2, 33), (50, 4, 64), (20, 64, 96), (7, 3, 300)])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
def test_plain_call_equals_torch_across_projection_paths(plain_calls, steps, batch, hidden, bias, layout):
    """Projections of up to 32K multiply-adds run a dot loop, larger ones the BLAS (both with and without
    biases); the recurrence then runs in place in the output buffer."""
    gen = torch.Generator().manual_seed(steps * 1000 + hidden)
    ref = torch.nn.RNN(6, hidden, num_layers=2, bias=bias, batch_first=layout == "batch_first",
                       dtype=torch.float64)
    ours = fastrnn.RNN.from_torch(ref)
    shape = {"time_major": (steps, batch, 6), "batch_first": (batch, steps, 6), "unbatched": (steps, 6)}[layout]
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    hx_shape = (2, hidden) if layout == "unbatched" else (2, batch, hidden)
    hx = torch.randn(*hx_shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        for args in ((x,), (x, hx)):
            got, want = ours(*args), ref(*args)
            for g, w in zip(got, want):
                assert g.shape == w.shape
                torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    assert plain_calls == [True, True]


@pytest.mark.parametrize("config", [dict(bidirectional=True), dict(nonlinearity="relu"),
                                    dict(num_layers=3, bidirectional=True, nonlinearity="relu")],
                         ids=["bi", "relu", "L3-bi-relu"])
def test_plain_call_equals_torch_for_each_configuration(plain_calls, config):
    gen = torch.Generator().manual_seed(5)
    ref = torch.nn.RNN(4, 9, dtype=torch.float64, **config)
    ours = fastrnn.RNN.from_torch(ref)
    x = torch.randn(6, 3, 4, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        for g, w in zip(ours(x), ref(x)):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    assert plain_calls == [True]


def test_plain_call_takes_non_contiguous_tensors_and_float32(plain_calls):
    ref = torch.nn.RNN(3, 5, 2, bidirectional=True)
    ours = fastrnn.RNN.from_torch(ref)
    x = torch.randn(6, 8, 3)[:, ::2]
    hx = torch.randn(4, 5, 4).transpose(1, 2)
    with torch.no_grad():
        got, want = ours(x, hx), ref(x, hx)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert plain_calls == [True]


def test_weights_in_use_are_the_modules_own(plain_calls):
    """The call reads the weights the module would use: parametrized ones and functional_call's."""

    class Halved(torch.nn.Module):
        def forward(self, w):
            return 0.5 * w

    ref = torch.nn.RNN(3, 5, dtype=torch.float64)
    ours = fastrnn.RNN.from_torch(ref)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    params = {name: torch.zeros_like(p) for name, p in ours.named_parameters()}
    with torch.no_grad():
        assert torch.equal(functional_call(ours, params, (x,))[0], torch.zeros(4, 2, 5, dtype=torch.float64))
    parametrize.register_parametrization(ref, "weight_hh_l0", Halved())
    parametrize.register_parametrization(ours, "weight_hh_l0", Halved())
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-12, atol=1e-12)
    assert plain_calls == [True, True]


def _declined_calls():
    rnn = fastrnn.RNN(3, 5, 2, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    hx = torch.zeros(2, 2, 5, dtype=torch.float64)
    weights = rnn._weights()
    base = _args(rnn, x, hx)

    def replace(i, value):
        return base[:i] + (value,) + base[i + 1:]

    return {
        "input_size": replace(0, torch.randn(4, 2, 4, dtype=torch.float64)),
        "4-D input": replace(0, x[None]),
        "empty sequence": replace(0, x[:0]),
        "empty batch": replace(0, x[:, :0]),
        "hx dims": replace(1, hx[0]),
        "hx layers": replace(1, hx[:1]),
        "hx batch": replace(1, hx[:, :1]),
        "hx dtype": replace(1, hx.float()),
        "input dtype": replace(0, x.float()),
        "integer input": replace(0, x.long()),
        "half input": replace(0, x.half()),
        "meta input": replace(0, x.to("meta")),
        "weight count": replace(2, weights[:-1]),
        "weight shape": replace(2, [weights[0][:, :2]] + weights[1:]),
        "weight dtype": replace(2, [weights[0].float()] + weights[1:]),
        "hidden_size": base[:9] + (6,),
        "activation": replace(6, 2),
    }


@pytest.mark.parametrize("name", list(_declined_calls()))
def test_entry_declines_what_torch_must_check(name):
    with torch.no_grad():
        assert plain(*_declined_calls()[name]) is None


def test_entry_declines_calls_that_record_gradients():
    rnn = fastrnn.RNN(3, 5, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    assert plain(*_args(rnn, x, None)) is None  # parameters require grad and grad mode is on
    with torch.no_grad():
        assert plain(*_args(rnn, x, None)) is not None
    x.requires_grad_(True)
    rnn.requires_grad_(False)
    assert plain(*_args(rnn, x, None)) is None


def test_module_errors_stay_torchs_on_declined_calls(plain_calls):
    ours, ref = fastrnn.RNN(3, 5), torch.nn.RNN(3, 5)
    with torch.no_grad():
        for bad in (torch.randn(4, 2, 4), torch.randn(4, 2, 3, 1)):
            with pytest.raises(Exception) as want:
                ref(bad)
            with pytest.raises(type(want.value), match=re.escape(str(want.value))):
                ours(bad)
    assert plain_calls == [False, False]


def test_training_calls_and_dropout_do_not_take_the_entry(plain_calls):
    ours = fastrnn.RNN(3, 5, 2, dropout=0.5)
    x = torch.randn(4, 2, 3)
    ours(x)[0].sum().backward()  # records gradients: the differentiable path
    with torch.no_grad():
        ours(x)  # training-mode dropout: the per-layer path draws the masks
        ours.eval()
        ours(x)
    assert plain_calls == [True]
