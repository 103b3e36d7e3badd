"""The recurrence as ``torch.library`` custom ops, so ``torch.compile(fullgraph=True)`` and ``torch.export``
see one opaque node per layer and direction instead of graph-breaking on a Python autograd.Function.

``fastrnn::recurrence(xw, h0, w_hh, batch_sizes, reverse, activation) -> (y, h_n)`` runs on the backend
chosen for ``xw`` (see :mod:`fastrnn.backends`). Its registered backward is itself an op,
``fastrnn::recurrence_backward``, whose own registered backward, ``fastrnn::recurrence_double_backward``,
makes double backward work with the reference's written-out second-order step loop (second derivatives
are rare and small; triple backward is not supported).
Fake implementations only allocate, never touch data.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastrnn._cpp import on_load
from fastrnn.backends import select_backend
from fastrnn.flops import register_flop_formulas
from fastrnn.reference import ACTIVATIONS, prev_state_index, rnn_recurrence_bwd_ref, rnn_recurrence_double_bwd_ref


def check_same_device(*tensors: Tensor) -> None:
    """What a fake (meta) implementation raises when its tensors are on different devices, in torch's words:
    a meta tensor among CPU ones would otherwise get shapes back and no error."""
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        expected = next((d for d in devices if d.type == "meta"), tensors[0].device)
        wrong = next(t.device for t in tensors if t.device != expected)
        raise RuntimeError(f"Tensor on device {wrong} is not on the expected device {expected}!")


@torch.library.custom_op("fastrnn::recurrence", mutates_args=())
def recurrence(
    xw: Tensor, h0: Tensor, w_hh: Tensor, batch_sizes: Optional[Tensor], reverse: bool, activation: int
) -> tuple[Tensor, Tensor]:
    return select_backend(xw).fwd(xw, h0, w_hh, batch_sizes, reverse, ACTIVATIONS[activation])


@recurrence.register_fake
def _(xw, h0, w_hh, batch_sizes, reverse, activation):
    check_same_device(xw, h0, w_hh)
    return torch.empty_like(xw), torch.empty_like(h0)


@torch.library.custom_op("fastrnn::recurrence_backward", mutates_args=())
def recurrence_backward(
    dy: Tensor,
    dh_n: Tensor,
    y: Tensor,
    w_hh: Tensor,
    batch_sizes: Optional[Tensor],
    reverse: bool,
    activation: int,
    need_dh0: bool,
) -> tuple[Tensor, Tensor]:
    dz, dh0 = select_backend(y).bwd(
        dy, dh_n, y, w_hh, batch_sizes, reverse, ACTIVATIONS[activation], need_dh0=need_dh0
    )
    return dz, dh0 if need_dh0 else torch.zeros_like(dh_n)


@recurrence_backward.register_fake
def _(dy, dh_n, y, w_hh, batch_sizes, reverse, activation, need_dh0):
    check_same_device(dy, dh_n, y, w_hh)
    return torch.empty_like(y), torch.empty_like(dh_n)


def recurrent_weight_grad(
    dz: Tensor, y: Tensor, h0: Tensor, batch_sizes: Optional[Tensor], reverse: bool
) -> Tensor:
    """``dW_hh = dz^T h_prev`` over all steps and rows: one GEMM (two for padded input, no copy).

    ``dz``, ``y``: ``[T, B, H]`` or packed ``[N, H]``; ``h0``: ``[B, H]``. Returns ``[H, H]``.
    """
    hidden = y.size(-1)
    if batch_sizes is None:
        first = -1 if reverse else 0  # not size(0) - 1: a traced backward would specialize on T
        dw = dz[first].t().mm(h0)
        if y.size(0) > 1:
            later, prev = (dz[:-1], y[1:]) if reverse else (dz[1:], y[:-1])
            dw = dw.addmm(later.reshape(-1, hidden).t(), prev.reshape(-1, hidden))
        return dw
    index = prev_state_index(batch_sizes, reverse, y.size(0)).to(y.device)
    h_prev = torch.cat([y, h0]).index_select(0, index)  # [N, H]
    return dz.t().mm(h_prev)


def save_recurrence_context(ctx, inputs, output) -> None:
    """What every autograd entry of the op keeps for backward: h0, w_hh and y, plus the step layout."""
    xw, h0, w_hh, batch_sizes, reverse, activation = inputs
    ctx.save_for_backward(h0, w_hh, output[0])
    ctx.batch_sizes, ctx.reverse, ctx.activation = batch_sizes, reverse, activation


def recurrence_input_grads(ctx, h0: Tensor, y: Tensor, dz: Tensor, dh0: Tensor) -> tuple:
    """The gradients of (xw, h0, w_hh, batch_sizes, reverse, activation) from the op's backward outputs.
    ``h0`` and ``y`` come from the caller's one read of ``ctx.saved_tensors``."""
    dw = recurrent_weight_grad(dz, y, h0, ctx.batch_sizes, ctx.reverse) if ctx.needs_input_grad[2] else None
    return dz, dh0 if ctx.needs_input_grad[1] else None, dw, None, None, None


def _recurrence_grad(ctx, dy, dh_n):
    h0, w_hh, y = ctx.saved_tensors
    dy = torch.zeros_like(y) if dy is None else dy
    dh_n = torch.zeros_like(h0) if dh_n is None else dh_n
    need_dh0 = ctx.needs_input_grad[1]
    dz, dh0 = recurrence_backward(dy, dh_n, y, w_hh, ctx.batch_sizes, ctx.reverse, ctx.activation, need_dh0)
    return recurrence_input_grads(ctx, h0, y, dz, dh0)


recurrence.register_autograd(_recurrence_grad, setup_context=save_recurrence_context)


@torch.library.custom_op("fastrnn::recurrence_double_backward", mutates_args=())
def recurrence_double_backward(
    ddz: Tensor,
    ddh0: Tensor,
    dy: Tensor,
    dh_n: Tensor,
    y: Tensor,
    w_hh: Tensor,
    batch_sizes: Optional[Tensor],
    reverse: bool,
    activation: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``recurrence_backward``'s (dz, dh0) with respect to (dy, dh_n, y, w_hh): the reference's
    step loop over the batch sizes, opaque to tracers."""
    return rnn_recurrence_double_bwd_ref(ddz, ddh0, dy, dh_n, y, w_hh, batch_sizes, reverse, ACTIVATIONS[activation])


@recurrence_double_backward.register_fake
def _(ddz, ddh0, dy, dh_n, y, w_hh, batch_sizes, reverse, activation):
    check_same_device(ddz, ddh0, dy, dh_n, y, w_hh)
    return torch.empty_like(dy), torch.empty_like(dh_n), torch.empty_like(y), torch.empty_like(w_hh)


def _setup_double_backward(ctx, inputs, output):
    *tensors, batch_sizes, reverse, activation = inputs
    ctx.save_for_backward(*tensors)
    ctx.batch_sizes, ctx.reverse, ctx.activation = batch_sizes, reverse, activation


def _double_backward_grad(ctx, *cotangents):
    """Third and higher orders. The double backward is the vector-Jacobian product of the reference's
    backward, which is written in out-of-place torch ops; so it is rebuilt here as such a product with
    torch.func and differentiated once more. torch.func keeps its levels apart from the outer autograd, so
    with ``create_graph`` the result stays differentiable and every further order works."""
    tensors = ctx.saved_tensors
    act = ACTIVATIONS[ctx.activation]

    def double_backward(ddz, ddh0, dy, dh_n, y, w_hh):
        _, vjp = torch.func.vjp(
            lambda *a: rnn_recurrence_bwd_ref(*a, ctx.batch_sizes, ctx.reverse, act), dy, dh_n, y, w_hh
        )
        return vjp((ddz, ddh0))

    _, vjp = torch.func.vjp(double_backward, *tensors)
    cotangents = tuple(torch.zeros_like(t) if c is None else c for c, t in zip(cotangents, tensors[2:]))
    grads = vjp(cotangents)
    return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:6])), None, None, None)


recurrence_double_backward.register_autograd(_double_backward_grad, setup_context=_setup_double_backward)


def _setup_backward(ctx, inputs, output):
    dy, dh_n, y, w_hh, batch_sizes, reverse, activation, need_dh0 = inputs
    ctx.save_for_backward(dy, dh_n, y, w_hh)
    ctx.batch_sizes, ctx.reverse, ctx.activation = batch_sizes, reverse, activation


def _backward_grad(ctx, ddz, ddh0):
    dy, dh_n, y, w_hh = ctx.saved_tensors
    ddz = torch.zeros_like(y) if ddz is None else ddz
    ddh0 = torch.zeros_like(dh_n) if ddh0 is None else ddh0
    grads = recurrence_double_backward(ddz, ddh0, dy, dh_n, y, w_hh, ctx.batch_sizes, ctx.reverse, ctx.activation)
    return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:4])), None, None, None, None)


recurrence_backward.register_autograd(_backward_grad, setup_context=_setup_backward)


def _to_front(t: Optional[Tensor], dim: Optional[int], size: int) -> Optional[Tensor]:
    if t is None or dim is None:
        return None if t is None else t.unsqueeze(0).expand(size, *t.shape)
    return t.movedim(dim, 0)


def _vmap_by_loop(op, tensor_args: int):
    """A vmap rule that runs the op once per vmapped slice (batch_sizes must not be vmapped)."""

    def rule(info, in_dims, *args):
        if any(d is not None for d in in_dims[tensor_args:]):
            raise ValueError("fastrnn: torch.func.vmap over batch_sizes is not supported")
        tensors = [_to_front(t, d, info.batch_size) for t, d in zip(args[:tensor_args], in_dims)]
        outs = [op(*(t[i] for t in tensors), *args[tensor_args:]) for i in range(info.batch_size)]
        stacked = tuple(torch.stack(parts) for parts in zip(*outs))
        return stacked, (0,) * len(stacked)

    return rule


def _vmap_recurrence(info, in_dims, xw, h0, w_hh, batch_sizes, reverse, activation):
    # Shared weights over padded input: fold the vmapped dimension into the batch, one op call.
    if in_dims[2] is None and batch_sizes is None and in_dims[3] is None:
        size = info.batch_size
        xs, hs = _to_front(xw, in_dims[0], size), _to_front(h0, in_dims[1], size)  # [V, T, B, H], [V, B, H]
        steps, batch, hidden = xs.shape[1:]
        y, h_n = recurrence(xs.transpose(0, 1).reshape(steps, size * batch, hidden),
                            hs.reshape(size * batch, hidden), w_hh, None, reverse, activation)
        return (y.reshape(steps, size, batch, hidden).transpose(0, 1), h_n.reshape(size, batch, hidden)), (0, 0)
    return _vmap_by_loop(recurrence, 3)(info, in_dims, xw, h0, w_hh, batch_sizes, reverse, activation)


if hasattr(recurrence, "register_vmap"):  # torch >= 2.5; older torch runs torch.func through its fallback
    recurrence.register_vmap(_vmap_recurrence)
    recurrence_backward.register_vmap(_vmap_by_loop(recurrence_backward, 4))
    recurrence_double_backward.register_vmap(_vmap_by_loop(recurrence_double_backward, 6))


def _register_cpp_fakes() -> None:
    """Shape-only kernels of the Elman C++ ops, for tracers and torch.library.opcheck (the gated ones: see
    :func:`fastrnn.gated_ops._register_cpp_fakes`)."""

    @torch.library.register_fake("fastrnn::rnn_fwd")
    def _(xw, h0, w_hh, batch_sizes, reverse, activation):
        check_same_device(xw, h0, w_hh)
        return torch.empty_like(xw), torch.empty_like(h0)

    @torch.library.register_fake("fastrnn::rnn_bwd")
    def _(dy, dh_n, y, w_hh, batch_sizes, reverse, activation, need_dh0=True):
        check_same_device(dy, dh_n, y, w_hh)
        return torch.empty_like(y), torch.empty_like(dh_n)


register_flop_formulas()
on_load(_register_cpp_fakes)
on_load(register_flop_formulas)
