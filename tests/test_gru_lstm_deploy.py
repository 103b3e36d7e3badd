"""GRU and LSTM go where torch's go: ONNX (both exporters, run in onnxruntime; they emit the standard ONNX GRU /
LSTM ops), torch.jit.trace and torch.jit.script (which record fastrnn's ops, as for the RNN: saved programs load
where fastrnn is imported; ``fastrnn.to_torch(model)`` first gives one that loads without it) and torch.fx (one
call_module leaf). Each test runs the same code on torch's module and compares."""

import subprocess
import sys

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn
from tests.test_deploy import _export, _ops, _run_ort

pytest.importorskip("onnxruntime")

CLASSES = {"GRU": (nn.GRU, fastrnn.GRU), "LSTM": (nn.LSTM, fastrnn.LSTM)}
CONFIGS = [pytest.param(dict(), id="L1"), pytest.param(dict(num_layers=2, bidirectional=True), id="L2-bi")]


class Model(nn.Module):
    """The recurrent layer and a linear head; returns the head's output and the last hidden state."""

    def __init__(self, cls, **config):
        super().__init__()
        self.rnn = cls(4, 6, **config)
        self.head = nn.Linear(6 * (2 if config.get("bidirectional") else 1), 3)

    def forward(self, x):
        out, state = self.rnn(x)
        h_n = state[0] if isinstance(state, tuple) else state
        return self.head(out), h_n


def _pair(name, **config):
    torch_cls, our_cls = CLASSES[name]
    torch.manual_seed(0)
    ref = Model(torch_cls, **config).eval()
    ours = Model(our_cls, **config).eval()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _loads_in_a_fresh_process(saved_module, ref, x, tmp_path, with_fastrnn: bool):
    """Saves a traced or scripted module, loads it in a fresh process (which imports fastrnn or never does) and
    checks its outputs on ``x`` against torch's module."""
    path = tmp_path / "model.pt"
    saved_module.save(str(path))
    torch.save([x, [t.detach() for t in ref(x)]], tmp_path / "io.pt")
    code = (
        "import torch, sys\n"
        + ("import fastrnn\n" if with_fastrnn else "")
        + f"m = torch.jit.load({str(path)!r})\n"
        f"x, want = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "for g, w in zip(m(x), want): torch.testing.assert_close(g, w)\n"
        f"assert ('fastrnn' in sys.modules) == {with_fastrnn}\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def _fastrnn_ops(program) -> set[str]:
    return {op for op in ("fastrnn::gru_recurrence", "fastrnn::lstm_recurrence", "aten::gru", "aten::lstm")
            if op + "(" in str(program.inlined_graph)}


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript_exporter", "dynamo_exporter"])
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", CLASSES)
def test_onnx_export_runs_in_onnxruntime_like_torch(name, config, dynamo):
    ref, ours = _pair(name, **config)
    args = (torch.randn(5, 3, 4),)
    exported = {}
    for label, model in (("torch", ref), ("fastrnn", ours)):
        model_bytes = _export(model, args, dynamo)
        exported[label] = _ops(model_bytes)
        for got, want in zip(_run_ort(model_bytes, args), model(*args)):
            torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5)
    assert exported["fastrnn"] == exported["torch"]
    if not dynamo:
        assert name in exported["fastrnn"]  # the standard ONNX GRU / LSTM op


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", CLASSES)
def test_trace_records_fastrnns_op_and_to_torch_gives_a_portable_one(tmp_path, name, config):
    ref, ours = _pair(name, **config)
    x = torch.randn(5, 3, 4)
    other = torch.randn(7, 2, 4)  # the op is not specialised to one length
    traced = torch.jit.trace(ours, (x,))
    assert _fastrnn_ops(traced) == {f"fastrnn::{name.lower()}_recurrence"}
    for args in ((x,), (other,)):
        for got, want in zip(traced(*args), ref(*args)):
            torch.testing.assert_close(got, want)
    _loads_in_a_fresh_process(traced, ref, other, tmp_path, with_fastrnn=True)
    portable = torch.jit.trace(fastrnn.to_torch(ours), (x,))
    assert _fastrnn_ops(portable) == {f"aten::{name.lower()}"}
    _loads_in_a_fresh_process(portable, ref, other, tmp_path, with_fastrnn=False)


def test_fx_symbolic_trace_keeps_gated_modules_as_leaves():
    class Net(nn.Module):
        def __init__(self, gru, lstm, gru_cell, lstm_cell):
            super().__init__()
            self.gru, self.lstm, self.gru_cell, self.lstm_cell = gru, lstm, gru_cell, lstm_cell

        def forward(self, x):
            out, h_n = self.gru(x)
            out, (h, c) = self.lstm(out)
            h1 = self.gru_cell(out[-1], h_n[0])
            h2, _ = self.lstm_cell(h1, (h[0], c[0]))
            return h2

    torch.manual_seed(0)
    ref = Net(nn.GRU(4, 6), nn.LSTM(6, 6), nn.GRUCell(6, 6), nn.LSTMCell(6, 6))
    ours = Net(fastrnn.GRU(4, 6), fastrnn.LSTM(6, 6), fastrnn.GRUCell(6, 6), fastrnn.LSTMCell(6, 6))
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 4)
    for net in (ref, ours):
        graph = torch.fx.symbolic_trace(net)
        modules = [n.target for n in graph.graph.nodes if n.op == "call_module"]
        assert modules == ["gru", "lstm", "gru_cell", "lstm_cell"]
        torch.testing.assert_close(graph(x), ref(x))


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", CLASSES)
def test_script_records_fastrnns_op_trains_like_torch_and_loads(tmp_path, name, config):
    """torch.jit.script of the gated modules runs fastrnn's ops (one deployment policy for the family, issue 18),
    equal to torch's module in values and gradients; ``fastrnn.to_torch`` first gives a portable program."""
    ref, ours = _pair(name, **config)
    scripted = torch.jit.script(ours)
    assert _fastrnn_ops(scripted) == {f"fastrnn::{name.lower()}_recurrence"}
    x = torch.randn(5, 3, 4, requires_grad=True)
    grads = []
    for model in (ref, scripted):
        out = model(x)
        torch.testing.assert_close(out[0], ref(x)[0])
        grads.append(torch.autograd.grad(out[0].pow(2).sum() + out[1].sum(), [x, *model.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    _loads_in_a_fresh_process(scripted, ref, torch.randn(7, 2, 4), tmp_path, with_fastrnn=True)
    _loads_in_a_fresh_process(torch.jit.script(fastrnn.to_torch(ours)), ref, torch.randn(7, 2, 4), tmp_path,
                              with_fastrnn=False)


@pytest.mark.parametrize("name", ["GRUCell", "LSTMCell"])
def test_cells_script_like_torchs(name):
    torch.manual_seed(0)
    ref = getattr(nn, name)(4, 6)
    ours = getattr(fastrnn, name).from_torch(ref)
    scripted = torch.jit.script(ours)
    assert f"fastrnn::{name[:-4].lower()}_recurrence(" in str(scripted.inlined_graph)
    for args in ((torch.randn(3, 4),), (torch.randn(4),)):
        got, want = scripted(*args), ref(*args)
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)


class _Packed(nn.Module):
    """A scripted module with overloaded forwards (torch's RNNs too) is called from scripted code."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x: PackedSequence) -> Tensor:
        return self.rnn(x)[0].data


@pytest.mark.parametrize("name", CLASSES)
def test_scripted_packed_input_like_torchs(name):
    torch_cls, our_cls = CLASSES[name]
    torch.manual_seed(0)
    ref = torch_cls(4, 6, bidirectional=True)
    scripted = torch.jit.script(_Packed(our_cls.from_torch(ref)))
    packed = pack_padded_sequence(torch.randn(5, 3, 4), torch.tensor([5, 3, 2]))
    torch.testing.assert_close(scripted(packed), ref(packed)[0].data)


def test_jit_trace_of_the_gated_ops_records_the_custom_ops():
    """The GRU / LSTM op entries take the custom op under torch.jit.trace, as the RNN's does (one `traced`
    predicate for every family), so the trace holds fastrnn's op rather than an untraceable Function."""
    from fastrnn.gated_ops import gru_recurrence, lstm_recurrence

    torch.manual_seed(0)
    xw, h0, w = torch.randn(4, 2, 9), torch.randn(2, 3), torch.randn(9, 3)
    traced = torch.jit.trace(lambda a, b, c: gru_recurrence(a, b, c)[0], (xw, h0, w))
    assert "fastrnn::gru_recurrence" in str(traced.graph)
    torch.testing.assert_close(traced(xw, h0, w), gru_recurrence(xw, h0, w)[0])
    xw4, c0, w4 = torch.randn(4, 2, 12), torch.randn(2, 3), torch.randn(12, 3)
    traced = torch.jit.trace(lambda a, b, c, d: lstm_recurrence(a, b, c, d)[0], (xw4, h0, c0, w4))
    assert "fastrnn::lstm_recurrence" in str(traced.graph)
    torch.testing.assert_close(traced(xw4, h0, c0, w4), lstm_recurrence(xw4, h0, c0, w4)[0])
