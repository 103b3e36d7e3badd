"""Functional GRU and LSTM: stacked, optionally bidirectional layers and the single-step cells.

As for the Elman RNN (:mod:`fastrnn.functional`), only the recurrence is custom: each layer and direction
makes one GEMM for all steps, ``xw = x W_ih^T + bias``, then runs the gated recurrence op on it. The GRU
folds ``b_hh`` into ``xw`` for r and z only; ``b_hn`` stays inside the reset product, as torch computes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastrnn.gated_ops import gru_layer, gru_recurrence, lstm_layer, lstm_recurrence


def _gru_input_bias(b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """``(b_ih + [b_hr, b_hz, 0], b_hn)`` from torch's two GRU bias vectors ``[3H]``."""
    if b_ih is None or b_hh is None:
        return b_ih, None
    hidden = b_hh.size(0) // 3
    return torch.cat([b_ih[: 2 * hidden] + b_hh[: 2 * hidden], b_ih[2 * hidden :]]), b_hh[2 * hidden :]


def _stack(
    step_layer,
    input: Tensor,
    num_layers: int,
    directions: int,
    dropout: float,
    training: bool,
) -> Tensor:
    """Runs ``step_layer(layer_input, k, reverse) -> y`` for every layer and direction, with dropout
    between layers; returns the last layer's output."""
    layer_input = input
    for layer in range(num_layers):
        outputs = [step_layer(layer_input, layer * directions + d, d == 1) for d in range(directions)]
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, -1)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, True)
    if directions == 1 and layer_input.requires_grad:
        # The op saved this y for its backward: the caller gets a copy it may edit in place, as torch's is.
        layer_input = layer_input.clone()
    return layer_input


def gru(
    input: Tensor,
    hx: Tensor,
    weights: Sequence[Tensor],
    *,
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
    finals: list[Tensor] = []

    def layer(x: Tensor, k: int, reverse: bool) -> Tensor:
        w = weights[k * per : (k + 1) * per]
        bias, b_hn = _gru_input_bias(w[2], w[3]) if has_biases else (None, None)
        y, h_n = gru_layer(x, w[0], bias, hx[k], w[1], b_hn, batch_sizes, reverse)
        finals.append(h_n)
        return y

    output = _stack(layer, input, num_layers, directions, dropout, training)
    return output, torch.stack(finals)


def lstm(
    input: Tensor,
    hx: tuple[Tensor, Tensor],
    weights: Sequence[Tensor],
    *,
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
    h_finals: list[Tensor] = []
    c_finals: list[Tensor] = []

    def layer(x: Tensor, k: int, reverse: bool) -> Tensor:
        w = weights[k * per : (k + 1) * per]
        bias = w[2] + w[3] if has_biases else None
        w_hr = w[-1] if proj_size > 0 else None
        y, h_n, c_n = lstm_layer(x, w[0], bias, h0s[k], c0s[k], w[1], w_hr, batch_sizes, reverse)
        h_finals.append(h_n)
        c_finals.append(c_n)
        return y

    output = _stack(layer, input, num_layers, directions, dropout, training)
    return output, (torch.stack(h_finals), torch.stack(c_finals))


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
    _, h_n = gru_recurrence(F.linear(input, w_ih, bias).unsqueeze(0), hx, w_hh, b_hn)
    return h_n


def lstm_cell(
    input: Tensor,
    hx: tuple[Tensor, Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """One LSTM step. ``input``: ``[N, H_in]``; ``hx``: ``([N, H_out], [N, H_out])``. Returns ``(h', c')``."""
    bias = b_ih + b_hh if b_ih is not None and b_hh is not None else None
    _, h_n, c_n = lstm_recurrence(F.linear(input, w_ih, bias).unsqueeze(0), hx[0], hx[1], w_hh)
    return h_n, c_n
