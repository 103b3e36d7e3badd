"""``fastrnn.RNN`` and ``fastrnn.RNNCell``: drop-in replacements for ``torch.nn.RNN`` / ``torch.nn.RNNCell``.

``RNN`` subclasses ``torch.nn.RNNBase`` (not ``torch.nn.RNN``, whose instances dynamo refuses under
``fullgraph=True``), so parameter names, order, init, ``state_dict``, ``repr``, pickling and the argument
checks are torch's own. Weights are read from the module at every call; nothing is cached.
"""


import functools
from typing import Optional, overload

import torch
from torch import _VF, Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from fastrnn import functional
from fastrnn.backends import CppBackend, _eager_cpp_call, forced_backend, fused_cell_takes, stack_forward_takes
from fastrnn.conversion import TorchConversion


def _fast_path_takes(input: Tensor, states: list[Tensor], weights: list[Tensor], elman: bool = True) -> bool:
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


@functools.cache
def _rnn_cell_op():
    """The built extension's direct binding of ``fastrnn::rnn_cell`` (a few microseconds less a call than the
    generic op call), or the op itself when the library was compiled on first use. Resolved once."""
    try:
        from fastrnn._C import rnn_cell
    except ImportError:
        return torch.ops.fastrnn.rnn_cell.default
    return rnn_cell


# The cell kinds of the extension's whole-call entries (csrc/whole_call.h).
_KIND = {"RNN_TANH": 0, "RNN_RELU": 1, "GRU": 3, "LSTM": 4}


@functools.cache
def _stack_if_plain():
    """The built extension's whole RNN / GRU / LSTM call (csrc/stack.cpp: ``stack_if_plain``), or None."""
    try:
        from fastrnn._C import stack_if_plain
    except ImportError:
        return None
    return stack_if_plain


@functools.cache
def _cell_if_plain():
    """The built extension's whole RNNCell / GRUCell / LSTMCell step (csrc/cell.cpp: ``cell_if_plain``), or None."""
    try:
        from fastrnn._C import cell_if_plain
    except ImportError:
        return None
    return cell_if_plain


@functools.cache
def _stack_forward():
    """The built extension's no-autograd stack forward (csrc/stack.cpp), else the differentiable path."""
    try:
        from fastrnn._C import rnn_stack_forward
    except ImportError:
        return _stack_forward_in_python
    return rnn_stack_forward


def _stack_forward_in_python(input, hx, weights, batch_sizes, has_biases, num_layers, bidirectional, activation):
    return functional.rnn(input, hx, weights, has_biases, num_layers, 0.0, False, bidirectional,
                          ("tanh", "relu")[activation], batch_sizes)


def _exporting_onnx() -> bool:
    """torch.onnx.is_in_onnx_export() costs ~2.5 us; both exporters trace (jit trace or dynamo), so plain eager
    calls skip it."""
    traced = torch._C._get_tracing_state() is not None or torch.compiler.is_compiling()
    return traced and torch.onnx.is_in_onnx_export()


@torch.jit.unused
def _is_fx_proxy(input: Tensor) -> bool:
    return isinstance(input, torch.fx.Proxy)


@torch.jit.unused
def _fx_leaf(module: nn.Module, input: Tensor, hx: Optional[Tensor]):
    """Under torch.fx.symbolic_trace the module is one ``call_module`` node, as torch's own RNNs are (fx
    treats only modules defined in torch.nn as leaves by default)."""
    tracer = input.tracer
    args = (input,) if hx is None else (input, hx)
    return tracer.create_proxy("call_module", tracer.path_of_module(module), args, {})


@torch.jit.unused
def _fx_leaf_rnn(module: nn.Module, input: Tensor, hx: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    return _fx_leaf(module, input, hx)


@torch.jit.unused
def _fx_leaf_cell(module: nn.Module, input: Tensor, hx: Optional[Tensor]) -> Tensor:
    return _fx_leaf(module, input, hx)


def weights_in_use(module: nn.RNNBase) -> list[Tensor]:
    """The tensors an RNN module's call uses, in ``_flat_weights_names`` order: read from ``_parameters`` (a
    dict lookup; ``nn.Module.__getattr__`` per name cost ~1 us each), else by attribute, which is where
    parametrized or replaced weights are (torch reads them by attribute every call too)."""
    params = module._parameters
    try:
        return [params[name] for name in module._flat_weights_names]  # type: ignore[misc]
    except KeyError:
        return [getattr(module, name) for name in module._flat_weights_names]


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


class _Recurrent(TorchConversion, nn.RNNBase):
    """What RNN, GRU and LSTM share: weights read at every call (nothing cached), a silent
    ``flatten_parameters``, and the eager computation on checked arguments (:meth:`_run`). Each class adds its
    ``__init__``, its TorchScript-typed ``forward`` (torch's preamble and checks, as torch keeps one per class)
    and :meth:`_stack`, the family's layer loop."""

    _torch_class: type[nn.RNNBase]

    def flatten_parameters(self) -> None:
        """Does nothing: fastrnn reads the parameters where they are at every call."""

    def _weights(self) -> list[Tensor]:
        return weights_in_use(self)

    @torch.jit.unused
    def _plain_call(self, input: Tensor, h: Optional[Tensor], c: Optional[Tensor]):
        """The whole call in one C++ call (csrc/stack.cpp) when it is a plain eager call on CPU tensors (a tiny
        call is otherwise mostly Python): inference for every cell, training too for the RNN (a C++ autograd
        node). The C++ side declines (None) anything not plainly well-formed, and the call then takes torch's
        checks, so errors stay torch's. Returns ``(output, h_n, c_n or None)`` or None."""
        if type(input) is not Tensor or (self.dropout != 0 and self.training) or not _eager_cpp_call(input):
            return None
        run = _stack_if_plain()
        if run is None:
            return None
        return run(_KIND[self.mode], input, h, c, self._weights(), self.bias, self.num_layers, self.bidirectional,
                   self.batch_first, self.input_size, self.hidden_size, self.proj_size)

    @torch.jit.unused
    def _run(self, input: Tensor, hx, batch_sizes: Optional[Tensor]):
        """fastrnn's op where it takes the call, else torch's own, which also runs while an ONNX exporter traces
        (so it emits what it emits for torch's module: the standard ONNX RNN / GRU / LSTM op). ``hx`` is the
        state as the module's forward holds it: a tensor, or LSTM's ``(h, c)``."""
        weights = self._weights()
        states = list(hx) if isinstance(hx, tuple) else [hx]
        if _exporting_onnx() or not self._fast_path_takes(input, states, weights, batch_sizes):
            return self._torch_forward(input, hx, weights, batch_sizes)
        if batch_sizes is None and self.batch_first:
            input = input.transpose(0, 1)
        output, hidden = self._stack(input, hx, weights, batch_sizes)
        if batch_sizes is None and self.batch_first:
            output = output.transpose(0, 1)
        return output, hidden

    def _fast_path_takes(self, input: Tensor, states: list[Tensor], weights: list[Tensor],
                         batch_sizes: Optional[Tensor]) -> bool:
        lstm, elman = self.mode == "LSTM", self.mode.startswith("RNN")  # which op-reach policy applies
        if len(states) != (2 if lstm else 1) or not _fast_path_takes(input, states, weights, elman):
            return False
        if batch_sizes is None:  # torch raises for an empty sequence (and the gated ops take no empty batch)
            return input.size(1 if self.batch_first else 0) > 0 and (elman or input.size(0) * input.size(1) > 0)
        if not _packed_fast_path_takes(batch_sizes, input.size(0)):
            return False
        if lstm:  # LSTM's forward leaves packed input to _VF.lstm's checks, which raise torch's error
            try:
                self.check_forward_args(input, tuple(states), batch_sizes)
            except RuntimeError:
                return False
        return True

    def _torch_forward(self, input: Tensor, hx, weights: list[Tensor], batch_sizes: Optional[Tensor]):
        """torch's own computation on this module's parameters, for the calls the op does not take."""
        run = {"RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu, "GRU": _VF.gru, "LSTM": _VF.lstm}[self.mode]
        if batch_sizes is None:
            result = run(input, hx, weights, self.bias, self.num_layers, self.dropout, self.training,
                         self.bidirectional, self.batch_first)
        else:
            result = run(input, batch_sizes, hx, weights, self.bias, self.num_layers, self.dropout, self.training,
                         self.bidirectional)
        return (result[0], (result[1], result[2])) if self.mode == "LSTM" else (result[0], result[1])

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
            plain = self._plain_call(input, hx, None)
            if plain is not None:
                return plain[0], plain[1]
        # Up to check_forward_args this is torch.nn.RNN.forward, so every check and message is torch's.
        num_directions = 2 if self.bidirectional else 1
        orig_input = input
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = batch_sizes[0]
            if hx is None:  # duplicated per branch as in torch: TorchScript types max_batch_size per branch
                hx = torch.zeros(
                    self.num_layers * num_directions,
                    max_batch_size,
                    self.hidden_size,
                    dtype=input.dtype,
                    device=input.device,
                )
            else:
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            if not torch.jit.is_scripting():  # an fx Proxy is never a PackedSequence
                if type(input) is not Tensor and _is_fx_proxy(input):
                    return _fx_leaf_rnn(self, input, hx)
            batch_sizes = None
            if input.dim() not in (2, 3):
                raise ValueError(f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(batch_dim)
                if hx is not None:
                    if hx.dim() != 2:
                        raise RuntimeError(
                            f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor"
                        )
                    hx = hx.unsqueeze(1)
            elif hx is not None and hx.dim() != 3:
                raise RuntimeError(
                    f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor"
                )
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
            sorted_indices = None
            unsorted_indices = None
            if hx is None:
                hx = torch.zeros(
                    self.num_layers * num_directions,
                    max_batch_size,
                    self.hidden_size,
                    dtype=input.dtype,
                    device=input.device,
                )
            else:
                hx = self.permute_hidden(hx, sorted_indices)
        self.check_forward_args(input, hx, batch_sizes)

        if torch.jit.is_scripting():
            if batch_sizes is None and self.batch_first:
                input = input.transpose(0, 1)
            output, hidden = functional.rnn(
                input, hx, self._flat_weights, self.bias, self.num_layers, self.dropout, self.training,
                self.bidirectional, self.nonlinearity, batch_sizes,
            )
            if batch_sizes is None and self.batch_first:
                output = output.transpose(0, 1)
        else:
            output, hidden = self._run(input, hx, batch_sizes)
        if isinstance(orig_input, PackedSequence):
            packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            return packed, self.permute_hidden(hidden, unsorted_indices)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = hidden.squeeze(1)
        return output, self.permute_hidden(hidden, unsorted_indices)

    @torch.jit.unused
    def _stack(self, input: Tensor, hx: Tensor, weights: list[Tensor], batch_sizes: Optional[Tensor]):
        """The layers on time-major input: one C++ call for a call that nothing differentiates (no dropout in
        training), else :func:`fastrnn.functional.rnn`."""
        if (self.dropout == 0 or not self.training) and stack_forward_takes(input, hx, weights):
            return _stack_forward()(input, hx, weights, batch_sizes, self.bias, self.num_layers, self.bidirectional,
                                    0 if self.nonlinearity == "tanh" else 1)
        return functional.rnn(input, hx, weights, self.bias, self.num_layers, self.dropout, self.training,
                              self.bidirectional, self.nonlinearity, batch_sizes)


class _Cell(TorchConversion, nn.RNNCellBase):
    """What RNNCell, GRUCell and LSTMCell share: the plain eager step in one C++ call, and the configuration."""

    _torch_class: type[nn.RNNCellBase]

    @torch.jit.unused
    def _step_if_plain(self, kind: int, input: Tensor, h: Optional[Tensor], c: Optional[Tensor]):
        """The step in one C++ call with one C++ autograd node (csrc/cell.cpp: ``cell_if_plain``, ``kind`` as
        in ``_KIND``) when it is a plain eager CPU call (reading four parameters through nn.Module.__getattr__
        alone cost more than the step); else None, and the call takes torch's checks."""
        if not _eager_cpp_call(input):  # first: under dynamo the cached getter below would be traced
            return None
        run = _cell_if_plain()
        if run is None:
            return None
        return run(kind, input, h, c, self._parameters)

    def _config(self) -> tuple[tuple, dict]:
        elman = [self.nonlinearity] if isinstance(self, (nn.RNNCell, RNNCell)) else []  # self may be torch's
        return (self.input_size, self.hidden_size, self.bias, *elman), {"device": self.weight_ih.device,
                                                                       "dtype": self.weight_ih.dtype}


class RNNCell(_Cell):
    r"""Drop-in :class:`torch.nn.RNNCell`: ``h' = \tanh(x W_{ih}^T + b_{ih} + h W_{hh}^T + b_{hh})``.

    Inputs: ``input`` ``(N, H_in)`` or ``(H_in)``; ``hx`` ``(N, H_out)`` or ``(H_out)``, zeros if omitted.
    Output: ``h'`` ``(N, H_out)`` or ``(H_out)``.
    """

    __constants__ = ["input_size", "hidden_size", "bias", "nonlinearity"]
    nonlinearity: str
    _torch_class = nn.RNNCell

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=1, device=device, dtype=dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if not torch.jit.is_scripting():
            if type(input) is not Tensor:
                if _is_fx_proxy(input):
                    return _fx_leaf_cell(self, input, hx)
            else:
                plain = self._plain_step(input, hx)
                if plain is not None:
                    return plain
        if input.dim() not in (1, 2):
            raise ValueError(f"RNNCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"RNNCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
        elif not is_batched:
            hx = hx.unsqueeze(0)
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        if torch.jit.is_scripting():
            activation = 0 if self.nonlinearity == "tanh" else 1
            ret = torch.ops.fastrnn.rnn_cell(
                input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, activation
            )
        else:
            ret = self._step(input, hx)
        return ret if is_batched else ret.squeeze(0)

    @torch.jit.unused
    def _plain_step(self, input: Tensor, hx: Optional[Tensor]) -> Optional[Tensor]:
        """The whole call in one C++ call when it is a plain eager call on CPU tensors (issue 12: reading four
        parameters through nn.Module.__getattr__ alone cost more than the step). The C++ side declines (None)
        anything not plainly well-formed, and the call then takes torch's checks below."""
        kind = 0 if self.nonlinearity == "tanh" else 1 if self.nonlinearity == "relu" else -1
        return self._step_if_plain(kind, input, hx, None)

    @torch.jit.unused
    def _step(self, input: Tensor, hx: Tensor) -> Tensor:
        if _exporting_onnx():  # export what torch.nn.RNNCell exports
            run = _VF.rnn_tanh_cell if self.nonlinearity == "tanh" else _VF.rnn_relu_cell
            return run(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        if fused_cell_takes(input):
            try:
                return _rnn_cell_op()(
                    input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                    0 if self.nonlinearity == "tanh" else 1,
                )
            except RuntimeError:
                pass  # a call the op rejects (dtype, device, shape): torch's cell below gives torch's outcome
        weights = [self.weight_ih, self.weight_hh] + ([self.bias_ih, self.bias_hh] if self.bias else [])
        if (
            _fast_path_takes(input, [hx], weights)
            and input.size(1) == self.input_size
            and hx.size(0) == input.size(0)
            and hx.size(1) == self.hidden_size
        ):
            return functional.rnn_cell(
                input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.nonlinearity
            )
        run = _VF.rnn_tanh_cell if self.nonlinearity == "tanh" else _VF.rnn_relu_cell
        return run(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
