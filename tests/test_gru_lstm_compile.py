"""The GRU / LSTM ops under torch.library: opcheck, torch.compile(fullgraph=True), torch.export, vmap."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn.gated_ops import gru_recurrence, lstm_recurrence


def _cpp_or_skip():
    from fastrnn._cpp import load_cpp_ops

    missing = load_cpp_ops()
    if missing is not None:
        pytest.skip(missing)


def _gru_inputs(packed: bool, requires_grad: bool):
    gen = torch.Generator().manual_seed(0)
    batch_sizes = torch.tensor([3, 2, 2, 1]) if packed else None
    xw = torch.randn(8, 15, generator=gen) if packed else torch.randn(4, 3, 15, generator=gen)
    h0, w, b = torch.randn(3, 5, generator=gen), torch.randn(15, 5, generator=gen) / 3, torch.randn(5, generator=gen)
    return [t.requires_grad_(requires_grad) for t in (xw, h0, w, b)] + [batch_sizes]


def _lstm_inputs(packed: bool, proj: bool, requires_grad: bool):
    gen = torch.Generator().manual_seed(1)
    batch_sizes = torch.tensor([3, 2, 2, 1]) if packed else None
    p = 3 if proj else 5
    xw = torch.randn(8, 20, generator=gen) if packed else torch.randn(4, 3, 20, generator=gen)
    h0, c0 = torch.randn(3, p, generator=gen), torch.randn(3, 5, generator=gen)
    w, w_hr = torch.randn(20, p, generator=gen) / 3, torch.randn(p, 5, generator=gen) / 3 if proj else None
    tensors = [t.requires_grad_(requires_grad) if t is not None else None for t in (xw, h0, c0, w, w_hr)]
    return tensors + [batch_sizes]


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_opcheck_gru_ops(use_backend, backend, packed, reverse):
    use_backend(backend)
    xw, h0, w, b, batch_sizes = _gru_inputs(packed, requires_grad=True)
    torch.library.opcheck(torch.ops.fastrnn.gru_recurrence.default, (xw, h0, w, b, batch_sizes, reverse))
    y, h_n, ws = torch.ops.fastrnn.gru_recurrence(xw.detach(), h0.detach(), w.detach(), b.detach(), batch_sizes,
                                                  reverse)
    torch.library.opcheck(
        torch.ops.fastrnn.gru_recurrence_backward.default,
        (torch.randn_like(y), torch.randn_like(h_n), y, ws, h0.detach(), w.detach(), batch_sizes, reverse, True),
    )


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("proj", [False, True], ids=["noproj", "proj"])
def test_opcheck_lstm_ops(use_backend, backend, packed, proj):
    use_backend(backend)
    xw, h0, c0, w, w_hr, batch_sizes = _lstm_inputs(packed, proj, requires_grad=True)
    torch.library.opcheck(torch.ops.fastrnn.lstm_recurrence.default, (xw, h0, c0, w, w_hr, batch_sizes, True))
    d = [t.detach() if t is not None else None for t in (xw, h0, c0, w, w_hr)]
    y, h_n, c_n, ws = torch.ops.fastrnn.lstm_recurrence(*d, batch_sizes, True)
    torch.library.opcheck(
        torch.ops.fastrnn.lstm_recurrence_backward.default,
        (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n), ws, d[2], d[3], d[4], batch_sizes,
         True, True),
    )


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_opcheck_cpp_ops(packed):
    _cpp_or_skip()
    xw, h0, w, b, batch_sizes = _gru_inputs(packed, requires_grad=False)
    torch.library.opcheck(torch.ops.fastrnn.gru_fwd.default, (xw, h0, w, b, batch_sizes, False))
    y, h_n, ws = torch.ops.fastrnn.gru_fwd(xw, h0, w, b, batch_sizes, False)
    torch.library.opcheck(torch.ops.fastrnn.gru_bwd.default,
                          (torch.randn_like(y), h_n, y, ws, h0, w, batch_sizes, False, True))
    xw, h0, c0, w, w_hr, batch_sizes = _lstm_inputs(packed, True, requires_grad=False)
    torch.library.opcheck(torch.ops.fastrnn.lstm_fwd.default, (xw, h0, c0, w, w_hr, batch_sizes, False))
    y, h_n, c_n, ws = torch.ops.fastrnn.lstm_fwd(xw, h0, c0, w, w_hr, batch_sizes, False)
    torch.library.opcheck(torch.ops.fastrnn.lstm_bwd.default,
                          (torch.randn_like(y), h_n, c_n, ws, c0, w, w_hr, batch_sizes, False, True))
    # The inference ops in their projected-input (x, w_ih, bias) and xw forms; the training forwards that
    # project the input.
    x = torch.randn(*xw.shape[:-1], 5, dtype=xw.dtype)
    w_ih, bias = torch.randn(xw.size(-1), 5, dtype=xw.dtype), torch.randn(xw.size(-1), dtype=xw.dtype)
    torch.library.opcheck(torch.ops.fastrnn.lstm_infer.default, (x, w_ih, bias, h0, c0, w, w_hr, batch_sizes, True))
    torch.library.opcheck(torch.ops.fastrnn.lstm_layer_fwd.default,
                          (x, w_ih, bias, h0, c0, w, w_hr, batch_sizes, True))
    torch.library.opcheck(torch.ops.fastrnn.lstm_layer_fwd.default,
                          (x, w_ih, None, h0, c0, w, w_hr, batch_sizes, False))
    torch.library.opcheck(torch.ops.fastrnn.lstm_infer.default, (xw, None, None, h0, c0, w, w_hr, batch_sizes, False))
    xw, h0, w, b, batch_sizes = _gru_inputs(packed, requires_grad=False)
    w_ih, bias = torch.randn(xw.size(-1), 5, dtype=xw.dtype), torch.randn(xw.size(-1), dtype=xw.dtype)
    torch.library.opcheck(torch.ops.fastrnn.gru_infer.default, (x, w_ih, bias, h0, w, b, batch_sizes, True))
    torch.library.opcheck(torch.ops.fastrnn.gru_layer_fwd.default, (x, w_ih, bias, h0, w, b, batch_sizes, True))
    torch.library.opcheck(torch.ops.fastrnn.gru_infer.default, (xw, None, None, h0, w, b, batch_sizes, False))


class Tagger(nn.Module):
    """Linear -> 2-layer bidirectional fastrnn.GRU -> fastrnn.LSTM (projected) -> Linear."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.gru = fastrnn.GRU(8, 16, num_layers=2, bidirectional=True, batch_first=True)
        self.lstm = fastrnn.LSTM(32, 12, batch_first=True, proj_size=5)
        self.head = nn.Linear(5, 4)

    def forward(self, x):
        out, _ = self.gru(torch.tanh(self.embed(x)))
        out, _ = self.lstm(out)
        return self.head(out)


def _train_step(model, x, run=None):
    model.zero_grad()
    loss = (model if run is None else run)(x).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_matches_eager(compile_backend):
    torch.manual_seed(0)
    model = Tagger()
    x = torch.randn(3, 7, 6)
    want_loss, want_grads = _train_step(model, x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=compile_backend)
    for _ in range(2):  # the second call runs the cached graph
        loss, grads = _train_step(model, x, compiled)
    torch.testing.assert_close(loss, want_loss)
    for name in want_grads:
        torch.testing.assert_close(grads[name], want_grads[name], msg=name)


def test_compile_has_no_graph_break():
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(Tagger())(torch.randn(2, 5, 6))
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1


def test_export_runs_and_matches_eager():
    torch.manual_seed(0)
    model = Tagger().eval()
    x = torch.randn(2, 5, 6)
    exported = torch.export.export(model, (x,))
    ops = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert any("fastrnn.gru_recurrence" in op for op in ops), ops
    assert any("fastrnn.lstm_recurrence" in op for op in ops), ops
    x2 = torch.randn(2, 5, 6)
    torch.testing.assert_close(exported.module()(x2), model(x2))


def test_vmap_over_sequences_with_shared_weights():
    xw, h0, w, b, _ = _gru_inputs(False, requires_grad=False)
    xs, hs = torch.stack([xw, xw * 0.5]), torch.stack([h0, -h0])
    y, h_n = torch.func.vmap(lambda x, h: gru_recurrence(x, h, w, b))(xs, hs)
    for i in range(2):
        want_y, want_h = gru_recurrence(xs[i], hs[i], w, b)
        torch.testing.assert_close(y[i], want_y)
        torch.testing.assert_close(h_n[i], want_h)
    xw, h0, c0, w, w_hr, _ = _lstm_inputs(False, True, requires_grad=False)
    y, h_n, c_n = torch.func.vmap(lambda x: lstm_recurrence(x, h0, c0, w, w_hr))(torch.stack([xw, -xw]))
    torch.testing.assert_close(y[1], lstm_recurrence(-xw, h0, c0, w, w_hr)[0])


def test_grad_under_torch_func():
    xw, h0, w, b, _ = _gru_inputs(False, requires_grad=False)
    got = torch.func.grad(lambda x: gru_recurrence(x, h0, w, b)[0].square().sum())(xw)
    x = xw.clone().requires_grad_()
    gru_recurrence(x, h0, w, b)[0].square().sum().backward()
    torch.testing.assert_close(got, x.grad)


def test_per_sample_gradients_with_vmap_of_grad():
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    lstm = fastrnn.LSTM(3, 4, proj_size=2, dtype=torch.float64)
    params = {k: v.detach() for k, v in lstm.named_parameters()}
    xs = torch.randn(3, 5, 1, 3, dtype=torch.float64)

    def loss(p, x):
        return functional_call(lstm, p, (x,))[0].square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, xs)
    for i in range(3):
        lstm.zero_grad()
        loss(dict(lstm.named_parameters()), xs[i]).backward()
        for name, p in lstm.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, msg=name)


@pytest.mark.parametrize("eager_load", ["1", "0"], ids=["built-at-import", "loaded-on-use"])
def test_gated_fakes_exist_as_soon_as_the_ops_do(eager_load):
    """A fresh process that calls a gated C++ op under a tracer before any module has run finds its fake (they
    were registered on a module's first call only, so opcheck of the ops alone failed)."""
    _cpp_or_skip()
    code = (
        "import torch, fastrnn\n"
        "from fastrnn._cpp import load_cpp_ops\n"
        "from torch._subclasses.fake_tensor import FakeTensorMode\n"
        "assert load_cpp_ops() is None\n"
        "with FakeTensorMode():\n"
        "    out = torch.ops.fastrnn.gru_fwd(torch.empty(3, 2, 12), torch.empty(2, 4), torch.empty(12, 4), None,\n"
        "                                    None, False)\n"
        "    out2 = torch.ops.fastrnn.lstm_layer_fwd(torch.empty(3, 2, 5), torch.empty(16, 5), None,\n"
        "                                            torch.empty(2, 4), torch.empty(2, 4), torch.empty(16, 4),\n"
        "                                            None, None, False)\n"
        "print(tuple(out[2].shape), tuple(out2[3].shape))\n"
    )
    env = dict(os.environ, FASTRNN_NO_EAGER_LOAD="0" if eager_load == "1" else "1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["(3,", "2,", "16)", "(3,", "2,", "20)"]
