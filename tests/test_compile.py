"""torch.library registration of every op of the family (tests/family.py): opcheck, torch.compile(fullgraph=True),
torch.export, torch.func over the gated ops, and the gated ops' fakes in a fresh process."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn.backends import _BACKENDS
from fastrnn.gated_ops import gru_recurrence, lstm_recurrence
from tests.family import GRU, LAYER_CLASSES, LSTM, LSTM_PROJ, RNN_TANH, Spec


def _cpp_or_skip():
    if _BACKENDS["cpp"].unavailable_reason() is not None:
        pytest.skip(_BACKENDS["cpp"].unavailable_reason())


def _rnn_inputs(packed: bool, requires_grad: bool, device: str = "cpu"):
    gen = torch.Generator().manual_seed(0)
    batch_sizes = torch.tensor([3, 2, 2, 1]) if packed else None
    xw = torch.randn(8, 5, generator=gen) if packed else torch.randn(4, 3, 5, generator=gen)
    h0, w = torch.randn(3, 5, generator=gen), torch.randn(5, 5, generator=gen) / 3
    return [t.to(device).requires_grad_(requires_grad) for t in (xw, h0, w)] + [batch_sizes]


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


def _opcheck_rnn(packed: bool, reverse: bool) -> None:
    """The RNN op takes its activation as an argument: the forward is checked with tanh, the backward with relu."""
    xw, h0, w, batch_sizes = _rnn_inputs(packed, requires_grad=True)
    torch.library.opcheck(torch.ops.fastrnn.recurrence.default, (xw, h0, w, batch_sizes, reverse, 0))
    y, h_n = torch.ops.fastrnn.recurrence(xw.detach(), h0.detach(), w.detach(), batch_sizes, reverse, 1)
    dy, dh_n = torch.randn_like(y).requires_grad_(), torch.randn_like(h_n).requires_grad_()
    torch.library.opcheck(
        torch.ops.fastrnn.recurrence_backward.default,
        (dy, dh_n, y.requires_grad_(), w, batch_sizes, reverse, 1, True),
    )


def _opcheck_gru(packed: bool, reverse: bool) -> None:
    xw, h0, w, b, batch_sizes = _gru_inputs(packed, requires_grad=True)
    torch.library.opcheck(torch.ops.fastrnn.gru_recurrence.default, (xw, h0, w, b, batch_sizes, reverse))
    y, h_n, ws = torch.ops.fastrnn.gru_recurrence(xw.detach(), h0.detach(), w.detach(), b.detach(), batch_sizes,
                                                  reverse)
    torch.library.opcheck(
        torch.ops.fastrnn.gru_recurrence_backward.default,
        (torch.randn_like(y), torch.randn_like(h_n), y, ws, h0.detach(), w.detach(), batch_sizes, reverse, True),
    )


def _opcheck_lstm(packed: bool, reverse: bool, proj: bool) -> None:
    xw, h0, c0, w, w_hr, batch_sizes = _lstm_inputs(packed, proj, requires_grad=True)
    torch.library.opcheck(torch.ops.fastrnn.lstm_recurrence.default, (xw, h0, c0, w, w_hr, batch_sizes, reverse))
    d = [t.detach() if t is not None else None for t in (xw, h0, c0, w, w_hr)]
    y, h_n, c_n, ws = torch.ops.fastrnn.lstm_recurrence(*d, batch_sizes, reverse)
    torch.library.opcheck(
        torch.ops.fastrnn.lstm_recurrence_backward.default,
        (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n), ws, d[2], d[3], d[4], batch_sizes,
         reverse, True),
    )


def _opcheck(spec: Spec, packed: bool, reverse: bool) -> None:
    if spec.recurrence == "rnn":
        _opcheck_rnn(packed, reverse)
    elif spec.recurrence == "gru":
        _opcheck_gru(packed, reverse)
    else:
        _opcheck_lstm(packed, reverse, proj="proj_size" in spec.extra)


# The specs that differ at the op level (the RNN's one check covers both activations); only the RNN has Triton
# kernels (test_backends.py checks the GRU / LSTM error for FASTRNN_BACKEND=triton).
OPCHECK_CASES = [
    pytest.param(spec, backend, packed, reverse,
                 id=f"{spec.id}-{backend}-{'packed' if packed else 'padded'}-{'reverse' if reverse else 'forward'}")
    for spec in (RNN_TANH, GRU, LSTM, LSTM_PROJ)
    for backend in (["cpp", "reference", "triton"] if spec.recurrence == "rnn" else ["cpp", "reference"])
    for packed in (False, True)
    for reverse in (False, True)
]


@pytest.mark.parametrize("spec,backend,packed,reverse", OPCHECK_CASES)
def test_opcheck_recurrence_ops(use_backend, spec, backend, packed, reverse):
    use_backend(backend)
    _opcheck(spec, packed, reverse)


def _opcheck_rnn_cpp_ops(packed: bool) -> None:
    xw, h0, w, batch_sizes = _rnn_inputs(packed, requires_grad=False)
    torch.library.opcheck(torch.ops.fastrnn.rnn_fwd.default, (xw, h0, w, batch_sizes, False, 0))
    y, h_n = torch.ops.fastrnn.rnn_fwd(xw, h0, w, batch_sizes, False, 0)
    torch.library.opcheck(
        torch.ops.fastrnn.rnn_bwd.default, (torch.randn_like(y), h_n, y, w, batch_sizes, False, 0, True)
    )


def _opcheck_gru_cpp_ops(packed: bool) -> None:
    """The training pair, and the inference ops in their projected-input (x, w_ih, bias) and xw forms."""
    xw, h0, w, b, batch_sizes = _gru_inputs(packed, requires_grad=False)
    torch.library.opcheck(torch.ops.fastrnn.gru_fwd.default, (xw, h0, w, b, batch_sizes, False))
    y, h_n, ws = torch.ops.fastrnn.gru_fwd(xw, h0, w, b, batch_sizes, False)
    torch.library.opcheck(torch.ops.fastrnn.gru_bwd.default,
                          (torch.randn_like(y), h_n, y, ws, h0, w, batch_sizes, False, True))
    x = torch.randn(*xw.shape[:-1], 5, dtype=xw.dtype)
    w_ih, bias = torch.randn(xw.size(-1), 5, dtype=xw.dtype), torch.randn(xw.size(-1), dtype=xw.dtype)
    torch.library.opcheck(torch.ops.fastrnn.gru_infer.default, (x, w_ih, bias, h0, w, b, batch_sizes, True))
    torch.library.opcheck(torch.ops.fastrnn.gru_layer_fwd.default, (x, w_ih, bias, h0, w, b, batch_sizes, True))
    torch.library.opcheck(torch.ops.fastrnn.gru_infer.default, (xw, None, None, h0, w, b, batch_sizes, False))


def _opcheck_lstm_cpp_ops(packed: bool) -> None:
    """The training pair, the inference op in both forms and the training forward that projects the input."""
    xw, h0, c0, w, w_hr, batch_sizes = _lstm_inputs(packed, True, requires_grad=False)
    torch.library.opcheck(torch.ops.fastrnn.lstm_fwd.default, (xw, h0, c0, w, w_hr, batch_sizes, False))
    y, h_n, c_n, ws = torch.ops.fastrnn.lstm_fwd(xw, h0, c0, w, w_hr, batch_sizes, False)
    torch.library.opcheck(torch.ops.fastrnn.lstm_bwd.default,
                          (torch.randn_like(y), h_n, c_n, ws, c0, w, w_hr, batch_sizes, False, True))
    x = torch.randn(*xw.shape[:-1], 5, dtype=xw.dtype)
    w_ih, bias = torch.randn(xw.size(-1), 5, dtype=xw.dtype), torch.randn(xw.size(-1), dtype=xw.dtype)
    torch.library.opcheck(torch.ops.fastrnn.lstm_infer.default, (x, w_ih, bias, h0, c0, w, w_hr, batch_sizes, True))
    torch.library.opcheck(torch.ops.fastrnn.lstm_layer_fwd.default,
                          (x, w_ih, bias, h0, c0, w, w_hr, batch_sizes, True))
    torch.library.opcheck(torch.ops.fastrnn.lstm_layer_fwd.default,
                          (x, w_ih, None, h0, c0, w, w_hr, batch_sizes, False))
    torch.library.opcheck(torch.ops.fastrnn.lstm_infer.default, (xw, None, None, h0, c0, w, w_hr, batch_sizes, False))


CPP_OPCHECKS = {"rnn": _opcheck_rnn_cpp_ops, "gru": _opcheck_gru_cpp_ops, "lstm": _opcheck_lstm_cpp_ops}


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("spec", [pytest.param(s, id=s.name) for s in LAYER_CLASSES])
def test_opcheck_cpp_ops(spec, packed):
    _cpp_or_skip()
    CPP_OPCHECKS[spec.recurrence](packed)


class Tagger(nn.Module):
    """Linear -> a chain of fastrnn layers -> Linear."""

    def __init__(self, chain: str):
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.rnns = nn.ModuleList(CHAINS[chain]())
        last = self.rnns[-1]
        self.head = nn.Linear((last.proj_size or last.hidden_size) * (2 if last.bidirectional else 1), 4)

    def forward(self, x):
        out = torch.tanh(self.embed(x))
        for rnn in self.rnns:
            out, _ = rnn(out)
        return self.head(out)


# Chains that between them hold every layer class (test_chains_hold_every_layer_class); a new class joins one.
CHAINS = {
    "RNN": lambda: [fastrnn.RNN(8, 16, num_layers=2, bidirectional=True, batch_first=True)],
    "GRU-LSTM_proj": lambda: [fastrnn.GRU(8, 16, num_layers=2, bidirectional=True, batch_first=True),
                              fastrnn.LSTM(32, 12, batch_first=True, proj_size=5)],
}


def test_chains_hold_every_layer_class():
    held = {type(m) for chain in CHAINS.values() for m in chain()}
    assert {spec.ours for spec in LAYER_CLASSES} <= held


def _train_step(model, x, run=None):
    model.zero_grad()
    loss = (model if run is None else run)(x).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("chain", CHAINS)
def test_compile_fullgraph_matches_eager(chain, compile_backend):
    torch.manual_seed(0)
    model = Tagger(chain)
    x = torch.randn(3, 7, 6)
    want_loss, want_grads = _train_step(model, x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=compile_backend)
    for _ in range(2):  # the second call runs the cached graph
        loss, grads = _train_step(model, x, compiled)
    torch.testing.assert_close(loss, want_loss)
    for name in want_grads:
        torch.testing.assert_close(grads[name], want_grads[name], msg=name)


@pytest.mark.parametrize("chain", CHAINS)
def test_compile_has_no_graph_break_where_torch_has_one(chain):
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(Tagger(chain))(torch.randn(2, 5, 6))
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1


def _op_name(spec: Spec) -> str:
    return "fastrnn.recurrence" if spec.recurrence == "rnn" else f"fastrnn.{spec.recurrence}_recurrence"


@pytest.mark.parametrize("chain", CHAINS)
def test_export_runs_and_matches_eager(chain):
    torch.manual_seed(0)
    model = Tagger(chain).eval()
    x = torch.randn(2, 5, 6)
    exported = torch.export.export(model, (x,))
    ops = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    for spec in LAYER_CLASSES:
        if any(isinstance(m, spec.ours) for m in model.rnns):
            assert any(_op_name(spec) in op for op in ops), (spec.name, ops)
    x2 = torch.randn(2, 5, 6)
    torch.testing.assert_close(exported.module()(x2), model(x2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compile_fullgraph_matches_eager_on_cuda():
    torch.manual_seed(0)
    model = Tagger("RNN").cuda()
    x = torch.randn(3, 7, 6, device="cuda")
    want_loss, want_grads = _train_step(model, x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    for _ in range(2):
        loss, grads = _train_step(model, x, compiled)
    torch.testing.assert_close(loss, want_loss)
    for name in want_grads:
        torch.testing.assert_close(grads[name], want_grads[name], msg=name)


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
