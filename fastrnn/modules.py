"""``fastrnn.RNN`` and ``fastrnn.RNNCell``: drop-in replacements for ``torch.nn.RNN`` / ``torch.nn.RNNCell``.

``RNN`` subclasses ``torch.nn.RNNBase`` (not ``torch.nn.RNN``, whose instances dynamo refuses under
``fullgraph=True``), so parameter names, order, init, ``state_dict``, ``repr``, pickling and the argument
checks are torch's own. Weights are read from the module at every call; nothing is cached.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from fastrnn import functional

_SCALAR_TYPE_NAMES = {
    torch.float32: "Float",
    torch.float64: "Double",
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
}


def _check_hidden_dtype(hx: Tensor, weight: Tensor) -> None:
    # torch.nn.RNN fails here in its first hx @ W_hh^T; fastrnn raises the same before any kernel runs.
    if hx.dtype != weight.dtype and not torch._C._is_any_autocast_enabled():
        names = [_SCALAR_TYPE_NAMES.get(t.dtype, str(t.dtype)) for t in (hx, weight)]
        raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got {names[0]} and {names[1]}")


def _check_same_device(input: Tensor, hx: Tensor, weights: list[Tensor]) -> None:
    # torch.nn.RNN raises these from its C++ implementation; fastrnn checks before any kernel runs.
    for w in weights:
        if w.device != input.device:
            raise RuntimeError(
                "Input and parameter tensors are not at the same device, found input tensor at "
                f"{input.device} and parameter tensor at {w.device}"
            )
    if hx.device != input.device:
        raise RuntimeError(
            "Input and hidden tensors are not at the same device, found input tensor at "
            f"{input.device} and hidden tensor at {hx.device}"
        )


class RNN(nn.RNNBase):
    r"""Drop-in :class:`torch.nn.RNN`: ``h_t = \tanh(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh})``.

    Same arguments as :class:`torch.nn.RNN`: ``input_size, hidden_size, num_layers=1, nonlinearity='tanh',
    bias=True, batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None``.

    Inputs: ``input`` ``(L, N, H_in)``, ``(N, L, H_in)`` with ``batch_first``, ``(L, H_in)`` unbatched, or a
    :class:`~torch.nn.utils.rnn.PackedSequence`; ``hx`` ``(D * num_layers, N, H_out)`` or
    ``(D * num_layers, H_out)`` unbatched, zeros if omitted.

    Outputs: ``output`` ``(L, N, D * H_out)`` (batch-first / unbatched / packed like the input) and
    ``h_n`` shaped like ``hx``.
    """

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

    def flatten_parameters(self) -> None:
        """Does nothing: fastrnn reads the parameters where they are at every call."""

    def _weights(self) -> list[Tensor]:
        return [getattr(self, name) for name in self._flat_weights_names]

    def forward(
        self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor] = None
    ) -> tuple[Union[Tensor, PackedSequence], Tensor]:
        num_directions = 2 if self.bidirectional else 1
        orig_input = input
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = int(batch_sizes[0])
        else:
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
        weights = self._weights()
        _check_same_device(input, hx, weights)
        if batch_sizes is None and input.size(1 if self.batch_first else 0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        _check_hidden_dtype(hx, weights[1])

        if batch_sizes is None and self.batch_first:
            input = input.transpose(0, 1)
        output, hidden = functional.rnn(
            input,
            hx,
            weights,
            has_biases=self.bias,
            num_layers=self.num_layers,
            dropout=self.dropout,
            training=self.training,
            bidirectional=self.bidirectional,
            nonlinearity=self.nonlinearity,
            batch_sizes=batch_sizes,
        )
        if isinstance(orig_input, PackedSequence):
            packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            return packed, self.permute_hidden(hidden, unsorted_indices)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = hidden.squeeze(1)
        return output, self.permute_hidden(hidden, unsorted_indices)

    def _config(self) -> tuple[tuple, dict]:
        first = next(self.parameters())
        args = (self.input_size, self.hidden_size, self.num_layers, self.nonlinearity, self.bias,
                self.batch_first, self.dropout, self.bidirectional)
        return args, {"device": first.device, "dtype": first.dtype}

    @classmethod
    def from_torch(cls, module: nn.RNN) -> RNN:
        """A ``fastrnn.RNN`` with the configuration, device, dtype and weights of ``module``."""
        args, kwargs = RNN._config(module)
        return _copy_into(cls(*args, **kwargs), module)

    def to_torch(self) -> nn.RNN:
        """The ``torch.nn.RNN`` with this module's configuration, device, dtype and weights."""
        args, kwargs = self._config()
        return _copy_into(nn.RNN(*args, **kwargs), self)


def _copy_into(target: nn.Module, source: nn.Module) -> nn.Module:
    target.load_state_dict(source.state_dict())
    return target.train(source.training)


class RNNCell(nn.RNNCellBase):
    r"""Drop-in :class:`torch.nn.RNNCell`: ``h' = \tanh(x W_{ih}^T + b_{ih} + h W_{hh}^T + b_{hh})``.

    Inputs: ``input`` ``(N, H_in)`` or ``(H_in)``; ``hx`` ``(N, H_out)`` or ``(H_out)``, zeros if omitted.
    Output: ``h'`` ``(N, H_out)`` or ``(H_out)``.
    """

    __constants__ = ["input_size", "hidden_size", "bias", "nonlinearity"]
    nonlinearity: str

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
        if input.size(1) != self.weight_ih.size(1):
            raise RuntimeError(
                f"input has inconsistent input_size: got {input.size(1)} expected {self.weight_ih.size(1)}"
            )
        if input.size(0) != hx.size(0):
            raise RuntimeError(
                f"Input batch size {input.size(0)} doesn't match hidden0 batch size {hx.size(0)}"
            )
        if hx.size(1) != self.hidden_size:
            raise RuntimeError(
                f"hidden0 has inconsistent hidden_size: got {hx.size(1)}, expected {self.hidden_size}"
            )
        _check_hidden_dtype(hx, self.weight_hh)
        ret = functional.rnn_cell(
            input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.nonlinearity
        )
        return ret if is_batched else ret.squeeze(0)

    def _config(self) -> tuple[tuple, dict]:
        args = (self.input_size, self.hidden_size, self.bias, self.nonlinearity)
        return args, {"device": self.weight_ih.device, "dtype": self.weight_ih.dtype}

    @classmethod
    def from_torch(cls, module: nn.RNNCell) -> RNNCell:
        """A ``fastrnn.RNNCell`` with the configuration, device, dtype and weights of ``module``."""
        args, kwargs = RNNCell._config(module)
        return _copy_into(cls(*args, **kwargs), module)

    def to_torch(self) -> nn.RNNCell:
        """The ``torch.nn.RNNCell`` with this module's configuration, device, dtype and weights."""
        args, kwargs = self._config()
        return _copy_into(nn.RNNCell(*args, **kwargs), self)
