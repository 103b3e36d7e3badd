"""Every place torch's module goes, each member of the family (tests/family.py) goes the same way: ONNX (both
exporters, run in onnxruntime), TorchScript (script and trace, saved and loaded in a fresh process), torch.fx,
checkpointing, compile without recompiles, FLOP counting and dynamic quantization. Each test runs the same code
on torch's module first.

Under TorchScript (script and trace) every module records fastrnn's ops (issue 18: one deployment policy), so a
saved program needs fastrnn to load; ``fastrnn.to_torch(model)`` first gives one that loads without it."""

import io
import subprocess
import sys
import warnings
from typing import Optional

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fastrnn
from tests.family import CELL_CLASSES, LAYER_CLASSES, RNN_TANH, RNN_TANH_CELL, params

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


class Model(nn.Module):
    """Linear -> RNN / GRU / LSTM -> Linear, optionally over padded sequences packed by their lengths; returns the
    head's output and the last hidden state."""

    def __init__(self, rnn_cls, packed=False, **config):
        super().__init__()
        self.packed = packed
        self.batch_first = config.get("batch_first", False)
        self.rnn = rnn_cls(4, 6, **config)
        self.head = nn.Linear(6 * (2 if config.get("bidirectional") else 1), 3)

    def forward(self, x, lengths: Optional[Tensor] = None):
        if self.packed:
            assert lengths is not None
            out, state = self.rnn(pack_padded_sequence(x, lengths, batch_first=self.batch_first))
            out, _ = pad_packed_sequence(out, batch_first=self.batch_first, total_length=x.size(int(self.batch_first)))
        else:
            out, state = self.rnn(x)
        h_n = state[0] if isinstance(state, tuple) else state
        return self.head(out), h_n


def _pair(spec=RNN_TANH, packed=False, **config):
    torch.manual_seed(0)
    ref = Model(spec.theirs, packed, **config).eval()
    ours = Model(spec.ours, packed, **config).eval()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _inputs(batch_first=False):
    x = torch.randn(3, 5, 4) if batch_first else torch.randn(5, 3, 4)
    return x, torch.tensor([5, 4, 2])


CONFIGS = [
    pytest.param(dict(), id="L1"),
    pytest.param(dict(num_layers=2, bidirectional=True), id="L2-bi"),
    pytest.param(dict(batch_first=True, nonlinearity="relu"), id="batch_first-relu"),
    pytest.param(dict(bidirectional=True, batch_first=True, packed=True), id="bi-packed"),
]
# The RNN runs every configuration; GRU / LSTM the first two (they export as torch's: its implementation runs).
ONNX_CASES = [
    pytest.param(spec, config.values[0], id=f"{spec.name}-{config.id}")
    for spec in LAYER_CLASSES
    for config in (CONFIGS if spec.name == "RNN" else CONFIGS[:2])
]


def _export(model, args, dynamo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(model, args, dynamo=True)
            return program.model_proto.SerializeToString()
        buffer = io.BytesIO()
        torch.onnx.export(model, args, buffer, dynamo=False, opset_version=17)
        return buffer.getvalue()


def _ops(model_bytes):
    import onnx

    return {node.op_type for node in onnx.load_from_string(model_bytes).graph.node}


def _run_ort(model_bytes, args):
    session = ort.InferenceSession(model_bytes)
    inputs = session.get_inputs()  # the TorchScript exporter drops inputs the graph does not use
    feeds = {i.name: a.numpy() for i, a in zip(inputs, args if len(inputs) == len(args) else args[:1])}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript_exporter", "dynamo_exporter"])
@pytest.mark.parametrize("spec,config", ONNX_CASES)
def test_onnx_export_runs_in_onnxruntime_like_torch(spec, config, dynamo):
    config = dict(config)
    packed = config.pop("packed", False)
    ref, ours = _pair(spec, packed, **config)
    args = _inputs(config.get("batch_first", False))
    if packed and dynamo:  # torch.nn.RNN over a PackedSequence does not export with dynamo=True; neither does ours
        for model in (ref, ours):
            with pytest.raises(torch.onnx.OnnxExporterError):
                _export(model, args, dynamo)
        return
    exported = {}
    for name, model in (("torch", ref), ("fastrnn", ours)):
        model_bytes = _export(model, args, dynamo)
        exported[name] = _ops(model_bytes)
        got = _run_ort(model_bytes, args)
        for g, want in zip(got, model(*args)):
            torch.testing.assert_close(g, want.detach(), rtol=1e-5, atol=1e-5)
    assert exported["fastrnn"] == exported["torch"]
    if not dynamo:
        assert spec.name in exported["fastrnn"]  # the standard ONNX RNN / GRU / LSTM op


def _fresh_process(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# The RNN runs three configurations (relu is the RNN's); GRU / LSTM the first two.
TORCHSCRIPT_CASES = [
    pytest.param(spec, config.values[0], id=f"{spec.name}-{config.id}")
    for spec in LAYER_CLASSES
    for config in (CONFIGS[:3] if spec.name == "RNN" else CONFIGS[:2])
]
_RECORDED = {"RNN": "fastrnn::recurrence", "GRU": "fastrnn::gru_recurrence", "LSTM": "fastrnn::lstm_recurrence",
             "RNNCell": "fastrnn::rnn_cell", "GRUCell": "fastrnn::gru_recurrence",
             "LSTMCell": "fastrnn::lstm_recurrence"}


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("spec,config", TORCHSCRIPT_CASES)
def test_torchscript_saves_and_loads_in_a_fresh_process(tmp_path, how, spec, config):
    """A scripted or traced program holds fastrnn's op: it loads and trains where fastrnn is imported."""
    ref, ours = _pair(spec, **config)
    args = _inputs(config.get("batch_first", False))
    compiled = torch.jit.script(ours) if how == "script" else torch.jit.trace(ours, args)
    assert _RECORDED[spec.name] + "(" in str(compiled.inlined_graph)
    for got, want in zip(compiled(*args), ref(*args)):
        torch.testing.assert_close(got, want)
    path = tmp_path / "model.pt"
    compiled.save(str(path))
    torch.save([args, [t.detach() for t in ref(*args)]], tmp_path / "io.pt")
    out = _fresh_process(
        "import torch, fastrnn\n"
        f"m = torch.jit.load({str(path)!r})\n"
        f"args, want = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "got = m(*args)\n"
        "for g, w in zip(got, want): torch.testing.assert_close(g, w)\n"
        "got[0].sum().backward() if got[0].requires_grad else None\n"
        "print('ok')\n"
    )
    assert out.strip() == "ok"


def test_torchscript_load_without_fastrnn_names_fastrnn(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.script(fastrnn.RNN(4, 6)).save(str(path))
    done = subprocess.run([sys.executable, "-c", f"import torch; torch.jit.load({str(path)!r})"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "fastrnn" in done.stderr


class _Outputs(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("spec", params(LAYER_CLASSES + CELL_CLASSES, by="name"))
def test_torchscript_script_trains_like_eager(spec):
    torch.manual_seed(0)
    if not spec.is_cell:
        ref = spec.theirs(4, 6, 2, bidirectional=True)
        x = torch.randn(5, 3, 4, requires_grad=True)
    else:
        ref = spec.theirs(4, 6)
        x = torch.randn(3, 4, requires_grad=True)
    ours = spec.ours.from_torch(ref)
    # A scripted module with overloaded forwards (torch's RNN too) is called from scripted code, not Python.
    scripted = torch.jit.script(_Outputs(ours))
    grads = []
    for module in (_Outputs(ref), scripted):
        grads.append(torch.autograd.grad(module(x).pow(2).sum(), [x, *module.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


class _LayerThenCell(nn.Module):
    """A layer, then a cell on its last output and state (``(h, c)`` for ``state_arity`` 2)."""

    def __init__(self, rnn, cell, state_arity: int):
        super().__init__()
        self.rnn, self.cell, self.paired = rnn, cell, state_arity == 2

    def forward(self, x):
        out, state = self.rnn(x)
        if self.paired:  # fx traces through Proxies: the arity is known at construction, not from the value
            return self.cell(out[-1], (state[0][0], state[1][0]))[0]
        return self.cell(out[-1], state[0])


def test_layers_and_cells_pair_up():
    assert [s.recurrence for s in LAYER_CLASSES] == [s.recurrence for s in CELL_CLASSES]


@pytest.mark.parametrize("layer,cell", [pytest.param(a, b, id=a.name) for a, b in zip(LAYER_CLASSES, CELL_CLASSES)])
def test_fx_symbolic_trace_keeps_layer_and_cell_as_leaves(layer, cell):
    torch.manual_seed(0)
    ref = _LayerThenCell(layer.theirs(4, 6), cell.theirs(6, 6), cell.state_arity)
    ours = _LayerThenCell(layer.ours(4, 6), cell.ours(6, 6), cell.state_arity)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 4)
    for net in (ref, ours):
        graph = torch.fx.symbolic_trace(net)
        modules = [n.target for n in graph.graph.nodes if n.op == "call_module"]
        assert modules == ["rnn", "cell"]
        torch.testing.assert_close(graph(x), net(x))
        torch.testing.assert_close(graph(x), ref(x))


@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non_reentrant", "reentrant"])
@pytest.mark.parametrize("spec", params(LAYER_CLASSES + CELL_CLASSES, by="name"))
def test_checkpoint_matches_plain_backward(spec, use_reentrant):
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    module = spec.ours(4, 6) if spec.is_cell else spec.ours(4, 6, 2, bidirectional=True)
    x = torch.randn(3, 4) if spec.is_cell else torch.randn(5, 3, 4)
    grads = []
    for wrap in (False, True):
        module.zero_grad()
        leaf = x.clone().requires_grad_()
        out = checkpoint(module, leaf, use_reentrant=use_reentrant) if wrap else module(leaf)
        out = out[0] if isinstance(out, tuple) else out
        out.pow(2).sum().backward()
        grads.append([leaf.grad, *[p.grad for p in module.parameters()]])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("spec", params(LAYER_CLASSES, by="name"))
def test_each_saved_tensor_is_unpacked_once_per_backward(use_backend, spec, backend):
    use_backend(backend)
    module = spec.ours(4, 6, 2, bidirectional=True)
    packs, unpacks = [], []

    def pack(t):
        packs.append(t)
        return len(packs) - 1

    def unpack(i):
        unpacks.append(i)
        return packs[i]

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out, state = module(torch.randn(5, 3, 4, requires_grad=True))
    finals = state if isinstance(state, tuple) else (state,)
    (out.sum() + sum(s.sum() for s in finals)).backward()
    assert len(unpacks) == len(set(unpacks)) == len(packs)


def _compile_count(module, inputs):
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(module, backend=counter, fullgraph=True)
    counts = []
    for x in inputs:
        out, h_n = compiled(x)
        (out.sum() + h_n.sum()).backward()
        counts.append(counter.frame_count)
    return counts


@pytest.mark.parametrize("config", [dict(), dict(num_layers=2, bidirectional=True), dict(batch_first=True)],
                         ids=["L1", "L2-bi", "batch_first"])
@pytest.mark.parametrize("varying", ["length", "batch"])
def test_compile_makes_a_static_then_a_dynamic_graph_only(config, varying):
    module = fastrnn.RNN(4, 6, **config)
    sizes = range(2, 11)

    def shape(n):
        steps, batch = (n, 3) if varying == "length" else (5, n)
        return (batch, steps, 4) if config.get("batch_first") else (steps, batch, 4)

    counts = _compile_count(module, [torch.randn(*shape(n)) for n in sizes])
    assert counts[-1] <= 2 and counts[1] == counts[-1], counts


TRAINING_COMPILE_CASES = [
    pytest.param(name, bi, varying, id=f"{name}-{'bi' if bi else 'uni'}-{varying}")
    for name in ("RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell")
    for bi in ((False,) if name.endswith("Cell") else (False, True))
    for varying in (("batch",) if name.endswith("Cell") else ("length", "batch"))
]


@pytest.mark.parametrize("name,bidirectional,varying", TRAINING_COMPILE_CASES)
def test_compiled_training_makes_a_static_then_a_dynamic_graph_only(name, bidirectional, varying):
    """Forward and backward through aot_autograd under fullgraph (a reversed direction's dW_hh indexed its last
    step as dz[T - 1], which specialized every backward on T: one graph per length until the recompile limit)."""
    from torch._dynamo.utils import counters

    cell = name.endswith("Cell")
    torch.manual_seed(0)
    module = getattr(fastrnn, name)(4, 6, **({} if cell else dict(num_layers=2, bidirectional=bidirectional,
                                                                    batch_first=True)))
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)

    def run(fn, x):
        x = x.clone().requires_grad_()
        out = fn(x)
        first = out[0] if isinstance(out, tuple) else out
        first.sum().backward()
        return first.detach(), x.grad

    graphs = []
    for n in range(2, 11):
        shape = (n, 4) if cell else (3, n, 4) if varying == "length" else (n, 5, 4)
        x = torch.randn(*shape)
        got = run(compiled, x)
        graphs.append(counters["stats"]["unique_graphs"])
    want = run(module, x)
    assert graphs[-1] <= 2 and graphs[1] == graphs[-1], graphs
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("spec", params(LAYER_CLASSES, by="name"))
def test_compile_packed_input_does_not_recompile_per_length(spec):
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(spec.ours(4, 6, bidirectional=True), backend=counter)  # breaks like torch's
    counts = []
    for steps in range(3, 12):
        x = pack_padded_sequence(torch.randn(steps, 2, 4), [steps, steps - 1])
        compiled(x)[0].data.sum().backward()
        counts.append(counter.frame_count)
    assert counts[1] == counts[-1], counts


@pytest.mark.parametrize("config", [dict(), dict(num_layers=2, bidirectional=True), dict(nonlinearity="relu")],
                         ids=["L1", "L2-bi", "relu"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
def test_flop_counter_counts_what_it_counts_for_torch(config, with_hx):
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    ref = nn.RNN(4, 6, **config)
    ours = fastrnn.RNN.from_torch(ref)
    d = 2 if config.get("bidirectional") else 1
    totals = []
    for module in (ref, ours):
        x = torch.randn(5, 3, 4, requires_grad=True)
        hx = torch.randn(config.get("num_layers", 1) * d, 3, 6, requires_grad=True) if with_hx else None
        counter = FlopCounterMode(display=False)
        with counter:
            out, h_n = module(x, hx) if with_hx else module(x)
            (out.sum() + h_n.sum()).backward()
        totals.append(counter.get_total_flops())
    assert totals[0] == totals[1] > 0


FAMILY_FLOP_CASES = [
    pytest.param(name, config, packed, mode, id=f"{name}-{cid}-{'packed' if packed else 'padded'}-{mode}")
    for name, configs in (("RNN", {"L2-bi": dict(num_layers=2, bidirectional=True)}),
                          ("GRU", {"L1": {}, "L2-bi": dict(num_layers=2, bidirectional=True)}),
                          ("LSTM", {"L1": {}, "L2-bi": dict(num_layers=2, bidirectional=True),
                                    "proj": dict(proj_size=4, bidirectional=True)}))
    for cid, config in configs.items()
    for packed in (False, True)
    for mode in ("no_grad", "weights_only", "training")
]


@pytest.mark.parametrize("name,config,packed,mode", FAMILY_FLOP_CASES)
def test_flop_counter_counts_the_family_like_torch(name, config, packed, mode):
    """GRU and LSTM count what torch counts (torch's LSTM with oneDNN off: with it torch's counter sees one
    opaque op and counts 0, while fastrnn counts the real arithmetic); packed reversed directions too."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    ref = getattr(nn, name)(8, 16, **config)
    ours = getattr(fastrnn, name).from_torch(ref)
    totals = []
    for module in (ref, ours):
        x = torch.randn(5, 3, 8, requires_grad=mode == "training")
        module.requires_grad_(mode != "no_grad")
        data = pack_padded_sequence(x, [5, 4, 2]) if packed else x
        counter = FlopCounterMode(display=False)
        with counter, torch.backends.mkldnn.flags(enabled=False), torch.set_grad_enabled(mode != "no_grad"):
            out = module(data)[0]
            if mode != "no_grad":
                (out.data if packed else out).sum().backward()
        totals.append(counter.get_total_flops())
    assert totals[0] == totals[1] > 0


@pytest.mark.parametrize("spec", params(CELL_CLASSES, by="name"))
def test_flop_counter_counts_the_cell_like_torch(spec):
    from torch.utils.flop_counter import FlopCounterMode

    totals = []
    for cell in (spec.theirs(4, 6), spec.ours(4, 6)):
        counter = FlopCounterMode(display=False)
        with counter:
            out = cell(torch.randn(3, 4, requires_grad=True))
            (out[0] if isinstance(out, tuple) else out).sum().backward()
        totals.append(counter.get_total_flops())
    assert totals[0] == totals[1] > 0


class _FirstOutput(nn.Module):
    def forward(self, out):
        return out[0] if isinstance(out, tuple) else out


# fastrnn.quantize_dynamic maps fastrnn.RNNCell to torch's quantized cell; fastrnn's GRUCell / LSTMCell are not
# mapped yet (they stay float), so this runs for the RNNCell alone.
@pytest.mark.parametrize("spec", params([RNN_TANH_CELL], by="name"))
def test_dynamic_quantization_makes_the_cell_int8(spec):
    from torch.ao.nn.quantized import dynamic as nnqd

    torch.manual_seed(0)
    model = nn.Sequential(spec.ours(4, 6), _FirstOutput(), nn.Linear(6, 2))
    x = torch.randn(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for quantized in (
            torch.ao.quantization.quantize_dynamic(model, {spec.ours, nn.Linear}),
            fastrnn.quantize_dynamic(model, {spec.theirs, nn.Linear}),  # torch's classes cover the drop-ins
            fastrnn.quantize_dynamic(model),  # the default spec, as torch's
        ):
            assert isinstance(quantized[0], getattr(nnqd, spec.name)) and isinstance(quantized[2], nnqd.Linear)
            expected = nn.Sequential(model[0].to_torch(), model[1], model[2])
            torch.testing.assert_close(quantized(x), expected(x), rtol=0.05, atol=0.02)


def _loads_without_fastrnn(saved_module, ref, x, tmp_path):
    """Saves a traced or scripted module, loads it in a fresh process that never imports fastrnn and checks
    its outputs on ``x`` against torch's module."""
    path = tmp_path / "model.pt"
    saved_module.save(str(path))
    torch.save([x, [t.detach() for t in ref(x)]], tmp_path / "io.pt")
    code = (
        "import torch, sys\n"
        f"m = torch.jit.load({str(path)!r})\n"
        f"x, want = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "for g, w in zip(m(x), want): torch.testing.assert_close(g, w)\n"
        "assert 'fastrnn' not in sys.modules\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("spec,config", TORCHSCRIPT_CASES[2:])  # one RNN configuration, as many as GRU / LSTM
def test_to_torch_first_gives_a_program_that_loads_without_fastrnn(tmp_path, how, spec, config):
    ref, ours = _pair(spec, **config)
    x = torch.randn(5, 3, 4)
    portable = fastrnn.to_torch(ours)
    compiled = torch.jit.script(portable) if how == "script" else torch.jit.trace(portable, (x,))
    assert "fastrnn::" not in str(compiled.inlined_graph)
    other = torch.randn(7, 2, 4)
    for got, want in zip(compiled(other), ref(other)):
        torch.testing.assert_close(got, want)
    _loads_without_fastrnn(compiled, ref, other, tmp_path)


@pytest.mark.parametrize("spec", params(CELL_CLASSES, by="name"))
def test_cells_script_like_torchs(spec):
    torch.manual_seed(0)
    ref = spec.theirs(4, 6)
    ours = spec.ours.from_torch(ref)
    scripted = torch.jit.script(ours)
    assert _RECORDED[spec.name] + "(" in str(scripted.inlined_graph)
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


@pytest.mark.parametrize("spec", params(LAYER_CLASSES, by="name"))
def test_scripted_packed_input_like_torchs(spec):
    torch.manual_seed(0)
    ref = spec.theirs(4, 6, bidirectional=True)
    scripted = torch.jit.script(_Packed(spec.ours.from_torch(ref)))
    packed = pack_padded_sequence(torch.randn(5, 3, 4), torch.tensor([5, 3, 2]))
    torch.testing.assert_close(scripted(packed), ref(packed)[0].data)


def _traced_op_case(spec):
    """(the op entry's first output as a function, its float32 arguments, the custom op's name in a trace)."""
    from fastrnn.gated_ops import gru_recurrence, lstm_recurrence

    torch.manual_seed(0)
    h0 = torch.randn(2, 3)
    if spec.recurrence == "rnn":
        return (lambda a, b, c: fastrnn.rnn_recurrence(a, b, c)[0]), (torch.randn(4, 2, 3), h0, torch.randn(3, 3)), \
            "fastrnn::recurrence"
    if spec.recurrence == "gru":
        xw, w = torch.randn(4, 2, 9), torch.randn(9, 3)
        return (lambda a, b, c: gru_recurrence(a, b, c)[0]), (xw, h0, w), "fastrnn::gru_recurrence"
    xw4, c0, w4 = torch.randn(4, 2, 12), torch.randn(2, 3), torch.randn(12, 3)
    return (lambda a, b, c, d: lstm_recurrence(a, b, c, d)[0]), (xw4, h0, c0, w4), "fastrnn::lstm_recurrence"


@pytest.mark.parametrize("spec", params(LAYER_CLASSES, by="name"))
def test_jit_trace_of_the_ops_records_the_custom_ops(spec):
    """The op entries take the custom op under torch.jit.trace (one `traced` predicate for every family), so the
    trace holds fastrnn's op rather than an untraceable Function."""
    fn, args, op = _traced_op_case(spec)
    traced = torch.jit.trace(fn, args)
    assert op in str(traced.graph)
    torch.testing.assert_close(traced(*args), fn(*args))


class _WithH(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        return self.rnn(x, h)[0]


class _WithHC(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        return self.rnn(x, (h, h[..., :6].contiguous()))[0]


@pytest.mark.parametrize("spec", params(LAYER_CLASSES, by="name"))
def test_scripted_preamble_is_torchs(spec):
    """The one scripted forward the sequence modules share (modules._Recurrent._padded): unbatched and
    batch-first input with a given state give torch's scripted results, and bad shapes torch's scripted error."""
    torch.manual_seed(0)
    wrap = _WithHC if spec.name == "LSTM" else _WithH
    for kwargs in ({}, {"batch_first": True, "num_layers": 2}):
        ref = spec.theirs(4, 6, **kwargs)
        ours, theirs = torch.jit.script(wrap(spec.ours.from_torch(ref))), torch.jit.script(wrap(ref))
        layers, failed = ref.num_layers, 0
        for x, h in ((torch.randn(5, 4), torch.randn(layers, 6)), (torch.randn(3, 3, 4), torch.randn(layers, 3, 6)),
                     (torch.randn(5, 4), torch.randn(layers, 1, 6)), (torch.randn(2, 3, 5, 4), torch.randn(1, 6))):
            try:
                want = theirs(x, h)
            except torch.jit.Error as error:
                with pytest.raises(torch.jit.Error) as raised:
                    ours(x, h)
                assert str(error).splitlines()[-1] == str(raised.value).splitlines()[-1]
                failed += 1
                continue
            torch.testing.assert_close(ours(x, h), want)
        assert failed == 2  # a 3-D state with unbatched input, a 4-D input
