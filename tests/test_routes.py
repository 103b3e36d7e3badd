"""Which route a forward call of each module takes, situation by situation (one-skeleton.md §1; issue 18, step 1).

``ROUTES`` is the table, as data: (module, situation, route, evidence). Each row runs the situation and asserts the
evidence observed is exactly the row's, so the table doubles as documentation of where calls go, and a refactor
that sends a call elsewhere (step 5: "the route-spy table must not change") fails here, naming the row.

Evidence is what can be seen from outside the call:

- ``fastrnn::<op>``, ``aten::<op>``, ``<Name>Function``: the dispatcher ops and autograd Functions that ran,
  recorded by ``torch.profiler`` (neither a tracer nor a dispatch mode, so it changes no route), filtered to
  fastrnn's ops, fastrnn's Functions and torch's own RNN ops (``aten::rnn_tanh``, ``aten::gru``, ``aten::lstm``,
  the cells, ``aten::_cudnn_rnn``);
- ``whole:<entry>``: one of the extension's whole-call entries (``fastrnn._C.stack_if_plain``, ...), invisible
  to the profiler, took the call (a spy on the getter ``fastrnn.modules`` / ``gated_modules`` reach it through);
- ``node:<Name>``: the output's autograd node is the C++ Function ``<Name>``;
- ``reference:<cell>``: the pure-PyTorch reference recurrence ran;
- ``graph:<op>``: an op in the graph that ``torch.compile`` (dynamo, fullgraph), ``torch.export``,
  ``torch.jit.script`` / ``trace`` recorded; ``graph:call_module`` a ``torch.fx`` leaf; ``onnx:<op>`` an op of the
  ONNX model that the TorchScript exporter wrote.

Rows for CUDA skip without a GPU. To change a row, change the code's route on purpose and say so in the change.
"""

import contextlib
import functools
import io
import re

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.profiler import ProfilerActivity, profile

import fastrnn
from fastrnn import gated_reference, modules, reference

T, B, IN, H = 3, 2, 4, 5
SEQUENCE = ("RNN", "GRU", "LSTM")
CELLS = ("RNNCell", "GRUCell", "LSTMCell")

_PROFILED = re.compile(
    r"fastrnn::\w+|\w*Function$|\w*UnderTransforms$|aten::(rnn_tanh|rnn_relu|gru|lstm)(_cell)?$|aten::_cudnn_rnn$"
)
_GRAPH_OPS = re.compile(r"(fastrnn|aten)::(\w+)")
_TORCH_RNN_OPS = {"rnn_tanh", "rnn_relu", "gru", "lstm", "rnn_tanh_cell", "rnn_relu_cell", "gru_cell", "lstm_cell",
                  "_cudnn_rnn"}


# --- the table ------------------------------------------------------------------------------------------------
# (module, situation, route as one-skeleton.md §1 names it, evidence). The evidence of a CUDA row is a tuple of
# acceptable sets: the algorithm finder picks cuDNN or Triton per shape class by timing them.

_WHOLE_RNN = "whole:stack_if_plain"
_UNDER_GRAD_RNN = {"_RNNUnderTransforms", "fastrnn::recurrence", "fastrnn::rnn_fwd",
                   "fastrnn::recurrence_backward", "fastrnn::rnn_bwd"}

ROUTES = [
    # fastrnn.RNN
    ("RNN", "eager cpu no_grad", "R2 whole call in C++, no autograd", {_WHOLE_RNN}),
    ("RNN", "eager cpu training", "R2 whole call in C++, C++ StackFunction node",
     {_WHOLE_RNN, "node:StackFunction"}),
    ("RNN", "eager cpu no_grad packed", "R6 C++ stack, no autograd", {"whole:stack_forward"}),
    ("RNN", "eager cpu training packed", "R10 eager Function, cpp backend",
     {"RNNRecurrenceFunction", "fastrnn::rnn_fwd"}),
    ("RNN", "eager cpu training dropout", "R10 eager Function, cpp backend",
     {"RNNRecurrenceFunction", "fastrnn::rnn_fwd"}),
    ("RNN", "eager cpu no_grad dropout train mode", "R10 eager Function, cpp backend (per layer, with dropout)",
     {"RNNRecurrenceFunction", "fastrnn::rnn_fwd"}),
    ("RNN", "autocast cpu", "R10 eager Function in float32", {"RNNRecurrenceFunction", "fastrnn::rnn_fwd"}),
    ("RNN", "dispatch mode", "R10 eager Function (the mode sees the op)",
     {"RNNRecurrenceFunction", "fastrnn::rnn_fwd"}),
    ("RNN", "FASTRNN_BACKEND=reference", "R10 eager Function, reference backend",
     {"RNNRecurrenceFunction", "reference:rnn"}),
    ("RNN", "FASTRNN_BACKEND=reference no_grad", "R10 eager Function, reference backend",
     {"RNNRecurrenceFunction", "reference:rnn"}),
    ("RNN", "float16 cpu", "R5 torch", {"aten::rnn_tanh"}),
    ("RNN", "meta", "R5 torch", {"aten::rnn_tanh"}),
    ("RNN", "torch.func.vmap", "R8 op under torch.func",
     {"Vmapped_RNNUnderTransforms", "fastrnn::recurrence", "fastrnn::rnn_fwd"}),
    ("RNN", "torch.func.grad", "R8 op under torch.func", _UNDER_GRAD_RNN),
    ("RNN", "torch.func.jacfwd", "reference (any order, needs_any_order)", {"reference:rnn"}),
    ("RNN", "torch.compile", "R9 custom op", {"graph:fastrnn::recurrence"}),
    ("RNN", "torch.export", "R9 custom op", {"graph:fastrnn::recurrence"}),
    ("RNN", "torch.jit.script", "R1 TorchScript: the custom op", {"graph:fastrnn::recurrence"}),
    ("RNN", "torch.jit.trace", "R9 custom op", {"graph:fastrnn::recurrence"}),
    ("RNN", "torch.fx", "R3 fx leaf", {"graph:call_module"}),
    ("RNN", "onnx export", "R4 torch: the standard ONNX op", {"onnx:RNN"}),
    ("RNN", "cuda", "R7 cuDNN via finder or R10 eager Function (triton)",
     ({"aten::rnn_tanh", "aten::_cudnn_rnn"}, {"RNNRecurrenceFunction"})),
    # fastrnn.GRU
    ("GRU", "eager cpu no_grad", "whole call in C++ (stack.cpp)", {"whole:stack_if_plain"}),
    ("GRU", "eager cpu training", "whole call in C++, C++ StackFunction node",
     {"whole:stack_if_plain", "node:StackFunction"}),
    ("GRU", "eager cpu no_grad packed", "R6 C++ stack, no autograd", {"whole:stack_forward"}),
    ("GRU", "eager cpu training packed", "L5 C++ layer node", {"GRULayerFunction", "fastrnn::gru_layer_fwd"}),
    ("GRU", "eager cpu training dropout", "L5 C++ layer node", {"GRULayerFunction", "fastrnn::gru_layer_fwd"}),
    ("GRU", "eager cpu no_grad dropout train mode", "L4 C++ layer inference op (per layer, with dropout)",
     {"fastrnn::gru_infer"}),
    ("GRU", "autocast cpu", "L3 torch", {"aten::gru"}),
    ("GRU", "dispatch mode", "L9 eager Function", {"GRURecurrenceFunction", "fastrnn::gru_fwd"}),
    ("GRU", "FASTRNN_BACKEND=reference", "L9 eager Function, reference", {"GRURecurrenceFunction", "reference:gru"}),
    ("GRU", "FASTRNN_BACKEND=reference no_grad", "L8 op inference fallback, reference", {"reference:gru"}),
    ("GRU", "float16 cpu", "L3 torch", {"aten::gru"}),
    ("GRU", "meta", "L3 torch", {"aten::gru"}),
    ("GRU", "torch.func.vmap", "L6 op under torch.func",
     {"Vmapped_GRUUnderTransforms", "fastrnn::gru_recurrence", "fastrnn::gru_fwd"}),
    ("GRU", "torch.func.grad", "L6 op under torch.func",
     {"_GRUUnderTransforms", "fastrnn::gru_recurrence", "fastrnn::gru_fwd", "fastrnn::gru_recurrence_backward",
      "fastrnn::gru_bwd"}),
    ("GRU", "torch.func.jacfwd", "reference (any order, needs_any_order)", {"reference:gru"}),
    ("GRU", "torch.compile", "L7 custom op", {"graph:fastrnn::gru_recurrence"}),
    ("GRU", "torch.export", "L7 custom op", {"graph:fastrnn::gru_recurrence"}),
    ("GRU", "torch.jit.script", "L1 TorchScript: the custom op (issue 18: one deploy policy)",
     {"graph:fastrnn::gru_recurrence"}),
    ("GRU", "torch.jit.trace", "L7 custom op", {"graph:fastrnn::gru_recurrence"}),
    ("GRU", "torch.fx", "L2 fx leaf", {"graph:call_module"}),
    ("GRU", "onnx export", "L3 torch: the standard ONNX op", {"onnx:GRU"}),
    ("GRU", "cuda", "L3 torch (cuDNN)", ({"aten::gru", "aten::_cudnn_rnn"},)),
    # fastrnn.LSTM
    ("LSTM", "eager cpu no_grad", "whole call in C++ (stack.cpp)", {"whole:stack_if_plain"}),
    ("LSTM", "eager cpu training", "whole call in C++, C++ StackFunction node",
     {"whole:stack_if_plain", "node:StackFunction"}),
    ("LSTM", "eager cpu no_grad packed", "R6 C++ stack, no autograd", {"whole:stack_forward"}),
    ("LSTM", "eager cpu training packed", "L5 C++ layer node", {"LSTMLayerFunction", "fastrnn::lstm_layer_fwd"}),
    ("LSTM", "eager cpu training dropout", "L5 C++ layer node", {"LSTMLayerFunction", "fastrnn::lstm_layer_fwd"}),
    ("LSTM", "eager cpu no_grad dropout train mode", "L4 C++ layer inference op (per layer, with dropout)",
     {"fastrnn::lstm_infer"}),
    ("LSTM", "autocast cpu", "L3 torch", {"aten::lstm"}),
    ("LSTM", "dispatch mode", "L9 eager Function", {"LSTMRecurrenceFunction", "fastrnn::lstm_fwd"}),
    ("LSTM", "FASTRNN_BACKEND=reference", "L9 eager Function, reference",
     {"LSTMRecurrenceFunction", "reference:lstm"}),
    ("LSTM", "FASTRNN_BACKEND=reference no_grad", "L8 op inference fallback, reference", {"reference:lstm"}),
    ("LSTM", "float16 cpu", "L3 torch", {"aten::lstm"}),
    ("LSTM", "meta", "L3 torch", {"aten::lstm"}),
    ("LSTM", "torch.func.vmap", "L6 op under torch.func",
     {"Vmapped_LSTMUnderTransforms", "fastrnn::lstm_recurrence", "fastrnn::lstm_fwd"}),
    ("LSTM", "torch.func.grad", "L6 op under torch.func",
     {"_LSTMUnderTransforms", "fastrnn::lstm_recurrence", "fastrnn::lstm_fwd", "fastrnn::lstm_recurrence_backward",
      "fastrnn::lstm_bwd"}),
    ("LSTM", "torch.func.jacfwd", "reference (any order, needs_any_order)", {"reference:lstm"}),
    ("LSTM", "torch.compile", "L7 custom op", {"graph:fastrnn::lstm_recurrence"}),
    ("LSTM", "torch.export", "L7 custom op", {"graph:fastrnn::lstm_recurrence"}),
    ("LSTM", "torch.jit.script", "L1 TorchScript: the custom op (issue 18: one deploy policy)",
     {"graph:fastrnn::lstm_recurrence"}),
    ("LSTM", "torch.jit.trace", "L7 custom op", {"graph:fastrnn::lstm_recurrence"}),
    ("LSTM", "torch.fx", "L2 fx leaf", {"graph:call_module"}),
    ("LSTM", "onnx export", "L3 torch: the standard ONNX op", {"onnx:LSTM"}),
    ("LSTM", "cuda", "L3 torch (cuDNN)", ({"aten::lstm", "aten::_cudnn_rnn"},)),
    # fastrnn.RNNCell
    ("RNNCell", "eager cpu no_grad", "whole call in C++", {"whole:cell_if_plain"}),
    ("RNNCell", "eager cpu training", "whole call in C++, C++ node",
     {"whole:cell_if_plain", "node:RnnCellFunction"}),
    ("RNNCell", "autocast cpu", "R10 eager Function in float32", {"RNNRecurrenceFunction", "fastrnn::rnn_fwd"}),
    ("RNNCell", "dispatch mode", "R10 eager Function", {"RNNRecurrenceFunction", "fastrnn::rnn_fwd"}),
    ("RNNCell", "FASTRNN_BACKEND=reference", "R10 eager Function, reference",
     {"RNNRecurrenceFunction", "reference:rnn"}),
    ("RNNCell", "FASTRNN_BACKEND=reference no_grad", "R10 eager Function, reference",
     {"RNNRecurrenceFunction", "reference:rnn"}),
    ("RNNCell", "float16 cpu", "the cell op (direct binding of fastrnn::rnn_cell), C++ node",
     {"whole:rnn_cell_op", "node:RnnCellFunction"}),
    ("RNNCell", "meta", "the cell op (direct binding of fastrnn::rnn_cell), C++ node",
     {"whole:rnn_cell_op", "node:RnnCellFunction"}),
    ("RNNCell", "torch.func.vmap", "op under torch.func",
     {"Vmapped_RNNUnderTransforms", "fastrnn::recurrence", "fastrnn::rnn_fwd"}),
    ("RNNCell", "torch.func.grad", "op under torch.func", _UNDER_GRAD_RNN),
    ("RNNCell", "torch.func.jacfwd", "reference (any order)", {"reference:rnn"}),
    ("RNNCell", "torch.compile", "custom op", {"graph:fastrnn::recurrence"}),
    ("RNNCell", "torch.export", "custom op", {"graph:fastrnn::recurrence"}),
    ("RNNCell", "torch.jit.script", "TorchScript: the cell op", {"graph:fastrnn::rnn_cell"}),
    ("RNNCell", "torch.jit.trace", "custom op", {"graph:fastrnn::recurrence"}),
    ("RNNCell", "torch.fx", "fx leaf", {"graph:call_module"}),
    ("RNNCell", "cuda", "eager Function (triton)", ({"RNNRecurrenceFunction"},)),
    # fastrnn.GRUCell
    ("GRUCell", "eager cpu no_grad", "whole call in C++", {"whole:cell_if_plain"}),
    ("GRUCell", "eager cpu training", "whole call in C++, C++ node",
     {"whole:cell_if_plain", "node:GatedCellFunction"}),
    ("GRUCell", "autocast cpu", "torch", {"aten::gru_cell"}),
    ("GRUCell", "dispatch mode", "torch", {"aten::gru_cell"}),
    ("GRUCell", "FASTRNN_BACKEND=reference", "eager Function, reference", {"GRURecurrenceFunction", "reference:gru"}),
    ("GRUCell", "FASTRNN_BACKEND=reference no_grad", "op inference fallback, reference", {"reference:gru"}),
    ("GRUCell", "float16 cpu", "torch", {"aten::gru_cell"}),
    ("GRUCell", "meta", "torch", {"aten::gru_cell"}),
    ("GRUCell", "torch.func.vmap", "torch", {"aten::gru_cell"}),
    ("GRUCell", "torch.func.grad", "torch", {"aten::gru_cell"}),
    ("GRUCell", "torch.func.jacfwd", "reference (any order)", {"reference:gru"}),
    ("GRUCell", "torch.compile", "torch", {"graph:aten::gru_cell"}),
    ("GRUCell", "torch.export", "torch", {"graph:aten::gru_cell"}),
    ("GRUCell", "torch.jit.script", "TorchScript: the custom op", {"graph:fastrnn::gru_recurrence"}),
    ("GRUCell", "torch.jit.trace", "custom op", {"graph:fastrnn::gru_recurrence"}),
    ("GRUCell", "torch.fx", "fx leaf", {"graph:call_module"}),
    ("GRUCell", "cuda", "torch", ({"aten::gru_cell"},)),
    # fastrnn.LSTMCell
    ("LSTMCell", "eager cpu no_grad", "whole call in C++", {"whole:cell_if_plain"}),
    ("LSTMCell", "eager cpu training", "whole call in C++, C++ node",
     {"whole:cell_if_plain", "node:GatedCellFunction"}),
    ("LSTMCell", "autocast cpu", "torch", {"aten::lstm_cell"}),
    ("LSTMCell", "dispatch mode", "torch", {"aten::lstm_cell"}),
    ("LSTMCell", "FASTRNN_BACKEND=reference", "eager Function, reference",
     {"LSTMRecurrenceFunction", "reference:lstm"}),
    ("LSTMCell", "FASTRNN_BACKEND=reference no_grad", "op inference fallback, reference", {"reference:lstm"}),
    ("LSTMCell", "float16 cpu", "torch", {"aten::lstm_cell"}),
    ("LSTMCell", "meta", "torch", {"aten::lstm_cell"}),
    ("LSTMCell", "torch.func.vmap", "torch, which has no batching rule for lstm_cell (torch.nn.LSTMCell alike)",
     {"aten::lstm_cell", "raises:RuntimeError"}),
    ("LSTMCell", "torch.func.grad", "torch", {"aten::lstm_cell"}),
    ("LSTMCell", "torch.func.jacfwd", "reference (any order)", {"reference:lstm"}),
    ("LSTMCell", "torch.compile", "torch", {"graph:aten::lstm_cell"}),
    ("LSTMCell", "torch.export", "torch", {"graph:aten::lstm_cell"}),
    ("LSTMCell", "torch.jit.script", "TorchScript: the custom op", {"graph:fastrnn::lstm_recurrence"}),
    ("LSTMCell", "torch.jit.trace", "custom op", {"graph:fastrnn::lstm_recurrence"}),
    ("LSTMCell", "torch.fx", "fx leaf", {"graph:call_module"}),
    ("LSTMCell", "cuda", "torch", ({"aten::lstm_cell"},)),
]


# --- building a call --------------------------------------------------------------------------------------------


def _module(name: str, device="cpu", dtype=torch.float32, dropout: bool = False) -> nn.Module:
    torch.manual_seed(0)
    cls = getattr(fastrnn, name)
    if name in CELLS:
        return cls(IN, H, device=device, dtype=dtype)
    return cls(IN, H, num_layers=2, dropout=0.5 if dropout else 0.0, device=device, dtype=dtype)


def _input(name: str, device="cpu", dtype=torch.float32, packed: bool = False):
    torch.manual_seed(1)
    if name in CELLS:
        return torch.randn(B, IN, device=device, dtype=dtype)
    x = torch.randn(T, B, IN, device=device, dtype=dtype)
    return pack_padded_sequence(x, [T, T - 1]) if packed else x


def _first_tensor(out):
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out.data if isinstance(out, nn.utils.rnn.PackedSequence) else out


class _First(nn.Module):
    """A typed outer forward: Python cannot call a scripted RNN's overloads (torch's RNN alike)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)[0]


# --- observing a call -------------------------------------------------------------------------------------------


@pytest.fixture
def spies(monkeypatch):
    """Spies on the entries the profiler cannot see: the extension's whole-call entries (through the cached
    getters the modules call) and the reference recurrences. Returns the set the spies add to."""
    seen: set[str] = set()

    def watch_getter(owner, getter_name: str, label: str, always: bool = False) -> None:
        getter = getattr(owner, getter_name, None)
        if getter is None:
            return
        entry = getter()
        if entry is None:
            return

        def spy(*args, **kwargs):
            result = entry(*args, **kwargs)
            if always or result is not None:
                seen.add(f"whole:{label}")
            return result

        monkeypatch.setattr(owner, getter_name, lambda: spy)

    watch_getter(modules, "_stack_if_plain", "stack_if_plain")
    watch_getter(modules, "_cell_if_plain", "cell_if_plain")
    watch_getter(modules, "_stack_forward", "stack_forward", always=True)
    watch_getter(modules, "_rnn_cell_op", "rnn_cell_op", always=True)

    def watch_function(owner, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def spy(*args, **kwargs):
            seen.add(label)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)

    watch_function(reference, "rnn_recurrence_ref", "reference:rnn")
    watch_function(gated_reference, "gru_recurrence_ref", "reference:gru")
    watch_function(gated_reference, "lstm_recurrence_ref", "reference:lstm")
    return seen


def _eager(call, seen: set[str]) -> set[str]:
    """Runs ``call()`` under the profiler; the evidence it leaves."""
    out = None
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        try:
            out = call()
        except RuntimeError as error:
            seen = seen | {f"raises:{type(error).__name__}"}
    found = {event.name for event in prof.events() if _PROFILED.fullmatch(event.name)}
    node = getattr(_first_tensor(out), "grad_fn", None)
    cpp = re.search(r"CppNode<.*::(\w+)>$", node.name()) if node is not None else None
    if cpp:
        found.add(f"node:{cpp.group(1)}")
    return found | seen


def _fx_graph_ops(graph) -> set[str]:
    found = set()
    for node in graph.nodes:
        if node.op == "call_module":
            found.add("graph:call_module")
        elif node.op == "call_function":
            target = node.target
            if isinstance(target, torch._ops.OpOverload):
                found.add(f"graph:{target._schema.name}")
            elif isinstance(target, torch._ops.OpOverloadPacket):
                found.add(f"graph:{target._qualified_op_name}")
            elif getattr(target, "__name__", None) in _TORCH_RNN_OPS:
                found.add(f"graph:aten::{target.__name__}")
    return {op for op in found if "fastrnn::" in op or op.split("::")[-1] in _TORCH_RNN_OPS or "call_module" in op}


def _jit_graph_ops(program) -> set[str]:
    text = str(program.inlined_graph)
    return {f"graph:{lib}::{op}" for lib, op in _GRAPH_OPS.findall(text) if lib == "fastrnn" or op in _TORCH_RNN_OPS}


def _compiled_graph_ops(module, x) -> set[str]:
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm.graph)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(module, backend=capture, fullgraph=True)(x)
    torch._dynamo.reset()
    return set().union(*(_fx_graph_ops(g) for g in graphs))


def _onnx_ops(module, x) -> set[str]:
    onnx = pytest.importorskip("onnx")
    buffer = io.BytesIO()
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=17)
    model = onnx.load_from_string(buffer.getvalue())
    return {f"onnx:{node.op_type}" for node in model.graph.node if node.op_type in ("RNN", "GRU", "LSTM")}


def _functional(module):
    params = {k: v.detach() for k, v in module.named_parameters()}
    return lambda x: _first_tensor(torch.func.functional_call(module, params, (x,)))


def observe(name: str, situation: str, seen: set[str], monkeypatch) -> set[str]:
    """Runs ``situation`` for module ``name``; the evidence of the route it took."""
    if situation == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        module, x = _module(name, device="cuda"), _input(name, device="cuda")
        return _eager(lambda: module(x), seen)
    if situation.startswith("eager cpu"):
        module = _module(name, dropout="dropout" in situation)
        x = _input(name, packed="packed" in situation)
        if "no_grad" in situation:
            module.train("dropout" in situation)  # dropout only acts in training mode
            with torch.no_grad():
                return _eager(lambda: module(x), seen)
        return _eager(lambda: module(x), seen)
    if situation == "autocast cpu":
        module, x = _module(name), _input(name)
        with torch.autocast("cpu"):
            return _eager(lambda: module(x), seen)
    if situation == "dispatch mode":
        from torch.utils.flop_counter import FlopCounterMode

        module, x = _module(name), _input(name)
        with FlopCounterMode(display=False):
            return _eager(lambda: module(x), seen)
    if situation.startswith("FASTRNN_BACKEND=reference"):
        monkeypatch.setenv("FASTRNN_BACKEND", "reference")
        module, x = _module(name), _input(name)
        with torch.no_grad() if "no_grad" in situation else contextlib.nullcontext():
            return _eager(lambda: module(x), seen)
    if situation == "float16 cpu":
        module, x = _module(name, dtype=torch.float16), _input(name, dtype=torch.float16)
        return _eager(lambda: module(x), seen)
    if situation == "meta":
        module, x = _module(name, device="meta"), _input(name, device="meta")
        return _eager(lambda: module(x), seen)
    if situation == "torch.func.vmap":
        module, x = _module(name), _input(name)
        xs = torch.stack([x, x])
        return _eager(lambda: torch.func.vmap(_functional(module))(xs), seen)
    if situation == "torch.func.grad":
        module, x = _module(name), _input(name)
        f = _functional(module)
        return _eager(lambda: torch.func.grad(lambda x: f(x).sum())(x), seen)
    if situation == "torch.func.jacfwd":
        module, x = _module(name), _input(name)
        return _eager(lambda: torch.func.jacfwd(_functional(module))(x), seen)
    module, x = _module(name), _input(name)
    if situation == "torch.compile":
        return _compiled_graph_ops(module, x)
    if situation == "torch.export":
        return _fx_graph_ops(torch.export.export(module, (x,)).graph)
    if situation == "torch.jit.script":
        return _jit_graph_ops(torch.jit.script(_First(module) if name in SEQUENCE else module))
    if situation == "torch.jit.trace":
        return _jit_graph_ops(torch.jit.trace(module, (x,)))
    if situation == "torch.fx":
        return _fx_graph_ops(torch.fx.symbolic_trace(_First(module)).graph)
    if situation == "onnx export":
        return _onnx_ops(module.eval(), x)
    raise ValueError(f"no such situation: {situation}")


@pytest.mark.parametrize(
    ("name", "situation", "route", "evidence"),
    [pytest.param(*row, id=f"{row[0]}-{row[1]}") for row in ROUTES],
)
def test_route(name, situation, route, evidence, spies, monkeypatch):
    monkeypatch.delenv("FASTRNN_BACKEND", raising=False)
    found = observe(name, situation, spies, monkeypatch)
    accepted = evidence if isinstance(evidence, tuple) else (evidence,)
    assert found in accepted, f"{name}, {situation}: expected route {route!r} ({evidence}), observed {sorted(found)}"


def test_table_covers_every_module_and_each_row_once():
    keys = [(name, situation) for name, situation, _, _ in ROUTES]
    assert len(keys) == len(set(keys))
    assert {name for name, _ in keys} == set(SEQUENCE + CELLS)
