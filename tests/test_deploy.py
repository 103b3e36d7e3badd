"""Every place a torch.nn.RNN goes, fastrnn goes the same way: ONNX (both exporters, run in onnxruntime),
TorchScript (script and trace, saved and loaded in a fresh process), torch.fx, checkpointing, compile without
recompiles, FLOP counting and dynamic quantization. Each test runs the same code on torch's module first."""

import io
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


class Model(nn.Module):
    """Linear -> RNN -> Linear, optionally over padded sequences packed by their lengths."""

    def __init__(self, rnn_cls, packed=False, **config):
        super().__init__()
        self.packed = packed
        self.batch_first = config.get("batch_first", False)
        self.rnn = rnn_cls(4, 6, **config)
        self.head = nn.Linear(6 * (2 if config.get("bidirectional") else 1), 3)

    def forward(self, x, lengths):
        if self.packed:
            out, h_n = self.rnn(pack_padded_sequence(x, lengths, batch_first=self.batch_first))
            out, _ = pad_packed_sequence(out, batch_first=self.batch_first, total_length=x.size(int(self.batch_first)))
        else:
            out, h_n = self.rnn(x)
        return self.head(out), h_n


def _pair(packed=False, **config):
    torch.manual_seed(0)
    ref = Model(nn.RNN, packed, **config).eval()
    ours = Model(fastrnn.RNN, packed, **config).eval()
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
@pytest.mark.parametrize("config", CONFIGS)
def test_onnx_export_runs_in_onnxruntime_like_torch(config, dynamo):
    config = dict(config)
    packed = config.pop("packed", False)
    ref, ours = _pair(packed, **config)
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
        assert "RNN" in exported["fastrnn"]  # the standard ONNX RNN op


def _fresh_process(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("config", CONFIGS[:3])
def test_torchscript_saves_and_loads_in_a_fresh_process(tmp_path, how, config):
    ref, ours = _pair(**config)
    args = _inputs(config.get("batch_first", False))
    compiled = torch.jit.script(ours) if how == "script" else torch.jit.trace(ours, args)
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


@pytest.mark.parametrize("cls", ["RNN", "RNNCell"])
def test_torchscript_script_trains_like_eager(cls):
    torch.manual_seed(0)
    if cls == "RNN":
        ref = nn.RNN(4, 6, 2, bidirectional=True)
        x = torch.randn(5, 3, 4, requires_grad=True)
    else:
        ref = nn.RNNCell(4, 6)
        x = torch.randn(3, 4, requires_grad=True)
    ours = getattr(fastrnn, cls).from_torch(ref)
    # A scripted module with overloaded forwards (torch's RNN too) is called from scripted code, not Python.
    scripted = torch.jit.script(_Outputs(ours))
    grads = []
    for module in (_Outputs(ref), scripted):
        grads.append(torch.autograd.grad(module(x).pow(2).sum(), [x, *module.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_fx_symbolic_trace_keeps_rnn_and_cell_as_leaves():
    class Net(nn.Module):
        def __init__(self, rnn, cell):
            super().__init__()
            self.rnn, self.cell = rnn, cell

        def forward(self, x):
            out, h_n = self.rnn(x)
            return self.cell(out[-1], h_n[0])

    for rnn, cell in ((nn.RNN(4, 6), nn.RNNCell(6, 6)), (fastrnn.RNN(4, 6), fastrnn.RNNCell(6, 6))):
        net = Net(rnn, cell)
        graph = torch.fx.symbolic_trace(net)
        modules = [n.target for n in graph.graph.nodes if n.op == "call_module"]
        assert modules == ["rnn", "cell"]
        x = torch.randn(5, 2, 4)
        torch.testing.assert_close(graph(x), net(x))


@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non_reentrant", "reentrant"])
@pytest.mark.parametrize("cls", ["RNN", "RNNCell"])
def test_checkpoint_matches_plain_backward(cls, use_reentrant):
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    module = fastrnn.RNN(4, 6, 2, bidirectional=True) if cls == "RNN" else fastrnn.RNNCell(4, 6)
    x = torch.randn(5, 3, 4) if cls == "RNN" else torch.randn(3, 4)
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
def test_each_saved_tensor_is_unpacked_once_per_backward(use_backend, backend):
    use_backend(backend)
    module = fastrnn.RNN(4, 6, 2, bidirectional=True)
    packs, unpacks = [], []

    def pack(t):
        packs.append(t)
        return len(packs) - 1

    def unpack(i):
        unpacks.append(i)
        return packs[i]

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out, h_n = module(torch.randn(5, 3, 4, requires_grad=True))
    (out.sum() + h_n.sum()).backward()
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


def test_compile_packed_input_does_not_recompile_per_length():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(fastrnn.RNN(4, 6, bidirectional=True), backend=counter)  # breaks like torch's
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


def test_flop_counter_counts_the_cell_like_torch():
    from torch.utils.flop_counter import FlopCounterMode

    totals = []
    for cell in (nn.RNNCell(4, 6), fastrnn.RNNCell(4, 6)):
        counter = FlopCounterMode(display=False)
        with counter:
            cell(torch.randn(3, 4, requires_grad=True)).sum().backward()
        totals.append(counter.get_total_flops())
    assert totals[0] == totals[1] > 0


def test_dynamic_quantization_makes_the_cell_int8():
    from torch.ao.nn.quantized import dynamic as nnqd

    torch.manual_seed(0)
    model = nn.Sequential(fastrnn.RNNCell(4, 6), nn.Linear(6, 2))
    x = torch.randn(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for quantized in (
            torch.ao.quantization.quantize_dynamic(model, {fastrnn.RNNCell, nn.Linear}),
            fastrnn.quantize_dynamic(model, {nn.RNNCell, nn.Linear}),  # torch's classes cover the drop-ins
            fastrnn.quantize_dynamic(model),  # the default spec, as torch's
        ):
            assert isinstance(quantized[0], nnqd.RNNCell) and isinstance(quantized[1], nnqd.Linear)
            expected = nn.Sequential(model[0].to_torch(), model[1])
            torch.testing.assert_close(quantized(x), expected(x), rtol=0.05, atol=0.02)
