"""torch.library registration: opcheck on every op, torch.compile(fullgraph=True) and torch.export."""

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn.backends import _BACKENDS


def _op_inputs(packed: bool, requires_grad: bool, device: str = "cpu"):
    gen = torch.Generator().manual_seed(0)
    batch_sizes = torch.tensor([3, 2, 2, 1]) if packed else None
    xw = torch.randn(8, 5, generator=gen) if packed else torch.randn(4, 3, 5, generator=gen)
    h0, w = torch.randn(3, 5, generator=gen), torch.randn(5, 5, generator=gen) / 3
    return [t.to(device).requires_grad_(requires_grad) for t in (xw, h0, w)] + [batch_sizes]


@pytest.mark.parametrize("backend", ["cpp", "reference", "triton"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_opcheck_recurrence_ops(use_backend, backend, packed, reverse):
    use_backend(backend)
    xw, h0, w, batch_sizes = _op_inputs(packed, requires_grad=True)
    torch.library.opcheck(torch.ops.fastrnn.recurrence.default, (xw, h0, w, batch_sizes, reverse, 0))
    y, h_n = torch.ops.fastrnn.recurrence(xw.detach(), h0.detach(), w.detach(), batch_sizes, reverse, 1)
    dy, dh_n = torch.randn_like(y).requires_grad_(), torch.randn_like(h_n).requires_grad_()
    torch.library.opcheck(
        torch.ops.fastrnn.recurrence_backward.default,
        (dy, dh_n, y.requires_grad_(), w, batch_sizes, reverse, 1, True),
    )


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_opcheck_cpp_ops(packed):
    if _BACKENDS["cpp"].unavailable_reason() is not None:
        pytest.skip(_BACKENDS["cpp"].unavailable_reason())
    xw, h0, w, batch_sizes = _op_inputs(packed, requires_grad=False)
    torch.library.opcheck(torch.ops.fastrnn.rnn_fwd.default, (xw, h0, w, batch_sizes, False, 0))
    y, h_n = torch.ops.fastrnn.rnn_fwd(xw, h0, w, batch_sizes, False, 0)
    torch.library.opcheck(
        torch.ops.fastrnn.rnn_bwd.default, (torch.randn_like(y), h_n, y, w, batch_sizes, False, 0, True)
    )


class Tagger(nn.Module):
    """Linear -> 2-layer bidirectional fastrnn.RNN -> Linear."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.rnn = fastrnn.RNN(8, 16, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        out, _ = self.rnn(torch.tanh(self.embed(x)))
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


def test_compile_has_no_graph_break_where_torch_rnn_has_one():
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
    assert any("fastrnn.recurrence" in op for op in ops), ops
    x2 = torch.randn(2, 5, 6)
    torch.testing.assert_close(exported.module()(x2), model(x2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compile_fullgraph_matches_eager_on_cuda():
    torch.manual_seed(0)
    model = Tagger().cuda()
    x = torch.randn(3, 7, 6, device="cuda")
    want_loss, want_grads = _train_step(model, x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    for _ in range(2):
        loss, grads = _train_step(model, x, compiled)
    torch.testing.assert_close(loss, want_loss)
    for name in want_grads:
        torch.testing.assert_close(grads[name], want_grads[name], msg=name)
