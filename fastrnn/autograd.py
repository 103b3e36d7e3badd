"""``RNNRecurrenceFunction``: the recurrence op with its backward, on whichever backend runs it."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from fastrnn.backends import Backend, select_backend
from fastrnn.reference import prev_state_index, rnn_recurrence_bwd_ref


def recurrent_weight_grad(
    dz: Tensor, y: Tensor, h0: Tensor, batch_sizes: Optional[Tensor], reverse: bool
) -> Tensor:
    """``dW_hh = dz^T h_prev`` over all steps and rows: one GEMM (two for padded input, no copy).

    ``dz``, ``y``: ``[T, B, H]`` or packed ``[N, H]``; ``h0``: ``[B, H]``. Returns ``[H, H]``.
    """
    hidden = y.size(-1)
    if batch_sizes is None:
        first = y.size(0) - 1 if reverse else 0
        dw = dz[first].t().mm(h0)
        if y.size(0) > 1:
            later, prev = (dz[:-1], y[1:]) if reverse else (dz[1:], y[:-1])
            dw = dw.addmm(later.reshape(-1, hidden).t(), prev.reshape(-1, hidden))
        return dw
    index = prev_state_index(batch_sizes, reverse).to(y.device)
    h_prev = torch.cat([y, h0]).index_select(0, index)  # [N, H]
    return dz.t().mm(h_prev)


class RNNRecurrenceFunction(torch.autograd.Function):
    """``(y, h_n) = recurrence(xw, h0, w_hh)``; see :mod:`fastrnn.reference` for the shapes."""

    @staticmethod
    def forward(
        ctx,
        xw: Tensor,
        h0: Tensor,
        w_hh: Tensor,
        batch_sizes: Optional[Tensor],
        reverse: bool,
        activation: str,
        backend: Backend,
    ) -> tuple[Tensor, Tensor]:
        y, h_n = backend.fwd(xw, h0, w_hh, batch_sizes, reverse, activation)
        ctx.save_for_backward(h0, w_hh, y)
        ctx.batch_sizes = batch_sizes
        ctx.reverse = reverse
        ctx.activation = activation
        ctx.backend = backend
        return y, h_n

    @staticmethod
    def backward(ctx, dy: Tensor, dh_n: Tensor):
        h0, w_hh, y = ctx.saved_tensors
        args = (dy, dh_n, y, w_hh, ctx.batch_sizes, ctx.reverse, ctx.activation)
        if torch.is_grad_enabled():
            # create_graph=True: backpropagate with differentiable ops on the saved y, whose own gradient
            # flows back through this Function, so double backward is exact on every backend.
            dz, dh0 = rnn_recurrence_bwd_ref(*args)
        else:
            dz, dh0 = ctx.backend.bwd(*args, need_dh0=ctx.needs_input_grad[1])
        dw = None
        if ctx.needs_input_grad[2]:
            dw = recurrent_weight_grad(dz, y, h0, ctx.batch_sizes, ctx.reverse)
        return dz, dh0 if ctx.needs_input_grad[1] else None, dw, None, None, None, None


def rnn_recurrence(
    xw: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
    activation: str = "tanh",
) -> tuple[Tensor, Tensor]:
    """The differentiable op on the backend chosen for ``xw`` (see :func:`fastrnn.backends.select_backend`).

    Args:
        xw: ``[T, B, H]`` or packed ``[N, H]``, the input projection with both biases folded in.
        h0: ``[B, H]``. w_hh: ``[H, H]``. batch_sizes: ``[T]`` int64 CPU tensor for packed ``xw``.

    Returns:
        ``y`` (shape of ``xw``) and ``h_n`` ``[B, H]``.
    """
    return RNNRecurrenceFunction.apply(
        xw, h0, w_hh, batch_sizes, reverse, activation, select_backend(xw)
    )
