"""``fastrnn.GRU``, ``fastrnn.LSTM``, ``fastrnn.GRUCell``, ``fastrnn.LSTMCell``: drop-in replacements for
torch's, with the same contract as ``fastrnn.RNN``.

The modules subclass ``torch.nn.RNNBase`` (mode ``'GRU'`` / ``'LSTM'``) and ``torch.nn.RNNCellBase``, so
parameter names, order, init, ``state_dict``, ``repr``, pickling and torch's argument checks are torch's
own; ``forward`` is torch's up to the point where torch calls ``_VF.gru`` / ``_VF.lstm``. There fastrnn's
op runs the call when it can: CPU tensors in float32 or float64, one device and dtype, no autocast, a
non-empty sequence and batch, well-formed packed batch sizes. Every other call (CUDA tensors included,
until fused GPU kernels for these cells exist) runs torch's own implementation, with the same weights, so
it gives torch's result (cuDNN on CUDA) or raises torch's exact error.
"""


from typing import Optional, overload

import torch
from torch import _VF, Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from fastrnn import gated_functional
from fastrnn.backends import forced_backend, needs_any_order
from fastrnn.modules import _Cell, _exporting_onnx, _fx_leaf, _is_fx_proxy, _packed_fast_path_takes, _Recurrent
from fastrnn.modules import _fast_path_takes as _modules_fast_path_takes


@torch.jit.unused
def _fx_leaf_gru(module: nn.Module, input: Tensor, hx: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    return _fx_leaf(module, input, hx)


@torch.jit.unused
def _fx_leaf_gru_cell(module: nn.Module, input: Tensor, hx: Optional[Tensor]) -> Tensor:
    return _fx_leaf(module, input, hx)


@torch.jit.unused
def _fx_leaf_lstm_cell(
    module: nn.Module, input: Tensor, hx: Optional[tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    return _fx_leaf(module, input, hx)


@torch.jit.unused
def _fx_leaf_lstm(
    module: nn.Module, input: Tensor, hx: Optional[tuple[Tensor, Tensor]]
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    return _fx_leaf(module, input, hx)

def _fast_path_takes(input: Tensor, states: list[Tensor], weights: list[Tensor], batch_sizes: Optional[Tensor]) -> bool:
    """Whether the GRU / LSTM op runs this call (:func:`fastrnn.modules._fast_path_takes`, the gated policy), on
    time-major ``input`` with these states and weights; otherwise torch's implementation."""
    if _exporting_onnx() or not _modules_fast_path_takes(input, states, weights, elman=False):
        return False
    if batch_sizes is None:
        return input.dim() == 3 and input.size(0) > 0 and input.size(1) > 0
    return _packed_fast_path_takes(batch_sizes, input.size(0))


class GRU(_Recurrent):
    r"""Drop-in :class:`torch.nn.GRU`: ``r = \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr})``, ``z`` likewise,
    ``n = \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn}))``, ``h' = (1 - z) \odot n + z \odot h``.

    Same arguments as :class:`torch.nn.GRU`: ``input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None``.

    Inputs: ``input`` ``(L, N, H_in)``, ``(N, L, H_in)`` with ``batch_first``, ``(L, H_in)`` unbatched, or a
    :class:`~torch.nn.utils.rnn.PackedSequence`; ``hx`` ``(D * num_layers, N, H_out)`` or
    ``(D * num_layers, H_out)`` unbatched, zeros if omitted.

    Outputs: ``output`` ``(L, N, D * H_out)`` (batch-first / unbatched / packed like the input) and ``h_n``
    shaped like ``hx``.
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
            if type(input) is not Tensor:
                if _is_fx_proxy(input):  # one call_module node under torch.fx
                    return _fx_leaf_gru(self, input, hx)
            elif hx is None or type(hx) is Tensor:
                plain = self._plain_call(input, hx, None)
                if plain is not None:
                    return plain[0], plain[1]
        # Up to check_forward_args this is torch.nn.GRU.forward, so every check and message is torch's.
        num_directions = 2 if self.bidirectional else 1
        orig_input = input
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = batch_sizes[0]
            if hx is None:  # per branch as in torch: TorchScript types max_batch_size per branch
                hx = torch.zeros(self.num_layers * num_directions, max_batch_size, self.hidden_size,
                                 dtype=input.dtype, device=input.device)
            else:
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            batch_sizes = None
            if input.dim() not in (2, 3):
                raise ValueError(f"GRU: Expected input to be 2D or 3D, got {input.dim()}D instead")
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
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
            sorted_indices = None
            unsorted_indices = None
            if hx is None:
                hx = torch.zeros(self.num_layers * num_directions, max_batch_size, self.hidden_size,
                                 dtype=input.dtype, device=input.device)
            else:
                hx = self.permute_hidden(hx, sorted_indices)
        self.check_forward_args(input, hx, batch_sizes)
        if torch.jit.is_scripting():  # fastrnn's ops, as the eager call runs them
            if batch_sizes is None and self.batch_first:
                input = input.transpose(0, 1)
            output, hidden = gated_functional.gru(input, hx, self._flat_weights, self.bias, self.num_layers,
                                                  self.dropout, self.training, self.bidirectional, batch_sizes)
            if batch_sizes is None and self.batch_first:
                output = output.transpose(0, 1)
        else:
            output, hidden = self._run(input, hx, batch_sizes)

        if isinstance(orig_input, PackedSequence):
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), self.permute_hidden(
                hidden, unsorted_indices
            )
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = hidden.squeeze(1)
        return output, self.permute_hidden(hidden, unsorted_indices)

    @torch.jit.unused
    def _stack(self, input: Tensor, hx: Tensor, weights: list[Tensor], batch_sizes: Optional[Tensor]):
        return gated_functional.gru(input, hx, weights, self.bias, self.num_layers, self.dropout, self.training,
                                    self.bidirectional, batch_sizes)


class LSTM(_Recurrent):
    r"""Drop-in :class:`torch.nn.LSTM`: gates ``i, f, g, o`` from ``W_{ih} x + b_{ih} + W_{hh} h + b_{hh}``,
    ``c' = f \odot c + i \odot g``, ``h' = o \odot \tanh(c')``, projected ``h' W_{hr}^T`` with ``proj_size``.

    Same arguments as :class:`torch.nn.LSTM`: ``input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None``.

    Inputs: ``input`` as for :class:`GRU`; ``hx = (h_0, c_0)``, ``h_0`` ``(D * num_layers, N, H_out)``,
    ``c_0`` ``(D * num_layers, N, H_cell)`` (no N when unbatched), zeros if omitted; ``H_out`` is
    ``proj_size`` when set, else ``H_cell = hidden_size``.

    Outputs: ``output`` ``(L, N, D * H_out)`` (like the input) and ``(h_n, c_n)`` shaped like ``hx``.
    """

    _torch_class = nn.LSTM

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    # torch.nn.LSTM's own: the cell state has hidden_size features, h has proj_size when set.
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
            if type(input) is not Tensor:
                if _is_fx_proxy(input):  # one call_module node under torch.fx
                    return _fx_leaf_lstm(self, input, hx)
            elif hx is None or (type(hx) is tuple and len(hx) == 2):
                plain = self._plain_call(input, *((None, None) if hx is None else hx))
                if plain is not None:
                    return plain[0], (plain[1], plain[2])
        # Up to check_forward_args this is torch.nn.LSTM.forward, so every check and message is torch's.
        orig_input = input
        batch_sizes = None
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        num_directions = 2 if self.bidirectional else 1
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        layers = self.num_layers * num_directions
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = batch_sizes[0]
            if hx is None:  # per branch as in torch: TorchScript types max_batch_size per branch
                hx = (torch.zeros(layers, max_batch_size, real_hidden_size, dtype=input.dtype, device=input.device),
                      torch.zeros(layers, max_batch_size, self.hidden_size, dtype=input.dtype, device=input.device))
            else:
                hx = self.permute_hidden(hx, sorted_indices)
            # torch checks packed LSTM input only inside _VF.lstm, with its own messages.
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
            sorted_indices = None
            unsorted_indices = None
            if hx is None:
                hx = (torch.zeros(layers, max_batch_size, real_hidden_size, dtype=input.dtype, device=input.device),
                      torch.zeros(layers, max_batch_size, self.hidden_size, dtype=input.dtype, device=input.device))
            else:
                if is_batched:
                    if hx[0].dim() != 3 or hx[1].dim() != 3:
                        raise RuntimeError(
                            "For batched 3-D input, hx and cx should "
                            f"also be 3-D but got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                        )
                else:
                    if hx[0].dim() != 2 or hx[1].dim() != 2:
                        raise RuntimeError(
                            "For unbatched 2-D input, hx and cx should "
                            f"also be 2-D but got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                        )
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            self.check_forward_args(input, hx, batch_sizes)

        if torch.jit.is_scripting():  # fastrnn's ops, as the eager call runs them
            if batch_sizes is not None:
                self.check_forward_args(input, hx, batch_sizes)  # eager: torch's _VF.lstm raises its errors
            elif self.batch_first:
                input = input.transpose(0, 1)
            output, hidden = gated_functional.lstm(input, hx, self._flat_weights, self.bias, self.num_layers,
                                                   self.dropout, self.training, self.bidirectional, self.proj_size,
                                                   batch_sizes)
            if batch_sizes is None and self.batch_first:
                output = output.transpose(0, 1)
        else:
            output, hidden = self._run(input, hx, batch_sizes)

        if isinstance(orig_input, PackedSequence):
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), self.permute_hidden(
                hidden, unsorted_indices
            )
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1))
        return output, self.permute_hidden(hidden, unsorted_indices)

    @torch.jit.unused
    def _stack(self, input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], batch_sizes: Optional[Tensor]):
        return gated_functional.lstm(input, hx, weights, self.bias, self.num_layers, self.dropout, self.training,
                                     self.bidirectional, self.proj_size, batch_sizes)


class _GatedCellBase(_Cell):
    """A plain eager CPU step runs in one C++ call (two small matmuls, the layer op's gate rows) with one
    autograd node whose backward is C++ too; anything that call declines runs torch's cell kernel
    (``_VF.gru_cell`` / ``_VF.lstm_cell``), which also gives torch's errors. With ``FASTRNN_BACKEND`` set, the
    step runs that backend's layer op instead. For one step the layer op costs more than it saves (a
    per-call weight layout and a Python autograd.Function: 0.4-0.8x torch in a loop; benchmarks/NOTES.md)."""

    _torch_class: type[nn.RNNCellBase]

    def _cell_fast_path_takes(self, input: Tensor, states: list[Tensor]) -> bool:
        """2-D input and states that fit the weights; anything else goes to torch, which raises its error."""
        weights = [w for w in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh) if w is not None]
        if not _fast_path_takes(input.unsqueeze(0), states, weights, None):
            return False
        if input.size(1) != self.input_size:
            return False
        return all(s.dim() == 2 and s.size(0) == input.size(0) and s.size(1) == self.hidden_size for s in states)

    def _takes_layer_path(self, input: Tensor, *states: Tensor) -> bool:
        """The step runs the layer path, not the one-call C++ step: with ``FASTRNN_BACKEND`` set; under
        torch.jit.trace (which records fastrnn's op); for higher-order or forward-mode derivatives under a
        transform (:func:`fastrnn.backends.needs_any_order`; the reference composes with every transform, and
        torch's cell kernel fails under vmap of grad of grad)."""
        return (bool(forced_backend()) or torch._C._get_tracing_state() is not None
                or needs_any_order(input, *states, self.weight_ih, self.weight_hh))



class GRUCell(_GatedCellBase):
    r"""Drop-in :class:`torch.nn.GRUCell` (the :class:`GRU` step).

    Inputs: ``input`` ``(N, H_in)`` or ``(H_in)``; ``hx`` ``(N, H_out)`` or ``(H_out)``, zeros if omitted.
    Output: ``h'`` ``(N, H_out)`` or ``(H_out)``.
    """

    _torch_class = nn.GRUCell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=3, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if not torch.jit.is_scripting():
            if type(input) is not Tensor and _is_fx_proxy(input):  # one call_module node under torch.fx
                return _fx_leaf_gru_cell(self, input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
        else:
            hx = hx.unsqueeze(0) if not is_batched else hx
        if torch.jit.is_scripting():  # fastrnn's op, as the eager call runs it
            ret = gated_functional.gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        else:
            ret = self._step(input, hx)
        return ret if is_batched else ret.squeeze(0)

    @torch.jit.unused
    def _step(self, input: Tensor, hx: Tensor) -> Tensor:
        if self._takes_layer_path(input, hx):
            if self._cell_fast_path_takes(input, [hx]):
                return gated_functional.gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        else:
            out = self._step_if_plain(3, input, hx, None)
            if out is not None:
                return out
        return _VF.gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class LSTMCell(_GatedCellBase):
    r"""Drop-in :class:`torch.nn.LSTMCell` (the :class:`LSTM` step, no projection).

    Inputs: ``input`` ``(N, H_in)`` or ``(H_in)``; ``hx = (h, c)``, each ``(N, H_out)`` or ``(H_out)``, zeros
    if omitted. Output: ``(h', c')`` shaped like ``hx``.
    """

    _torch_class = nn.LSTMCell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=4, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor]:
        if not torch.jit.is_scripting():
            if type(input) is not Tensor and _is_fx_proxy(input):  # one call_module node under torch.fx
                return _fx_leaf_lstm_cell(self, input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            hx = (zeros, zeros)
        else:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0)) if not is_batched else hx
        if torch.jit.is_scripting():  # fastrnn's op, as the eager call runs it
            ret = gated_functional.lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        else:
            ret = self._step(input, hx)
        return ret if is_batched else (ret[0].squeeze(0), ret[1].squeeze(0))

    @torch.jit.unused
    def _step(self, input: Tensor, hx: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        if isinstance(hx, tuple) and self._takes_layer_path(input, *hx):
            if self._cell_fast_path_takes(input, list(hx)):
                h, c = gated_functional.lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
                return h, c
        elif isinstance(hx, tuple) and len(hx) == 2:  # anything else: torch's cell raises torch's error
            out = self._step_if_plain(4, input, hx[0], hx[1])
            if out is not None:
                return out
        h, c = _VF.lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return h, c
