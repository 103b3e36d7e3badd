"""Functional GRU and LSTM: stacked, optionally bidirectional layers and the single-step cells.

As for the Elman RNN (:mod:`fastrnn.functional`), only the recurrence is custom: each layer and direction
runs ``gru_layer`` / ``lstm_layer`` (the input projection ``x W_ih^T + bias`` and the gated recurrence op). The
GRU folds ``b_hh`` into the projection's bias for r and z only; ``b_hn`` stays inside the reset product, as
torch computes it. TorchScript-compatible: scripted modules run the same loops on the custom ops
``fastrnn::gru_recurrence`` / ``lstm_recurrence``, so a scripted model records fastrnn's ops.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastrnn import gated_ops


def _gru_input_bias(b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """``(b_ih + [b_hr, b_hz, 0], b_hn)`` from torch's two GRU bias vectors ``[3H]``."""
    if b_ih is None or b_hh is None:
        return b_ih, None
    hidden = b_hh.size(0) // 3
    return torch.cat([b_ih[: 2 * hidden] + b_hh[: 2 * hidden], b_ih[2 * hidden :]]), b_hh[2 * hidden :]


@torch.jit.unused
def _gru_layer(x: Tensor, w_ih: Tensor, bias: Optional[Tensor], h0: Tensor, w_hh: Tensor, b_hn: Optional[Tensor],
               batch_sizes: Optional[Tensor], reverse: bool) -> tuple[Tensor, Tensor]:
    return gated_ops.gru_layer(x, w_ih, bias, h0, w_hh, b_hn, batch_sizes, reverse)


@torch.jit.unused
def _lstm_layer(x: Tensor, w_ih: Tensor, bias: Optional[Tensor], h0: Tensor, c0: Tensor, w_hh: Tensor,
                w_hr: Optional[Tensor], batch_sizes: Optional[Tensor], reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    return gated_ops.lstm_layer(x, w_ih, bias, h0, c0, w_hh, w_hr, batch_sizes, reverse)


def _next_layer_input(outputs: list[Tensor], layer: int, num_layers: int, dropout: float, training: bool) -> Tensor:
    """The directions' outputs side by side, with dropout between layers."""
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, -1)
    if dropout > 0 and training and layer < num_layers - 1:
        out = F.dropout(out, dropout, True)
    return out


def _caller_copy(output: Tensor, directions: int) -> Tensor:
    """The op saved this y for its backward: the caller gets a copy it may edit in place, as torch's is."""
    if directions == 1 and (output.requires_grad or torch.jit.is_tracing()):  # a trace records one graph
        return output.clone()
    return output


def gru(
    input: Tensor,
    hx: Tensor,
    weights: list[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
    batch_sizes: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """A multi-layer GRU over a whole sequence.

    Args:
        input: ``[L, N, H_in]`` (time-major) or packed data ``[sum(batch_sizes), H_in]``.
        hx: ``[num_layers * D, N, H_out]`` with ``D = 2`` if bidirectional else 1.
        weights: per layer and direction ``w_ih, w_hh[, b_ih, b_hh]``, in ``torch.nn.GRU`` order.
        batch_sizes: ``[L]`` int64 CPU tensor when ``input`` is packed.

    Returns:
        output ``[L, N, D * H_out]`` (or packed ``[sum(batch_sizes), D * H_out]``) and h_n like ``hx``.
    """
    directions = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    layer_input = input
    finals: list[Tensor] = []
    for layer in range(num_layers):
        outputs: list[Tensor] = []
        for d in range(directions):
            k = layer * directions + d
            bias: Optional[Tensor] = None
            b_hn: Optional[Tensor] = None
            if has_biases:
                bias, b_hn = _gru_input_bias(weights[k * per + 2], weights[k * per + 3])
            w_ih, w_hh = weights[k * per], weights[k * per + 1]
            if torch.jit.is_scripting():
                y, h_n, _ = torch.ops.fastrnn.gru_recurrence(F.linear(layer_input, w_ih, bias), hx[k], w_hh, b_hn,
                                                             batch_sizes, d == 1)
            else:
                y, h_n = _gru_layer(layer_input, w_ih, bias, hx[k], w_hh, b_hn, batch_sizes, d == 1)
            outputs.append(y)
            finals.append(h_n)
        layer_input = _next_layer_input(outputs, layer, num_layers, dropout, training)
    return _caller_copy(layer_input, directions), torch.stack(finals)


def lstm(
    input: Tensor,
    hx: tuple[Tensor, Tensor],
    weights: list[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
    proj_size: int = 0,
    batch_sizes: Optional[Tensor] = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """A multi-layer LSTM over a whole sequence.

    Args:
        input: ``[L, N, H_in]`` (time-major) or packed data ``[sum(batch_sizes), H_in]``.
        hx: ``(h_0 [num_layers * D, N, H_out], c_0 [num_layers * D, N, H_cell])``; ``H_out`` is proj_size
            when it is set, else ``H_cell``.
        weights: per layer and direction ``w_ih, w_hh[, b_ih, b_hh][, w_hr]``, in ``torch.nn.LSTM`` order.
        batch_sizes: ``[L]`` int64 CPU tensor when ``input`` is packed.

    Returns:
        output ``[L, N, D * H_out]`` (or packed) and ``(h_n, c_n)`` like ``hx``.
    """
    directions = 2 if bidirectional else 1
    per = (4 if has_biases else 2) + (1 if proj_size > 0 else 0)
    h0s, c0s = hx
    layer_input = input
    h_finals: list[Tensor] = []
    c_finals: list[Tensor] = []
    for layer in range(num_layers):
        outputs: list[Tensor] = []
        for d in range(directions):
            k = layer * directions + d
            bias: Optional[Tensor] = None
            if has_biases:
                bias = weights[k * per + 2] + weights[k * per + 3]
            w_hr: Optional[Tensor] = None
            if proj_size > 0:
                w_hr = weights[k * per + per - 1]
            w_ih, w_hh = weights[k * per], weights[k * per + 1]
            if torch.jit.is_scripting():
                y, h_n, c_n, _ = torch.ops.fastrnn.lstm_recurrence(F.linear(layer_input, w_ih, bias), h0s[k], c0s[k],
                                                                   w_hh, w_hr, batch_sizes, d == 1)
            else:
                y, h_n, c_n = _lstm_layer(layer_input, w_ih, bias, h0s[k], c0s[k], w_hh, w_hr, batch_sizes, d == 1)
            outputs.append(y)
            h_finals.append(h_n)
            c_finals.append(c_n)
        layer_input = _next_layer_input(outputs, layer, num_layers, dropout, training)
    return _caller_copy(layer_input, directions), (torch.stack(h_finals), torch.stack(c_finals))


def gru_cell(
    input: Tensor,
    hx: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
) -> Tensor:
    """One GRU step. ``input``: ``[N, H_in]``; ``hx``: ``[N, H_out]``. Returns ``h'`` ``[N, H_out]``."""
    bias, b_hn = _gru_input_bias(b_ih, b_hh)
    xw = F.linear(input, w_ih, bias).unsqueeze(0)
    if torch.jit.is_scripting():
        return torch.ops.fastrnn.gru_recurrence(xw, hx, w_hh, b_hn, None, False)[1]
    return _gru_recurrence(xw, hx, w_hh, b_hn)[1]


def lstm_cell(
    input: Tensor,
    hx: tuple[Tensor, Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """One LSTM step. ``input``: ``[N, H_in]``; ``hx``: ``([N, H_out], [N, H_out])``. Returns ``(h', c')``."""
    bias: Optional[Tensor] = None
    if b_ih is not None and b_hh is not None:
        bias = b_ih + b_hh
    xw = F.linear(input, w_ih, bias).unsqueeze(0)
    if torch.jit.is_scripting():
        _, h_n, c_n, _ = torch.ops.fastrnn.lstm_recurrence(xw, hx[0], hx[1], w_hh, None, None, False)
        return h_n, c_n
    _, h_n, c_n = _lstm_recurrence(xw, hx[0], hx[1], w_hh)
    return h_n, c_n


@torch.jit.unused
def _gru_recurrence(xw: Tensor, h0: Tensor, w_hh: Tensor, b_hn: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    return gated_ops.gru_recurrence(xw, h0, w_hh, b_hn)


@torch.jit.unused
def _lstm_recurrence(xw: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return gated_ops.lstm_recurrence(xw, h0, c0, w_hh)
