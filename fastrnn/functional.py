"""Functional API: stacked, optionally bidirectional RNN layers and the single-step cell.

Only the recurrence is custom: each layer and direction makes one GEMM for all steps,
``xw = x W_ih^T + (b_ih + b_hh)``, then runs :func:`fastrnn.autograd.rnn_recurrence` on it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastrnn.autograd import rnn_recurrence


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
    directions = 2 if bidirectional else 1
    per_direction = 4 if has_biases else 2
    layer_input = input
    finals: list[Tensor] = []
    for layer in range(num_layers):
        outputs: list[Tensor] = []
        for direction in range(directions):
            k = layer * directions + direction
            first = k * per_direction
            bias: Optional[Tensor] = None
            if has_biases:
                bias = weights[first + 2] + weights[first + 3]
            xw = F.linear(layer_input, weights[first], bias)
            if torch.jit.is_scripting():  # the custom op, with its registered autograd
                activation = 0 if nonlinearity == "tanh" else 1
                y, h_n = torch.ops.fastrnn.recurrence(xw, hx[k], weights[first + 1], batch_sizes, direction == 1,
                                                      activation)
            else:
                y, h_n = _recurrence_under_autocast(xw, hx[k], weights[first + 1], batch_sizes, direction == 1,
                                                    nonlinearity)
            outputs.append(y)
            finals.append(h_n)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, -1)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, True)
    if directions == 1 and (layer_input.requires_grad or torch.jit.is_tracing()):  # a trace records one graph
        # The op saved this y for its backward: the caller gets a copy it may edit in place, as torch's
        # output (a concatenation of the steps) is. One [L, N, H_out] more, only when autograd records.
        layer_input = layer_input.clone()
    return layer_input, torch.stack(finals)


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
    bias = b_ih + b_hh if b_ih is not None and b_hh is not None else b_ih if b_ih is not None else b_hh
    xw = F.linear(input, w_ih, bias)
    y, _ = _recurrence_under_autocast(xw.unsqueeze(0), hx, w_hh, None, False, nonlinearity)
    return y[0]
