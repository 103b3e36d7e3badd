"""Functional API: stacked, optionally bidirectional RNN, GRU and LSTM layers (one loop for every cell,
:func:`stack`) and the single-step cells.

Only the recurrence is custom: each layer and direction makes the input projection ``x W_ih^T + bias`` and runs
the cell's recurrence op on it (the GRU folds ``b_hh`` into the projection's bias for r and z only; ``b_hn`` stays
inside the reset product, as torch computes it). TorchScript-compatible: scripted modules run the same loop on the
custom ops ``fastrnn::recurrence`` / ``gru_recurrence`` / ``lstm_recurrence``, so a scripted model records
fastrnn's ops. Modes are torch's: ``RNN_TANH``, ``RNN_RELU``, ``GRU``, ``LSTM``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastrnn import ops
from fastrnn.ops import rnn_recurrence


@torch.jit.unused
def _recurrence_under_autocast(
    xw: Tensor, h0: Tensor, w_hh: Tensor, batch_sizes: Optional[Tensor], reverse: bool, activation: str
) -> tuple[Tensor, Tensor]:
    """The op, with torch.autocast's dtype rules (custom ops are not on autocast's lists).

    CUDA: the recurrence runs in the autocast dtype (the kernels accumulate and carry the state in float32).
    CPU: it runs in float32, where the C++ op is, and returns the autocast dtype, as torch.nn.RNN does.
    """
    device = xw.device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return rnn_recurrence(xw, h0, w_hh, batch_sizes, reverse, activation)
    low = torch.get_autocast_dtype(device)
    compute = low if device == "cuda" else torch.float32
    with torch.autocast(device, enabled=False):
        y, h_n = rnn_recurrence(xw.to(compute), h0.to(compute), w_hh.to(compute), batch_sizes, reverse, activation)
    return y.to(low), h_n.to(low)


@torch.jit.unused
def _cuda_algorithm(
    input: Tensor, hx: Tensor, weights: list[Tensor], has_biases: bool, num_layers: int, dropout: float,
    training: bool, bidirectional: bool, nonlinearity: str, batch_sizes: Optional[Tensor],
) -> Optional[tuple[Tensor, Tensor]]:
    """Issue 9 (fastrnn.algo): cuDNN's result when the CUDA algorithm finder picks it for this call, else None."""
    from fastrnn.algo import cuda_call

    return cuda_call(rnn, input, hx, weights, has_biases=has_biases, num_layers=num_layers, dropout=dropout,
                     training=training, bidirectional=bidirectional, nonlinearity=nonlinearity,
                     batch_sizes=batch_sizes)


def _summed(b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> Optional[Tensor]:
    if b_ih is not None and b_hh is not None:
        return b_ih + b_hh
    return b_ih if b_ih is not None else b_hh


def _gru_input_bias(b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """``(b_ih + [b_hr, b_hz, 0], b_hn)`` from torch's two GRU bias vectors ``[3H]``."""
    if b_ih is None or b_hh is None:
        return b_ih, None
    hidden = b_hh.size(0) // 3
    return torch.cat([b_ih[: 2 * hidden] + b_hh[: 2 * hidden], b_ih[2 * hidden :]]), b_hh[2 * hidden :]


def layer(
    mode: str,
    x: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    w_hr: Optional[Tensor],
    states: list[Tensor],
    batch_sizes: Optional[Tensor],
    reverse: bool,
) -> tuple[Tensor, list[Tensor]]:
    """One layer and direction of cell ``mode`` on time-major ``x`` (``[T, B, I]`` or packed ``[N, I]``) from
    ``states`` (``[B, H]`` each; LSTM: h ``[B, P]``, c ``[B, H]``). Returns ``y`` and the final states."""
    if mode == "GRU":
        bias, b_hn = _gru_input_bias(b_ih, b_hh)
        if torch.jit.is_scripting():
            y, h, _ = torch.ops.fastrnn.gru_recurrence(F.linear(x, w_ih, bias), states[0], w_hh, b_hn, batch_sizes,
                                                       reverse)
        else:  # the C++ layer ops where they run (one inference op, or one node owning the projection)
            y, h = ops.layer(ops.GRU, x, w_ih, bias, states[0], w_hh, b_hn, batch_sizes, reverse)
        return y, [h]
    if mode == "LSTM":
        if torch.jit.is_scripting():
            y, h, c, _ = torch.ops.fastrnn.lstm_recurrence(F.linear(x, w_ih, _summed(b_ih, b_hh)), states[0],
                                                           states[1], w_hh, w_hr, batch_sizes, reverse)
        else:
            y, h, c = ops.layer(ops.LSTM, x, w_ih, _summed(b_ih, b_hh), states[0], states[1], w_hh, w_hr,
                                batch_sizes, reverse)
        return y, [h, c]
    xw = F.linear(x, w_ih, _summed(b_ih, b_hh))
    if torch.jit.is_scripting():  # the custom op, with its registered autograd
        y, h = torch.ops.fastrnn.recurrence(xw, states[0], w_hh, batch_sizes, reverse, 0 if mode == "RNN_TANH" else 1)
    else:
        y, h = _recurrence_under_autocast(xw, states[0], w_hh, batch_sizes, reverse,
                                          "tanh" if mode == "RNN_TANH" else "relu")
    return y, [h]


def stack(
    mode: str,
    input: Tensor,
    hx: list[Tensor],
    weights: list[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
    proj_size: int = 0,
    batch_sizes: Optional[Tensor] = None,
) -> tuple[Tensor, list[Tensor]]:
    """A multi-layer RNN / GRU / LSTM (``mode`` as torch names it) over a whole sequence.

    Args:
        input: ``[L, N, H_in]`` (time-major) or packed data ``[sum(batch_sizes), H_in]``.
        hx: the states, ``[num_layers * D, N, H_out]`` each with ``D = 2`` if bidirectional else 1 (LSTM: h, then
            c ``[num_layers * D, N, H_cell]``; ``H_out`` is proj_size when it is set).
        weights: per layer and direction ``w_ih, w_hh[, b_ih, b_hh][, w_hr]``, in torch's module order.
        batch_sizes: ``[L]`` int64 CPU tensor when ``input`` is packed.

    Returns:
        output ``[L, N, D * H_out]`` (or packed ``[sum(batch_sizes), D * H_out]``) and the final states like ``hx``.
    """
    directions = 2 if bidirectional else 1
    per = (4 if has_biases else 2) + (1 if proj_size > 0 else 0)
    layer_input = input
    finals: list[list[Tensor]] = [[] for _ in range(len(hx))]
    for index in range(num_layers):
        outputs: list[Tensor] = []
        for direction in range(directions):
            k = index * directions + direction
            first = k * per
            b_ih: Optional[Tensor] = None
            b_hh: Optional[Tensor] = None
            if has_biases:
                b_ih, b_hh = weights[first + 2], weights[first + 3]
            w_hr: Optional[Tensor] = None
            if proj_size > 0:
                w_hr = weights[first + per - 1]
            y, states = layer(mode, layer_input, weights[first], weights[first + 1], b_ih, b_hh, w_hr,
                              [h[k] for h in hx], batch_sizes, direction == 1)
            outputs.append(y)
            for i in range(len(states)):
                finals[i].append(states[i])
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, -1)
        if dropout > 0 and training and index < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, True)
    if directions == 1 and (layer_input.requires_grad or torch.jit.is_tracing()):  # a trace records one graph
        # The op saved this y for its backward: the caller gets a copy it may edit in place, as torch's
        # output (a concatenation of the steps) is. One [L, N, H_out] more, only when autograd records.
        layer_input = layer_input.clone()
    return layer_input, [torch.stack(f) for f in finals]


def rnn(
    input: Tensor,
    hx: Tensor,
    weights: list[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
    nonlinearity: str = "tanh",
    batch_sizes: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """A multi-layer Elman RNN over a whole sequence (TorchScript-compatible: scripted modules run it too).

    Args:
        input: ``[L, N, H_in]`` (time-major) or packed data ``[sum(batch_sizes), H_in]``.
        hx: ``[num_layers * D, N, H_out]`` with ``D = 2`` if bidirectional else 1.
        weights: per layer and direction ``w_ih, w_hh[, b_ih, b_hh]``, in ``torch.nn.RNN`` order.
        batch_sizes: ``[L]`` int64 CPU tensor when ``input`` is packed.

    Returns:
        output ``[L, N, D * H_out]`` (or packed ``[sum(batch_sizes), D * H_out]``) and h_n like ``hx``.
    """
    if not torch.jit.is_scripting():
        if input.is_cuda:  # issue 9: the algorithm finder may run this whole call as torch's cuDNN RNN
            found = _cuda_algorithm(input, hx, weights, has_biases, num_layers, dropout, training, bidirectional,
                                    nonlinearity, batch_sizes)
            if found is not None:
                return found
    mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
    output, finals = stack(mode, input, [hx], weights, has_biases, num_layers, dropout, training, bidirectional, 0,
                           batch_sizes)
    return output, finals[0]


def rnn_cell(
    input: Tensor,
    hx: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    nonlinearity: str = "tanh",
) -> Tensor:
    """One step: ``h' = act(input W_ih^T + b_ih + hx W_hh^T + b_hh)``.

    ``input``: ``[N, H_in]``; ``hx``: ``[N, H_out]``. Returns ``[N, H_out]``.
    """
    xw = F.linear(input, w_ih, _summed(b_ih, b_hh))
    y, _ = _recurrence_under_autocast(xw.unsqueeze(0), hx, w_hh, None, False, nonlinearity)
    return y[0]


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
    return ops.gru_recurrence(xw, hx, w_hh, b_hn)[1]


def lstm_cell(
    input: Tensor,
    hx: tuple[Tensor, Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """One LSTM step. ``input``: ``[N, H_in]``; ``hx``: ``([N, H_out], [N, H_out])``. Returns ``(h', c')``."""
    xw = F.linear(input, w_ih, _summed(b_ih, b_hh)).unsqueeze(0)
    if torch.jit.is_scripting():
        _, h_n, c_n, _ = torch.ops.fastrnn.lstm_recurrence(xw, hx[0], hx[1], w_hh, None, None, False)
        return h_n, c_n
    _, h_n, c_n = ops.lstm_recurrence(xw, hx[0], hx[1], w_hh)
    return h_n, c_n
