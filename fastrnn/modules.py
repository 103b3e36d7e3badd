"""The six drop-in modules: ``RNN``, ``GRU``, ``LSTM`` over :class:`_Recurrent`, and ``RNNCell``, ``GRUCell``,
``LSTMCell`` over :class:`_Cell`.

They subclass ``torch.nn.RNNBase`` / ``torch.nn.RNNCellBase`` (not ``torch.nn.RNN``, whose instances dynamo refuses
under ``fullgraph=True``), so parameter names, order, init, ``state_dict``, ``repr``, pickling and the argument
checks are torch's own. Weights are read from the module at every call; nothing is cached.

Each base holds the one forward of its kind, written once for every cell, TorchScript-compatible (the states as a
list: one tensor, or LSTM's ``h, c``), with torch's checks and messages in torch's order. The public classes add
their ``__init__`` and a TorchScript-typed ``forward`` (torch keeps one per class: TorchScript types overloads per
class). Where each call goes (the routes): ARCHITECTURE.md.
"""

import functools
import importlib
from typing import Callable, Optional, overload

import torch
from torch import _VF, Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from fastrnn import functional
from fastrnn.backends import (
    CppBackend,
    _eager_cpp_call,
    forced_backend,
    needs_any_order,
    stack_forward_takes,
)
from fastrnn.conversion import TorchConversion

# The cell kinds of the extension's whole-call entries (csrc/whole_call.h).
_KIND = {"RNN_TANH": 0, "RNN_RELU": 1, "GRU": 3, "LSTM": 4}
_ELMAN_KIND = {"tanh": 0, "relu": 1}
_TORCH_LAYER = {"RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu, "GRU": _VF.gru, "LSTM": _VF.lstm}


def _policy_takes(input: Tensor, states: list[Tensor], weights: list[Tensor], elman: bool) -> bool:
    """Whether fastrnn's op runs this call, by the family's policy: the Elman op takes CPU or CUDA tensors on one
    device in one floating dtype (any mix under autocast, which casts); the GRU / LSTM ops (no GPU kernels yet, no
    autocast rules) CPU float32 / float64 only. Anything else (meta or other devices, mixed devices or dtypes)
    runs torch's own implementation, which then gives torch's result, or raises torch's exact error."""
    device, dtype = input.device, input.dtype
    if elman:
        if device.type not in ("cpu", "cuda") or not dtype.is_floating_point:
            return False
        same_dtype = not torch.is_autocast_enabled(device.type)
        if device.type == "cpu" and same_dtype and dtype not in CppBackend.dtypes and not forced_backend():
            return False  # 16-bit on the CPU: fastrnn has no kernel for it, torch's own is faster than the reference
    else:
        if device.type != "cpu" or dtype not in CppBackend.dtypes or torch.is_autocast_enabled("cpu"):
            return False
        same_dtype = True
    for t in (*states, *weights):
        if t.device != device or (same_dtype and t.dtype != dtype):
            return False
    return True


def _packed_fast_path_takes(batch_sizes: Tensor, rows: int) -> bool:
    """The op's contract for packed input: 1-D int64 CPU batch sizes, positive, non-increasing, summing to the
    rows of the data. torch runs some hand-made PackedSequences outside it (a trailing 0, a sum short of the
    rows) and rejects others with its own errors: those calls go to torch's implementation."""
    if batch_sizes.dim() != 1 or batch_sizes.dtype != torch.int64 or batch_sizes.device.type != "cpu":
        return False
    if torch.compiler.is_compiling():  # values are data to a tracer; the op checks them when it runs
        return True
    sizes = batch_sizes.tolist()
    return len(sizes) > 0 and sizes[-1] > 0 and sum(sizes) == rows and all(a >= b for a, b in zip(sizes, sizes[1:]))


def _op_takes(input: Tensor, states: list[Tensor], weights: list[Tensor], batch_sizes: Optional[Tensor],
              elman: bool, time_dim: int = 0) -> bool:
    """:func:`_policy_takes`, on a 3-D input with a non-empty sequence (torch raises for an empty one; the gated
    ops also take no empty batch), or packed data with well-formed batch sizes."""
    if not _policy_takes(input, states, weights, elman):
        return False
    if batch_sizes is None:
        return input.dim() == 3 and input.size(time_dim) > 0 and (elman or input.size(1 - time_dim) > 0)
    return _packed_fast_path_takes(batch_sizes, input.size(0))


def _built(name: str, fallback: Callable[[], object] = lambda: None) -> Callable[[], object]:
    """A getter of the built extension's direct binding ``fastrnn._C.<name>``, resolved once (a few microseconds
    less a call than the generic op call); ``fallback()`` when the library was compiled on first use."""

    @functools.cache
    def get():
        try:
            return getattr(importlib.import_module("fastrnn._C"), name)
        except (ImportError, AttributeError):
            return fallback()

    return get


# The whole RNN / GRU / LSTM call (csrc/stack.cpp) and the whole RNNCell / GRUCell / LSTMCell step (csrc/cell.cpp),
# None without the built extension; the Elman step op fastrnn::rnn_cell; the no-autograd stack forward of every
# cell (csrc/stack.cpp), else the layer loop.
_stack_if_plain = _built("stack_if_plain")
_cell_if_plain = _built("cell_if_plain")
_rnn_cell_op = _built("rnn_cell", lambda: torch.ops.fastrnn.rnn_cell.default)
_stack_forward = _built("stack_forward", lambda: _stack_forward_in_python)
_MODE = {kind: mode for mode, kind in _KIND.items()}


def _stack_forward_in_python(kind, input, hx, cx, weights, batch_sizes, has_biases, num_layers, bidirectional, proj):
    states = [hx] if cx is None else [hx, cx]
    proj_size = hx.size(-1) if proj else 0
    output, states = functional.stack(_MODE[kind], input, states, weights, has_biases, num_layers, 0.0, False,
                                      bidirectional, proj_size, batch_sizes)
    return output, states[0], states[1] if cx is not None else None


def _exporting_onnx() -> bool:
    """torch.onnx.is_in_onnx_export() costs ~2.5 us; both exporters trace (jit trace or dynamo), so plain eager
    calls skip it."""
    traced = torch._C._get_tracing_state() is not None or torch.compiler.is_compiling()
    return traced and torch.onnx.is_in_onnx_export()


def _fx_leaf(module: nn.Module, input, hx):
    """Under torch.fx.symbolic_trace the module is one ``call_module`` node, as torch's own RNNs are (fx
    treats only modules defined in torch.nn as leaves by default)."""
    tracer = input.tracer
    args = (input,) if hx is None else (input, hx)
    return tracer.create_proxy("call_module", tracer.path_of_module(module), args, {})


def _permute(state: Tensor, permutation: Optional[Tensor]) -> Tensor:
    return state if permutation is None else state.index_select(1, permutation)


def weights_in_use(module: nn.RNNBase) -> list[Tensor]:
    """The tensors an RNN module's call uses, in ``_flat_weights_names`` order: read from ``_parameters`` (a
    dict lookup; ``nn.Module.__getattr__`` per name cost ~1 us each), else by attribute, which is where
    parametrized or replaced weights are (torch reads them by attribute every call too)."""
    params = module._parameters
    try:
        return [params[name] for name in module._flat_weights_names]  # type: ignore[misc]
    except KeyError:
        return [getattr(module, name) for name in module._flat_weights_names]


class _Recurrent(TorchConversion, nn.RNNBase):
    """What RNN, GRU and LSTM share: the eager call (:meth:`_eager_forward`), torch's preamble for padded and packed
    input (:meth:`_padded`, :meth:`_packed`), the layers (:meth:`_layers`), weights read at every call and a
    silent ``flatten_parameters``."""

    _torch_class: type[nn.RNNBase]

    def flatten_parameters(self) -> None:
        """Does nothing: fastrnn reads the parameters where they are at every call."""

    def _weights(self) -> list[Tensor]:
        return weights_in_use(self)

    @torch.jit.unused
    def _eager_forward(self, input, hx):
        """The whole call in one C++ call (csrc/stack.cpp) when it is a plain eager call on CPU tensors (a tiny
        call is otherwise mostly Python): inference and training (one C++ autograd node) for every cell; the C++
        side declines (None) anything not plainly well-formed. Else: under torch.fx one leaf node;
        a state that is not a tensor (an ``(h, c)`` pair for LSTM) goes to torch's own forward, which raises
        torch's error; else torch's preamble and checks, then fastrnn's layers or torch's."""
        lstm = self.mode == "LSTM"
        if type(input) is Tensor and (self.dropout == 0 or not self.training) and _eager_cpp_call(input):
            run = _stack_if_plain()
            pair = hx is None or (type(hx) is tuple and len(hx) == 2)
            if run is not None and (pair or not lstm):
                h, c = (hx, None) if not lstm else (None, None) if hx is None else hx
                out = run(_KIND[self.mode], input, h, c, weights_in_use(self), self.bias, self.num_layers,
                          self.bidirectional, self.batch_first, self.input_size, self.hidden_size, self.proj_size)
                if out is not None:
                    return out[0], ((out[1], out[2]) if lstm else out[1])
        if type(input) is not Tensor and isinstance(input, torch.fx.Proxy):
            return _fx_leaf(self, input, hx)
        if hx is not None and not (isinstance(hx, tuple) and len(hx) == 2 if lstm else isinstance(hx, Tensor)):
            return self._torch_class.forward(self, input, hx)
        states = None if hx is None else list(hx) if lstm else [hx]
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            output, states = self._packed(data, batch_sizes, sorted_indices, unsorted_indices, states)
            output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
        else:
            output, states = self._padded(input, states)
        return output, ((states[0], states[1]) if lstm else states[0])

    def _zero_states(self, batch: int, like: Tensor) -> list[Tensor]:
        layers = self.num_layers * (2 if self.bidirectional else 1)
        h = torch.zeros(layers, batch, self.proj_size if self.proj_size > 0 else self.hidden_size,
                        dtype=like.dtype, device=like.device)
        if self.mode != "LSTM":
            return [h]
        return [h, torch.zeros(layers, batch, self.hidden_size, dtype=like.dtype, device=like.device)]

    def _check_states(self, input: Tensor, states: list[Tensor], batch_sizes: Optional[Tensor]) -> None:
        """``check_forward_args`` of torch's class (LSTM's checks both states, with its own messages)."""
        self.check_input(input, batch_sizes)
        expected = self.get_expected_hidden_size(input, batch_sizes)
        if self.mode != "LSTM":
            self.check_hidden_size(states[0], expected)
            return
        self.check_hidden_size(states[0], expected, "Expected hidden[0] size {}, got {}")
        self.check_hidden_size(states[1], (expected[0], expected[1], self.hidden_size),
                               "Expected hidden[1] size {}, got {}")

    def _padded(self, input: Tensor, hx: Optional[list[Tensor]]) -> tuple[Tensor, list[Tensor]]:
        """torch's forward for a padded or unbatched ``input`` (``(L, N, H_in)``, ``(N, L, H_in)`` batch-first,
        ``(L, H_in)``): the same checks and messages (torch's own differ by class), zero states when ``hx`` is
        None. Returns the output and the final states shaped like the input's."""
        lstm = self.mode == "LSTM"
        if input.dim() not in (2, 3):
            unit = " tensor" if self.mode.startswith("RNN") else ""
            name = "RNN" if self.mode.startswith("RNN") else self.mode
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D{unit} instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        if hx is None:
            states = self._zero_states(input.size(batch_dim), input)
        else:
            rank = 3 if is_batched else 2
            kind = "batched 3" if is_batched else "unbatched 2"
            if lstm and (hx[0].dim() != rank or hx[1].dim() != rank):
                raise RuntimeError(f"For {kind}-D input, hx and cx should also be {rank}-D but got "
                                   f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            if not lstm and hx[0].dim() != rank:
                raise RuntimeError(f"For {kind}-D input, hx should also be {rank}-D but got {hx[0].dim()}-D tensor")
            states = [h.unsqueeze(1) for h in hx] if not is_batched else hx
        self._check_states(input, states, None)
        output, states = self._layers(input, states, None)
        if not is_batched:
            return output.squeeze(batch_dim), [s.squeeze(1) for s in states]
        return output, states

    def _packed(self, data: Tensor, batch_sizes: Tensor, sorted_indices: Optional[Tensor],
                unsorted_indices: Optional[Tensor], hx: Optional[list[Tensor]]) -> tuple[Tensor, list[Tensor]]:
        """torch's forward for a PackedSequence's fields; returns the output data and the final states."""
        if hx is None:
            layers = self.num_layers * (2 if self.bidirectional else 1)
            # batch_sizes[0] as torch passes it (a tracer never reads the value); TorchScript takes it in a size
            states = [torch.zeros(layers, batch_sizes[0], self.proj_size if self.proj_size > 0 else self.hidden_size,
                                  dtype=data.dtype, device=data.device)]
            if self.mode == "LSTM":
                states.append(torch.zeros(layers, batch_sizes[0], self.hidden_size, dtype=data.dtype,
                                          device=data.device))
        else:
            states = [_permute(h, sorted_indices) for h in hx]
        if self.mode != "LSTM" or torch.jit.is_scripting():  # torch's LSTM checks packed input in _VF.lstm
            self._check_states(data, states, batch_sizes)
        output, states = self._layers(data, states, batch_sizes)
        return output, [_permute(s, unsorted_indices) for s in states]

    def _layers(self, input: Tensor, states: list[Tensor], batch_sizes: Optional[Tensor]
                ) -> tuple[Tensor, list[Tensor]]:
        """The layers on checked arguments: fastrnn's where its op takes the call, else torch's own, which also
        runs while an ONNX exporter traces (so it emits what it emits for torch's module: the standard ONNX
        RNN / GRU / LSTM op). TorchScript runs fastrnn's ops, as the eager call does."""
        if torch.jit.is_scripting():
            weights = self._flat_weights
        else:
            weights = weights_in_use(self)
            if _exporting_onnx() or not self._fast_path_takes(input, states, weights, batch_sizes):
                return self._torch_layers(input, states, weights, batch_sizes)
        if batch_sizes is None and self.batch_first:
            input = input.transpose(0, 1)
        output, states = self._stack(input, states, weights, batch_sizes)
        if batch_sizes is None and self.batch_first:
            output = output.transpose(0, 1)
        return output, states

    @torch.jit.unused
    def _torch_layers(self, input: Tensor, states: list[Tensor], weights: list[Tensor],
                      batch_sizes: Optional[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """torch's own computation on this module's parameters, for the calls the op does not take."""
        run, hx = _TORCH_LAYER[self.mode], states if self.mode == "LSTM" else states[0]
        if batch_sizes is None:
            result = run(input, hx, weights, self.bias, self.num_layers, self.dropout, self.training,
                         self.bidirectional, self.batch_first)
        else:
            result = run(input, batch_sizes, hx, weights, self.bias, self.num_layers, self.dropout, self.training,
                         self.bidirectional)
        return result[0], list(result[1:])

    @torch.jit.unused
    def _fast_path_takes(self, input: Tensor, states: list[Tensor], weights: list[Tensor],
                         batch_sizes: Optional[Tensor]) -> bool:
        elman = self.mode.startswith("RNN")
        if not _op_takes(input, states, weights, batch_sizes, elman, 1 if self.batch_first else 0):
            return False
        if batch_sizes is not None and self.mode == "LSTM":  # torch's _VF.lstm raises its own error here
            try:
                self._check_states(input, states, batch_sizes)
            except RuntimeError:
                return False
        return True

    def _stack(self, input: Tensor, states: list[Tensor], weights: list[Tensor], batch_sizes: Optional[Tensor]
               ) -> tuple[Tensor, list[Tensor]]:
        """The layer loop on time-major input; a call that nothing differentiates (and no dropout in training)
        runs its whole stack in one C++ call."""
        if not torch.jit.is_scripting():
            if (self.dropout == 0 or not self.training) and stack_forward_takes(input, states, weights):
                output, h, c = _stack_forward()(_KIND[self.mode], input, states[0], states[1] if len(states) > 1
                                                else None, weights, batch_sizes, self.bias, self.num_layers,
                                                self.bidirectional, self.proj_size > 0)
                return output, [h] if c is None else [h, c]
        return functional.stack(self.mode, input, states, weights, self.bias, self.num_layers, self.dropout,
                                self.training, self.bidirectional, self.proj_size, batch_sizes)

    def _config(self) -> tuple[tuple, dict]:
        first = next(self.parameters())
        elman = [self.nonlinearity] if self.mode.startswith("RNN") else []  # self may be torch's module
        args = (self.input_size, self.hidden_size, self.num_layers, *elman, self.bias, self.batch_first,
                self.dropout, self.bidirectional)
        kwargs = {"device": first.device, "dtype": first.dtype}
        if self.mode == "LSTM":
            kwargs["proj_size"] = self.proj_size
        return args, kwargs


class RNN(_Recurrent):
    r"""Drop-in :class:`torch.nn.RNN`: ``h_t = \tanh(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh})``.

    Same arguments as :class:`torch.nn.RNN`: ``input_size, hidden_size, num_layers=1, nonlinearity='tanh',
    bias=True, batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None``.

    Inputs: ``input`` ``(L, N, H_in)``, ``(N, L, H_in)`` with ``batch_first``, ``(L, H_in)`` unbatched, or a
    :class:`~torch.nn.utils.rnn.PackedSequence`; ``hx`` ``(D * num_layers, N, H_out)`` or
    ``(D * num_layers, H_out)`` unbatched, zeros if omitted.

    Outputs: ``output`` ``(L, N, D * H_out)`` (batch-first / unbatched / packed like the input) and
    ``h_n`` shaped like ``hx``.
    """

    _torch_class = nn.RNN

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(mode, *args, **kwargs)

    @overload  # type: ignore[override]
    @torch._jit_internal._overload_method
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        pass

    @overload
    @torch._jit_internal._overload_method
    def forward(self, input: PackedSequence, hx: Optional[Tensor] = None) -> tuple[PackedSequence, Tensor]:
        pass

    def forward(self, input, hx=None):  # noqa: F811  (the overloads above type it for TorchScript)
        if not torch.jit.is_scripting():
            return self._eager_forward(input, hx)
        if isinstance(input, PackedSequence):
            output, states = self._packed(input.data, input.batch_sizes, input.sorted_indices,
                                          input.unsorted_indices, None if hx is None else [hx])
            return PackedSequence(output, input.batch_sizes, input.sorted_indices, input.unsorted_indices), states[0]
        output, states = self._padded(input, None if hx is None else [hx])
        return output, states[0]


class GRU(_Recurrent):
    r"""Drop-in :class:`torch.nn.GRU`: ``r = \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr})``, ``z`` likewise,
    ``n = \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn}))``, ``h' = (1 - z) \odot n + z \odot h``.

    Same arguments as :class:`torch.nn.GRU`: ``input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None``.

    Inputs and outputs as for :class:`RNN`.
    """

    _torch_class = nn.GRU

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)

    @overload  # type: ignore[override]
    @torch._jit_internal._overload_method
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        pass

    @overload
    @torch._jit_internal._overload_method
    def forward(self, input: PackedSequence, hx: Optional[Tensor] = None) -> tuple[PackedSequence, Tensor]:
        pass

    def forward(self, input, hx=None):  # noqa: F811  (the overloads above type it for TorchScript)
        if not torch.jit.is_scripting():
            return self._eager_forward(input, hx)
        if isinstance(input, PackedSequence):
            output, states = self._packed(input.data, input.batch_sizes, input.sorted_indices,
                                          input.unsorted_indices, None if hx is None else [hx])
            return PackedSequence(output, input.batch_sizes, input.sorted_indices, input.unsorted_indices), states[0]
        output, states = self._padded(input, None if hx is None else [hx])
        return output, states[0]


class LSTM(_Recurrent):
    r"""Drop-in :class:`torch.nn.LSTM`: gates ``i, f, g, o`` from ``W_{ih} x + b_{ih} + W_{hh} h + b_{hh}``,
    ``c' = f \odot c + i \odot g``, ``h' = o \odot \tanh(c')``, projected ``h' W_{hr}^T`` with ``proj_size``.

    Same arguments as :class:`torch.nn.LSTM`: ``input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None``.

    Inputs: ``input`` as for :class:`RNN`; ``hx = (h_0, c_0)``, ``h_0`` ``(D * num_layers, N, H_out)``,
    ``c_0`` ``(D * num_layers, N, H_cell)`` (no N when unbatched), zeros if omitted; ``H_out`` is
    ``proj_size`` when set, else ``H_cell = hidden_size``.

    Outputs: ``output`` ``(L, N, D * H_out)`` (like the input) and ``(h_n, c_n)`` shaped like ``hx``.
    """

    _torch_class = nn.LSTM

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    # torch.nn.LSTM's own (its forward runs this module's malformed calls): the cell state has hidden_size features.
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden

    @overload  # type: ignore[override]
    @torch._jit_internal._overload_method
    def forward(
        self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        pass

    @overload
    @torch._jit_internal._overload_method
    def forward(
        self, input: PackedSequence, hx: Optional[tuple[Tensor, Tensor]] = None
    ) -> tuple[PackedSequence, tuple[Tensor, Tensor]]:
        pass

    def forward(self, input, hx=None):  # noqa: F811  (the overloads above type it for TorchScript)
        if not torch.jit.is_scripting():
            return self._eager_forward(input, hx)
        given: Optional[list[Tensor]] = None if hx is None else [hx[0], hx[1]]
        if isinstance(input, PackedSequence):
            output, states = self._packed(input.data, input.batch_sizes, input.sorted_indices,
                                          input.unsorted_indices, given)
            packed = PackedSequence(output, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
            return packed, (states[0], states[1])
        output, states = self._padded(input, given)
        return output, (states[0], states[1])


class _Cell(TorchConversion, nn.RNNCellBase):
    """What RNNCell, GRUCell and LSTMCell share: the eager step (:meth:`_eager_forward`), torch's preamble
    (:meth:`_step`) and the configuration. A plain eager CPU step runs in one C++ call with one C++ autograd node
    (csrc/cell.cpp); anything that call declines takes torch's checks, then the family's policy: the Elman step
    runs the op (the one-step C++ cell op, else the layer op); a GRU / LSTM step runs the layer op only under
    ``FASTRNN_BACKEND``, torch.jit.trace (which records fastrnn's op) or for higher-order / forward-mode
    derivatives under a transform (:func:`fastrnn.backends.needs_any_order`), else torch's cell kernel, which is
    faster for one step than the layer op with its per-call weight layout (benchmarks/NOTES.md)."""

    __constants__ = ["input_size", "hidden_size", "bias", "_states"]
    _torch_class: type[nn.RNNCellBase]
    _states = 1  # LSTMCell: h and c
    _cell_kind: Optional[int] = None  # the extension's kind (_KIND) of a gated cell; the Elman one's: nonlinearity

    @torch.jit.unused
    def _eager_forward(self, input, hx):
        """The step in one C++ call with one C++ autograd node (csrc/cell.cpp: ``cell_if_plain``) when it is a
        plain eager CPU call (reading four parameters through nn.Module.__getattr__ alone cost more than the
        step); the C++ side declines (None) anything else. Else: under torch.fx one leaf node; LSTM's state
        that is not an ``(h, c)`` pair goes to torch's own forward, which raises torch's error; else torch's
        preamble and checks (:meth:`_step`)."""
        if type(input) is Tensor:
            if _eager_cpp_call(input):  # first: under dynamo the cached getter below would be traced
                run = _cell_if_plain()
                kind = self._cell_kind if self._cell_kind is not None else _ELMAN_KIND.get(self.nonlinearity, -1)
                if run is not None and (kind != 4 or hx is None or (type(hx) is tuple and len(hx) == 2)):
                    h, c = (hx, None) if kind != 4 else (None, None) if hx is None else hx
                    out = run(kind, input, h, c, self._parameters)
                    if out is not None:
                        return out
        elif isinstance(input, torch.fx.Proxy):
            return _fx_leaf(self, input, hx)
        if self._states == 2 and hx is not None and not (isinstance(hx, tuple) and len(hx) == 2):
            return self._torch_class.forward(self, input, hx)  # torch's own errors for a malformed state
        states = self._step(input, None if hx is None else list(hx) if self._states == 2 else [hx])
        return (states[0], states[1]) if self._states == 2 else states[0]

    def _step(self, input: Tensor, hx: Optional[list[Tensor]]) -> list[Tensor]:
        """torch's forward for input ``(N, H_in)`` or ``(H_in)`` and ``hx`` as a list of the cell's states
        (``(N, H_out)`` or ``(H_out)``): the same checks, messages and zero states. Returns the new states."""
        if input.dim() not in (1, 2):
            raise ValueError(f"{self._name()}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    what = f"hx[{idx}]" if self._states == 2 else "hidden"
                    raise ValueError(f"{self._name()}: Expected {what} to be 1D or 2D, got {value.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            states = [zeros] * self._states
        else:
            states = [h.unsqueeze(0) for h in hx] if not is_batched else hx
        if hasattr(self, "nonlinearity"):
            if self.nonlinearity not in ("tanh", "relu"):
                raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        if torch.jit.is_scripting():
            states = self._scripted_step(input, states)
        else:
            states = self._eager_step(input, states)
        return states if is_batched else [s.squeeze(0) for s in states]

    def _name(self) -> str:
        return "RNNCell" if hasattr(self, "nonlinearity") else "LSTMCell" if self._states == 2 else "GRUCell"

    def _scripted_step(self, input: Tensor, states: list[Tensor]) -> list[Tensor]:
        """fastrnn's op, as the eager call runs it."""
        w_ih, w_hh, b_ih, b_hh = self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        if hasattr(self, "nonlinearity"):
            activation = 0 if self.nonlinearity == "tanh" else 1
            return [torch.ops.fastrnn.rnn_cell(input, states[0], w_ih, w_hh, b_ih, b_hh, activation)]
        if self._states == 2:
            h, c = functional.lstm_cell(input, (states[0], states[1]), w_ih, w_hh, b_ih, b_hh)
            return [h, c]
        return [functional.gru_cell(input, states[0], w_ih, w_hh, b_ih, b_hh)]

    @torch.jit.unused
    def _eager_step(self, input: Tensor, states: list[Tensor]) -> list[Tensor]:
        w_ih, w_hh, b_ih, b_hh = self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        elman = self._cell_kind is None
        if not _exporting_onnx():  # under an ONNX exporter: what torch's cell exports
            if elman and _eager_cpp_call(input):
                try:
                    return [_rnn_cell_op()(input, states[0], w_ih, w_hh, b_ih, b_hh, _ELMAN_KIND[self.nonlinearity])]
                except RuntimeError:
                    pass  # a call the op rejects (dtype, device, shape): torch's cell below gives torch's outcome
            layer_path = elman or bool(forced_backend()) or torch._C._get_tracing_state() is not None or (
                needs_any_order(input, *states, w_ih, w_hh))
            if layer_path and self._op_fits(input, states):
                if elman:
                    return [functional.rnn_cell(input, states[0], w_ih, w_hh, b_ih, b_hh, self.nonlinearity)]
                return self._scripted_step(input, states)
        if elman:
            run = _VF.rnn_tanh_cell if self.nonlinearity == "tanh" else _VF.rnn_relu_cell
            return [run(input, states[0], w_ih, w_hh, b_ih, b_hh)]
        if self._states == 2:
            return list(_VF.lstm_cell(input, states, w_ih, w_hh, b_ih, b_hh))
        return [_VF.gru_cell(input, states[0], w_ih, w_hh, b_ih, b_hh)]

    @torch.jit.unused
    def _op_fits(self, input: Tensor, states: list[Tensor]) -> bool:
        """The family's policy, and 2-D input and states that fit the weights; anything else goes to torch,
        which raises its error."""
        weights = [w for w in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh) if w is not None]
        if not _op_takes(input.unsqueeze(0), states, weights, None, self._cell_kind is None):
            return False
        if input.size(1) != self.input_size:
            return False
        return all(s.dim() == 2 and s.size(0) == input.size(0) and s.size(1) == self.hidden_size for s in states)

    def _config(self) -> tuple[tuple, dict]:
        elman = [self.nonlinearity] if isinstance(self, (nn.RNNCell, RNNCell)) else []  # self may be torch's
        return (self.input_size, self.hidden_size, self.bias, *elman), {"device": self.weight_ih.device,
                                                                       "dtype": self.weight_ih.dtype}


class RNNCell(_Cell):
    r"""Drop-in :class:`torch.nn.RNNCell`: ``h' = \tanh(x W_{ih}^T + b_{ih} + h W_{hh}^T + b_{hh})``.

    Inputs: ``input`` ``(N, H_in)`` or ``(H_in)``; ``hx`` ``(N, H_out)`` or ``(H_out)``, zeros if omitted.
    Output: ``h'`` ``(N, H_out)`` or ``(H_out)``.
    """

    __constants__ = ["input_size", "hidden_size", "bias", "_states", "nonlinearity"]
    nonlinearity: str
    _torch_class = nn.RNNCell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=1, device=device, dtype=dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if not torch.jit.is_scripting():
            return self._eager_forward(input, hx)
        return self._step(input, None if hx is None else [hx])[0]


class GRUCell(_Cell):
    r"""Drop-in :class:`torch.nn.GRUCell` (the :class:`GRU` step).

    Inputs: ``input`` ``(N, H_in)`` or ``(H_in)``; ``hx`` ``(N, H_out)`` or ``(H_out)``, zeros if omitted.
    Output: ``h'`` ``(N, H_out)`` or ``(H_out)``.
    """

    _torch_class = nn.GRUCell
    _cell_kind = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=3, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if not torch.jit.is_scripting():
            return self._eager_forward(input, hx)
        return self._step(input, None if hx is None else [hx])[0]


class LSTMCell(_Cell):
    r"""Drop-in :class:`torch.nn.LSTMCell` (the :class:`LSTM` step, no projection).

    Inputs: ``input`` ``(N, H_in)`` or ``(H_in)``; ``hx = (h, c)``, each ``(N, H_out)`` or ``(H_out)``, zeros
    if omitted. Output: ``(h', c')`` shaped like ``hx``.
    """

    _torch_class = nn.LSTMCell
    _states = 2
    _cell_kind = 4

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=4, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor]:
        if not torch.jit.is_scripting():
            return self._eager_forward(input, hx)
        states = self._step(input, None if hx is None else [hx[0], hx[1]])
        return states[0], states[1]
