"""The differentiable recurrence op.

Two entries to the same kernels and the same backward math:
- ``RNNRecurrenceFunction`` (``torch.autograd.Function``) for plain eager tensors: a few microseconds of
  overhead a call, which matters for short sequences;
- ``torch.ops.fastrnn.recurrence`` (``torch.library`` custom op with registered fake and autograd, see
  :mod:`fastrnn.ops`) whenever dynamo, export or another tracer is looking, so graphs hold one opaque node.
Double backward works on both: with ``create_graph`` the Function backpropagates through the
``fastrnn::recurrence_backward`` op, whose own autograd is registered. Under torch.func transforms a
``setup_context`` Function calls the ops, whose vmap rules are registered.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastrnn.backends import needs_any_order, select_backend, traced
from fastrnn.ops import (
    check_same_device,
    recurrence,
    recurrence_backward,
    recurrence_input_grads,
    recurrent_weight_grad,
    save_recurrence_context,
)
from fastrnn.reference import ACTIVATIONS, activation_id, rnn_recurrence_ref

__all__ = ["RNNRecurrenceFunction", "recurrent_weight_grad", "rnn_recurrence"]


class RNNRecurrenceFunction(torch.autograd.Function):
    """``(y, h_n) = recurrence(xw, h0, w_hh)`` on plain eager tensors; ``activation`` is 0 (tanh) or 1 (relu).

    Old-style (``forward(ctx, ...)``): a third of the per-call overhead of a ``setup_context`` Function.
    """

    @staticmethod
    def forward(ctx, xw, h0, w_hh, batch_sizes, reverse, activation):
        output = select_backend(xw).fwd(xw, h0, w_hh, batch_sizes, reverse, ACTIVATIONS[activation])
        save_recurrence_context(ctx, (xw, h0, w_hh, batch_sizes, reverse, activation), output)
        return output

    @staticmethod
    def backward(ctx, dy, dh_n):
        h0, w_hh, y = ctx.saved_tensors  # once: non-reentrant checkpointing allows one unpack per backward
        need_dh0 = ctx.needs_input_grad[1]
        args = (dy, dh_n, y, w_hh, ctx.batch_sizes, ctx.reverse)
        if torch.is_grad_enabled():  # create_graph=True: a backward that is itself differentiable
            dz, dh0 = recurrence_backward(*args, ctx.activation, need_dh0)
        else:
            dz, dh0 = select_backend(y).bwd(*args, ACTIVATIONS[ctx.activation], need_dh0=need_dh0)
        return recurrence_input_grads(ctx, h0, y, dz, dh0)


class _RecurrenceUnderTransforms(torch.autograd.Function):
    """The same under torch.func transforms (vmap, grad): functorch needs ``setup_context``, and it batches
    the custom ops through their registered vmap rules. First-order gradients only."""

    generate_vmap_rule = True

    @staticmethod
    def forward(xw, h0, w_hh, batch_sizes, reverse, activation):
        with torch.no_grad():  # this Function is the autograd; the op brings the vmap rule
            return recurrence(xw, h0, w_hh, batch_sizes, reverse, activation)

    setup_context = staticmethod(save_recurrence_context)

    @staticmethod
    def backward(ctx, dy, dh_n):
        h0, w_hh, y = ctx.saved_tensors
        need_dh0 = ctx.needs_input_grad[1]
        with torch.no_grad():
            dz, dh0 = recurrence_backward(dy, dh_n, y, w_hh, ctx.batch_sizes, ctx.reverse, ctx.activation, need_dh0)
            return recurrence_input_grads(ctx, h0, y, dz, dh0)


def rnn_recurrence(
    xw: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
    activation: str = "tanh",
) -> tuple[Tensor, Tensor]:
    """``h_t = act(xw_t + h_{t-1} W_hh^T)`` on the backend chosen for ``xw``, differentiable twice.

    Args:
        xw: ``[T, B, H]`` or packed ``[N, H]``, the input projection with both biases folded in.
        h0: ``[B, H]``. w_hh: ``[H, H]``. batch_sizes: ``[T]`` int64 CPU tensor for packed ``xw``.

    Returns:
        ``y`` (shape of ``xw``) and ``h_n`` ``[B, H]``.
    """
    for name, t in (("xw", xw), ("h0", h0), ("w_hh", w_hh)):
        if not isinstance(t, Tensor):
            raise TypeError(f"fastrnn.rnn_recurrence(): argument '{name}' must be Tensor, not {type(t).__name__}")
    check_same_device(xw, h0, w_hh)
    args = (xw, h0, w_hh, batch_sizes, reverse, activation_id(activation))
    if needs_any_order(xw, h0, w_hh):
        return rnn_recurrence_ref(xw, h0, w_hh, batch_sizes, reverse, activation)
    if torch._C._are_functorch_transforms_active():
        return _RecurrenceUnderTransforms.apply(*args)
    if traced(xw):
        return recurrence(*args)
    return RNNRecurrenceFunction.apply(*args)
