"""The gated recurrences (GRU, LSTM) as differentiable ops, wired as the Elman op is (:mod:`fastrnn.ops`,
:mod:`fastrnn.autograd`): an old-style ``autograd.Function`` for plain eager tensors (least per-call
overhead) and ``torch.library`` custom ops with fake and registered autograd whenever dynamo, export or
torch.func look, so graphs hold one opaque node per layer and direction.

Each forward runs the C++ op (``torch.ops.fastrnn.gru_fwd`` / ``lstm_fwd``: CPU, float32 and float64) or the
reference (anything else), and saves the workspace ``ws`` its backward needs (see
:mod:`fastrnn.gated_reference`). Backward runs BPTT in the same backend and returns the pre-activation
gradients; ``W_hh``, ``b_hn`` and ``W_hr`` gradients are then one GEMM or reduction each, here.

An eager training call of a whole layer is one node that owns the input projection too
(``LSTMLayerFunction`` / ``GRULayerFunction``); under ``create_graph`` its backward differentiates the
pure-PyTorch reference layer recomputed on the saved inputs, so the modules' eager gradients of any order
are the reference's. The op-level entries (``gru_recurrence`` / ``lstm_recurrence``, which compiled, exported
and torch.func calls reach) are first-order: a second backward raises :data:`DOUBLE_BACKWARD_ERROR`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F
from torch import Tensor

from fastrnn import gated_reference as ref
from fastrnn._cpp import on_load
from fastrnn.backends import cpp_runs, needs_any_order, traced
from fastrnn.flops import register_flop_formulas
from fastrnn.reference import prev_state_index

DOUBLE_BACKWARD_ERROR = (
    "fastrnn's gated recurrence op supports first-order gradients only when it is called directly or traced "
    "(torch.compile, export, torch.func); eager fastrnn.GRU / fastrnn.LSTM modules support higher orders, and "
    "torch.nn.GRU / torch.nn.LSTM do everywhere"
)
_fakes_registered = False


def _register_cpp_fakes() -> None:
    """Shape-only kernels of the C++ ops, for torch.library.opcheck and tracers that reach them; run by
    :func:`fastrnn._cpp.on_load` when the ops load."""
    global _fakes_registered
    if _fakes_registered:
        return
    _fakes_registered = True

    @torch.library.register_fake("fastrnn::gru_fwd")
    def _(xw, h0, w_hh, b_hn, batch_sizes, reverse):
        hidden = h0.size(-1)
        return xw.new_empty(*xw.shape[:-1], hidden), h0.new_empty(h0.shape), xw.new_empty(*xw.shape[:-1], 4 * hidden)

    @torch.library.register_fake("fastrnn::gru_bwd")
    def _(dy, dh_n, y, ws, h0, w_hh, batch_sizes, reverse, need_dh0):
        wide = y.new_empty(*y.shape[:-1], 3 * y.size(-1))
        return wide, torch.empty_like(wide), dh_n.new_empty(dh_n.shape)

    @torch.library.register_fake("fastrnn::lstm_fwd")
    def _(xw, h0, c0, w_hh, w_hr, batch_sizes, reverse):
        lead, hidden = xw.shape[:-1], c0.size(-1)
        saved = 5 * hidden if w_hr is None else 6 * hidden
        return (xw.new_empty(*lead, h0.size(-1)), h0.new_empty(h0.shape), c0.new_empty(c0.shape),
                xw.new_empty(*lead, saved))

    @torch.library.register_fake("fastrnn::gru_infer")
    def _(x, w_ih, bias, h0, w_hh, b_hn, batch_sizes, reverse):
        return x.new_empty(*x.shape[:-1], h0.size(-1)), h0.new_empty(h0.shape)

    @torch.library.register_fake("fastrnn::lstm_infer")
    def _(x, w_ih, bias, h0, c0, w_hh, w_hr, batch_sizes, reverse):
        return x.new_empty(*x.shape[:-1], h0.size(-1)), h0.new_empty(h0.shape), c0.new_empty(c0.shape)

    @torch.library.register_fake("fastrnn::gru_layer_fwd")
    def _(x, w_ih, bias, h0, w_hh, b_hn, batch_sizes, reverse):
        hidden = h0.size(-1)
        return x.new_empty(*x.shape[:-1], hidden), h0.new_empty(h0.shape), x.new_empty(*x.shape[:-1], 4 * hidden)

    @torch.library.register_fake("fastrnn::lstm_layer_fwd")
    def _(x, w_ih, bias, h0, c0, w_hh, w_hr, batch_sizes, reverse):
        lead, hidden = x.shape[:-1], c0.size(-1)
        saved = 5 * hidden if w_hr is None else 6 * hidden
        return (x.new_empty(*lead, h0.size(-1)), h0.new_empty(h0.shape), c0.new_empty(c0.shape),
                x.new_empty(*lead, saved))

    @torch.library.register_fake("fastrnn::mm_nn")
    def _(a, b, bias=None):
        return a.new_empty(a.size(0), b.size(1))

    @torch.library.register_fake("fastrnn::lstm_bwd")
    def _(dy, dh_n, dc_n, ws, c0, w_hh, w_hr, batch_sizes, reverse, need_dh0):
        dh_all = dy.new_empty(dy.shape) if w_hr is not None else dy.new_empty(0)
        return ws.new_empty(*ws.shape[:-1], 4 * c0.size(-1)), dh_all, dh_n.new_empty(dh_n.shape), c0.new_empty(c0.shape)


def _use_cpp(x: Tensor) -> bool:
    """The C++ op for CPU float32/float64 when it loads, else the reference (:func:`fastrnn.backends.cpp_runs`)."""
    return cpp_runs(x, "GRU/LSTM")


def gru_fwd(xw, h0, w_hh, b_hn, batch_sizes, reverse):
    if _use_cpp(xw):
        return torch.ops.fastrnn.gru_fwd(xw, h0, w_hh, b_hn, batch_sizes, reverse)
    return ref.gru_recurrence_ref(xw, h0, w_hh, b_hn, batch_sizes, reverse)


def gru_infer(xw, h0, w_hh, b_hn, batch_sizes, reverse):
    """``gru_fwd`` without the workspace: for calls that nothing will differentiate."""
    if _use_cpp(xw):
        return torch.ops.fastrnn.gru_infer(xw, None, None, h0, w_hh, b_hn, batch_sizes, reverse)
    return ref.gru_recurrence_ref(xw, h0, w_hh, b_hn, batch_sizes, reverse)[:2]


def gru_bwd(dy, dh_n, y, ws, h0, w_hh, batch_sizes, reverse, need_dh0):
    if _use_cpp(y):
        return torch.ops.fastrnn.gru_bwd(dy, dh_n, y, ws, h0, w_hh, batch_sizes, reverse, need_dh0)
    return ref.gru_recurrence_bwd_ref(dy, dh_n, y, ws, h0, w_hh, batch_sizes, reverse)


def lstm_fwd(xw, h0, c0, w_hh, w_hr, batch_sizes, reverse):
    if _use_cpp(xw):
        return torch.ops.fastrnn.lstm_fwd(xw, h0, c0, w_hh, w_hr, batch_sizes, reverse)
    return ref.lstm_recurrence_ref(xw, h0, c0, w_hh, w_hr, batch_sizes, reverse)


def lstm_infer(xw, h0, c0, w_hh, w_hr, batch_sizes, reverse):
    """``lstm_fwd`` without the workspace: for calls that nothing will differentiate."""
    if _use_cpp(xw):
        return torch.ops.fastrnn.lstm_infer(xw, None, None, h0, c0, w_hh, w_hr, batch_sizes, reverse)
    return ref.lstm_recurrence_ref(xw, h0, c0, w_hh, w_hr, batch_sizes, reverse)[:3]


def lstm_bwd(dy, dh_n, dc_n, ws, c0, w_hh, w_hr, batch_sizes, reverse, need_dh0):
    if _use_cpp(ws):
        return torch.ops.fastrnn.lstm_bwd(dy, dh_n, dc_n, ws, c0, w_hh, w_hr, batch_sizes, reverse, need_dh0)
    return ref.lstm_recurrence_bwd_ref(dy, dh_n, dc_n, ws, c0, w_hh, w_hr, batch_sizes, reverse)


def state_weight_grad(dg: Tensor, y: Tensor, h0: Tensor, batch_sizes: Optional[Tensor], reverse: bool) -> Tensor:
    """``dW_hh = dg^T h_prev`` over all steps and rows, ``h_prev`` being the state each step read.

    ``dg``: ``[T, B, G]`` or ``[N, G]``; ``y``: ``[T, B, P]`` or ``[N, P]``; ``h0``: ``[B, P]``. Returns ``[G, P]``.
    """
    gates, width = dg.size(-1), y.size(-1)
    if batch_sizes is None:
        first = -1 if reverse else 0  # not size(0) - 1: a traced backward would specialize on T
        dw = dg[first].t().mm(h0)
        if y.size(0) > 1:
            later, prev = (dg[:-1], y[1:]) if reverse else (dg[1:], y[:-1])
            dw = dw.addmm(later.reshape(-1, gates).t(), prev.reshape(-1, width))
        return dw
    index = prev_state_index(batch_sizes, reverse, y.size(0)).to(y.device)
    return dg.t().mm(torch.cat([y, h0]).index_select(0, index))


def _contiguous(tensors: tuple) -> tuple:
    """The custom ops' outputs in the layout their fake kernels promise (dense, row-major)."""
    return tuple(t.contiguous() for t in tensors)


def _zeros_if_none(grad: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


# --- GRU ------------------------------------------------------------------------------------------------


def _gru_save(ctx, inputs, output) -> None:
    xw, h0, w_hh, b_hn, batch_sizes, reverse = inputs
    ctx.save_for_backward(h0, w_hh, output[0], output[2])
    ctx.has_b_hn, ctx.batch_sizes, ctx.reverse = b_hn is not None, batch_sizes, reverse


def _gru_recurrence_grads(dy: Tensor, dh_n: Tensor, saved: tuple, need: tuple, has_b_hn: bool, batch_sizes,
                          reverse: bool, backward) -> tuple:
    """``(dxw, dh0, dW_hh, db_hn)`` of the GRU recurrence from ``saved = (h0, w_hh, y, ws)``; ``need`` says which
    of ``(h0, w_hh, b_hn)`` want a gradient (None where not)."""
    h0, w_hh, y, ws = saved
    dxw, dg, dh0 = backward(dy, dh_n, y, ws, h0, w_hh, batch_sizes, reverse, need[0])
    hidden = y.size(-1)
    dw = state_weight_grad(dg, y, h0, batch_sizes, reverse) if need[1] else None
    db = dg.reshape(-1, 3 * hidden)[:, 2 * hidden :].sum(0) if has_b_hn and need[2] else None
    return dxw, dh0 if need[0] else None, dw, db


def _gru_grads(ctx, dy: Tensor, dh_n: Tensor, backward) -> tuple:
    """The gradients of (xw, h0, w_hh, b_hn, batch_sizes, reverse)."""
    grads = _gru_recurrence_grads(dy, dh_n, ctx.saved_tensors, ctx.needs_input_grad[1:4], ctx.has_b_hn,
                                  ctx.batch_sizes, ctx.reverse, backward)
    return *grads, None, None


class GRURecurrenceFunction(torch.autograd.Function):
    """``(y, h_n) = gru(xw, h0, w_hh, b_hn)`` on plain eager tensors (see :func:`gru_recurrence`)."""

    @staticmethod
    def forward(ctx, xw, h0, w_hh, b_hn, batch_sizes, reverse):
        output = gru_fwd(xw, h0, w_hh, b_hn, batch_sizes, reverse)
        _gru_save(ctx, (xw, h0, w_hh, b_hn, batch_sizes, reverse), output)
        return output[0], output[1]

    @staticmethod
    def backward(ctx, dy, dh_n):
        if torch.is_grad_enabled():
            raise RuntimeError(DOUBLE_BACKWARD_ERROR)
        return _gru_grads(ctx, dy, dh_n, gru_bwd)


@torch.library.custom_op("fastrnn::gru_recurrence", mutates_args=())
def gru_recurrence_op(
    xw: Tensor, h0: Tensor, w_hh: Tensor, b_hn: Optional[Tensor], batch_sizes: Optional[Tensor], reverse: bool
) -> tuple[Tensor, Tensor, Tensor]:
    return _contiguous(gru_fwd(xw, h0, w_hh, b_hn, batch_sizes, reverse))


@gru_recurrence_op.register_fake
def _(xw, h0, w_hh, b_hn, batch_sizes, reverse):
    hidden = h0.size(-1)
    return xw.new_empty(*xw.shape[:-1], hidden), h0.new_empty(h0.shape), xw.new_empty(*xw.shape[:-1], 4 * hidden)


@torch.library.custom_op("fastrnn::gru_recurrence_backward", mutates_args=())
def gru_recurrence_backward_op(
    dy: Tensor,
    dh_n: Tensor,
    y: Tensor,
    ws: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    batch_sizes: Optional[Tensor],
    reverse: bool,
    need_dh0: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    dxw, dg, dh0 = gru_bwd(dy, dh_n, y, ws, h0, w_hh, batch_sizes, reverse, need_dh0)
    return _contiguous((dxw, dg, dh0 if need_dh0 else torch.zeros_like(dh_n)))


@gru_recurrence_backward_op.register_fake
def _(dy, dh_n, y, ws, h0, w_hh, batch_sizes, reverse, need_dh0):
    wide = y.new_empty(*y.shape[:-1], 3 * y.size(-1))
    return wide, torch.empty_like(wide), dh_n.new_empty(dh_n.shape)


def _gru_op_grad(ctx, dy, dh_n, _dws):
    _, _, y, _ = ctx.saved_tensors
    h0 = ctx.saved_tensors[0]
    return _gru_grads(ctx, _zeros_if_none(dy, y), _zeros_if_none(dh_n, h0), gru_recurrence_backward_op)


gru_recurrence_op.register_autograd(_gru_op_grad, setup_context=_gru_save)


# --- LSTM -----------------------------------------------------------------------------------------------


def _lstm_save(ctx, inputs, output) -> None:
    xw, h0, c0, w_hh, w_hr, batch_sizes, reverse = inputs
    ctx.save_for_backward(h0, c0, w_hh, w_hr, output[0], output[3])
    ctx.batch_sizes, ctx.reverse = batch_sizes, reverse


def _lstm_recurrence_grads(dy: Tensor, dh_n: Tensor, dc_n: Tensor, saved: tuple, need: tuple, batch_sizes,
                           reverse: bool, backward) -> tuple:
    """``(da, dh0, dc0, dW_hh, dW_hr)`` of the LSTM recurrence from ``saved = (h0, c0, w_hh, w_hr, y, ws)``;
    ``need`` says which of ``(h0, c0, w_hh, w_hr)`` want a gradient (None where not)."""
    h0, c0, w_hh, w_hr, y, ws = saved
    da, dh_all, dh0, dc0 = backward(dy, dh_n, dc_n, ws, c0, w_hh, w_hr, batch_sizes, reverse, need[0])
    dw = state_weight_grad(da, y, h0, batch_sizes, reverse) if need[2] else None
    dw_hr = None
    if w_hr is not None and need[3]:
        hidden = c0.size(-1)
        u = ws[..., 5 * hidden :].reshape(-1, hidden)
        dw_hr = dh_all.reshape(-1, dh_all.size(-1)).t().mm(u)
    return da, dh0 if need[0] else None, dc0 if need[1] else None, dw, dw_hr


def _lstm_grads(ctx, dy: Tensor, dh_n: Tensor, dc_n: Tensor, backward) -> tuple:
    """The gradients of (xw, h0, c0, w_hh, w_hr, batch_sizes, reverse)."""
    grads = _lstm_recurrence_grads(dy, dh_n, dc_n, ctx.saved_tensors, ctx.needs_input_grad[1:5], ctx.batch_sizes,
                                   ctx.reverse, backward)
    return *grads, None, None


class LSTMRecurrenceFunction(torch.autograd.Function):
    """``(y, h_n, c_n) = lstm(xw, h0, c0, w_hh, w_hr)`` on plain eager tensors (see :func:`lstm_recurrence`)."""

    @staticmethod
    def forward(ctx, xw, h0, c0, w_hh, w_hr, batch_sizes, reverse):
        output = lstm_fwd(xw, h0, c0, w_hh, w_hr, batch_sizes, reverse)
        _lstm_save(ctx, (xw, h0, c0, w_hh, w_hr, batch_sizes, reverse), output)
        return output[0], output[1], output[2]

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n):
        if torch.is_grad_enabled():
            raise RuntimeError(DOUBLE_BACKWARD_ERROR)
        return _lstm_grads(ctx, dy, dh_n, dc_n, lstm_bwd)


@torch.library.custom_op("fastrnn::lstm_recurrence", mutates_args=())
def lstm_recurrence_op(
    xw: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    batch_sizes: Optional[Tensor],
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _contiguous(lstm_fwd(xw, h0, c0, w_hh, w_hr, batch_sizes, reverse))


@lstm_recurrence_op.register_fake
def _(xw, h0, c0, w_hh, w_hr, batch_sizes, reverse):
    lead, hidden = xw.shape[:-1], c0.size(-1)
    saved = 5 * hidden if w_hr is None else 6 * hidden
    return xw.new_empty(*lead, h0.size(-1)), h0.new_empty(h0.shape), c0.new_empty(c0.shape), xw.new_empty(*lead, saved)


@torch.library.custom_op("fastrnn::lstm_recurrence_backward", mutates_args=())
def lstm_recurrence_backward_op(
    dy: Tensor,
    dh_n: Tensor,
    dc_n: Tensor,
    ws: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    batch_sizes: Optional[Tensor],
    reverse: bool,
    need_dh0: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    da, dh_all, dh0, dc0 = lstm_bwd(dy, dh_n, dc_n, ws, c0, w_hh, w_hr, batch_sizes, reverse, need_dh0)
    return _contiguous((da, dh_all, dh0 if need_dh0 else torch.zeros_like(dh_n), dc0))


@lstm_recurrence_backward_op.register_fake
def _(dy, dh_n, dc_n, ws, c0, w_hh, w_hr, batch_sizes, reverse, need_dh0):
    dh_all = dy.new_empty(dy.shape) if w_hr is not None else dy.new_empty(0)
    return ws.new_empty(*ws.shape[:-1], 4 * c0.size(-1)), dh_all, dh_n.new_empty(dh_n.shape), c0.new_empty(c0.shape)


def _lstm_op_grad(ctx, dy, dh_n, dc_n, _dws):
    h0, c0, _, _, y, _ = ctx.saved_tensors
    grads = (_zeros_if_none(dy, y), _zeros_if_none(dh_n, h0), _zeros_if_none(dc_n, c0))
    return _lstm_grads(ctx, *grads, lstm_recurrence_backward_op)


lstm_recurrence_op.register_autograd(_lstm_op_grad, setup_context=_lstm_save)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(DOUBLE_BACKWARD_ERROR)


gru_recurrence_backward_op.register_autograd(_no_double_backward)
lstm_recurrence_backward_op.register_autograd(_no_double_backward)


# --- torch.func ---------------------------------------------------------------------------------------
# functorch needs setup_context Functions (the custom ops' registered autograd is not one); these call the
# ops, which functorch batches, under no_grad.


class _GRUUnderTransforms(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(xw, h0, w_hh, b_hn, batch_sizes, reverse):
        with torch.no_grad():
            return gru_recurrence_op(xw, h0, w_hh, b_hn, batch_sizes, reverse)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _gru_save(ctx, inputs, output)
        ctx.mark_non_differentiable(output[2])

    @staticmethod
    def backward(ctx, dy, dh_n, _dws):
        with torch.no_grad():
            return _gru_grads(ctx, dy, dh_n, gru_recurrence_backward_op)


class _LSTMUnderTransforms(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(xw, h0, c0, w_hh, w_hr, batch_sizes, reverse):
        with torch.no_grad():
            return lstm_recurrence_op(xw, h0, c0, w_hh, w_hr, batch_sizes, reverse)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _lstm_save(ctx, inputs, output)
        ctx.mark_non_differentiable(output[3])

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n, _dws):
        with torch.no_grad():
            return _lstm_grads(ctx, dy, dh_n, dc_n, lstm_recurrence_backward_op)


# --- whole layers, eager training -----------------------------------------------------------------------
# One autograd node per layer and direction that owns the input projection too; it runs only where
# _one_call found the C++ backend, so it calls the C++ ops directly. Its forward is one C++ op
# whose step kernel makes each step's x_t W_ih^T + bias next to h W_hh^T (the [T, B, G] projection is never
# written out and read back); its backward's dX = da W_ih runs on fastrnn::mm_nn (oneDNN's microkernel,
# csrc/brgemm_gemm.h), which beats the BLAS behind at::mm on this project's CPUs.


# Below this many multiply-adds mm_nn would call the BLAS itself (csrc/brgemm_gemm.h): ATen's call is cheaper.
_MM_NN_MIN_WORK = 1 << 23


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for 2-D ``a``, ``b``: fastrnn::mm_nn where it is large enough to take the microkernel."""
    if a.size(0) * a.size(1) * b.size(1) >= _MM_NN_MIN_WORK:
        return torch.ops.fastrnn.mm_nn(a, b)
    return a.mm(b)


def layer_input_grads(need: tuple, x: Tensor, w_ih: Tensor, bias: Optional[Tensor], dxw: Tensor) -> tuple:
    """``(dx, dW_ih, db)`` of ``xw = x W_ih^T + bias`` from ``dxw`` (``[..., G]``); ``need`` says which of
    ``(x, w_ih, bias)`` want a gradient (None where not)."""
    flat = dxw.reshape(-1, dxw.size(-1))
    dx = _mm(flat, w_ih).view(*dxw.shape[:-1], w_ih.size(1)) if need[0] else None
    dw_ih = flat.t().mm(x.reshape(-1, x.size(-1))) if need[1] else None
    db = flat.sum(0) if bias is not None and need[2] else None
    return dx, dw_ih, db


def _needed(flag: bool, t: Optional[Tensor]) -> Optional[Tensor]:
    return t if flag else None


def _keep_for_recompute(ctx, inputs: tuple, saved: tuple) -> None:
    """The layer nodes save for backward only what torch's backward reads (``x W^T`` keeps ``W`` only where
    ``x`` needs a gradient, ``x`` only where ``W`` does; biases never), so a user may edit the others in place
    between forward and backward as with torch's modules. A create_graph backward recomputes the layer from
    all inputs: those not saved (``saved[i]`` false; parameters and states, never an activation that
    non-reentrant checkpointing would free) are kept here with their versions, and :func:`_recompute_inputs`
    raises torch's in-place error if one changed, rather than differentiating the edited values."""
    ctx.recompute = tuple(None if s else t for t, s in zip(inputs, saved))
    ctx.versions = tuple(None if t is None else t._version for t in ctx.recompute)


def _recompute_inputs(ctx, unpacked: tuple) -> tuple:
    """Every input of the layer: the kept ones, checked, and ``unpacked[i]`` (from ``ctx.saved_tensors``) for
    the saved ones."""
    for t, version in zip(ctx.recompute, ctx.versions):
        if t is not None and t._version != version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an inplace operation: "
                f"[{t.type()} {list(t.shape)}] is at version {t._version}; expected version {version} instead. "
                "(fastrnn: a create_graph backward recomputes the layer from its inputs)"
            )
    return tuple(u if t is None else t for t, u in zip(ctx.recompute, unpacked))


def _differentiate_reference(ctx, inputs: tuple, outputs: tuple, grads: tuple) -> list:
    """create_graph: the gradients of ``inputs`` through ``outputs``, the pure-PyTorch reference layer recomputed
    on the saved inputs under autograd, so that any order of gradient is the reference's."""
    grads = [torch.zeros_like(o) if g is None else g for o, g in zip(outputs, grads)]
    wanted = [i for i, t in enumerate(inputs) if ctx.needs_input_grad[i] and t is not None and t.requires_grad]
    result = [None] * len(ctx.needs_input_grad)
    found = torch.autograd.grad(outputs, [inputs[i] for i in wanted], grads, create_graph=True, allow_unused=True)
    for i, grad in zip(wanted, found):
        result[i] = grad
    return result


class LSTMLayerFunction(torch.autograd.Function):
    """``lstm_recurrence(F.linear(x, w_ih, bias), h0, c0, w_hh, w_hr)`` as one node (see :func:`lstm_layer`)."""

    @staticmethod
    def forward(ctx, x, w_ih, bias, h0, c0, w_hh, w_hr, batch_sizes, reverse):
        output = torch.ops.fastrnn.lstm_layer_fwd(x, w_ih, bias, h0, c0, w_hh, w_hr, batch_sizes, reverse)
        ctx.save_for_backward(_needed(w_ih.requires_grad, x), _needed(x.requires_grad, w_ih),
                              _needed(w_hh.requires_grad, h0), c0, w_hh, w_hr, output[0], output[3])
        _keep_for_recompute(ctx, (x, w_ih, bias, h0, c0, w_hh, w_hr),
                            (w_ih.requires_grad, x.requires_grad, False, w_hh.requires_grad, True, True, True))
        ctx.batch_sizes, ctx.reverse = batch_sizes, reverse
        return output[0], output[1], output[2]

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n):
        x, w_ih, h0, c0, w_hh, w_hr, y, ws = ctx.saved_tensors
        if torch.is_grad_enabled():
            inputs = _recompute_inputs(ctx, (x, w_ih, None, h0, c0, w_hh, w_hr))
            x, w_ih, bias, h0, c0, w_hh, w_hr = inputs
            outputs = ref.lstm_recurrence_ref(F.linear(x, w_ih, bias), h0, c0, w_hh, w_hr, ctx.batch_sizes,
                                              ctx.reverse)[:3]
            return tuple(_differentiate_reference(ctx, inputs, outputs, (dy, dh_n, dc_n)))
        bias = ctx.recompute[2]  # only whether there is one: its gradient is a sum of da
        need = ctx.needs_input_grad
        da, dh0, dc0, dw, dw_hr = _lstm_recurrence_grads(dy, dh_n, dc_n, (h0, c0, w_hh, w_hr, y, ws), need[3:7],
                                                         ctx.batch_sizes, ctx.reverse, lstm_bwd)
        return *layer_input_grads(need[:3], x, w_ih, bias, da), dh0, dc0, dw, dw_hr, None, None


class GRULayerFunction(torch.autograd.Function):
    """``gru_recurrence(F.linear(x, w_ih, bias), h0, w_hh, b_hn)`` as one node (see :func:`gru_layer`)."""

    @staticmethod
    def forward(ctx, x, w_ih, bias, h0, w_hh, b_hn, batch_sizes, reverse):
        output = torch.ops.fastrnn.gru_layer_fwd(x, w_ih, bias, h0, w_hh, b_hn, batch_sizes, reverse)
        # torch keeps h0 - n (an intermediate) where w_hh needs no gradient; the backward reads h0 itself.
        h0_kept = h0 if w_hh.requires_grad else h0.clone()
        ctx.save_for_backward(_needed(w_ih.requires_grad, x), _needed(x.requires_grad, w_ih), h0_kept, w_hh,
                              output[0], output[2])
        _keep_for_recompute(ctx, (x, w_ih, bias, h0, w_hh, b_hn),
                            (w_ih.requires_grad, x.requires_grad, False, w_hh.requires_grad, True, False))
        ctx.batch_sizes, ctx.reverse = batch_sizes, reverse
        return output[0], output[1]

    @staticmethod
    def backward(ctx, dy, dh_n):
        x, w_ih, h0, w_hh, y, ws = ctx.saved_tensors
        if torch.is_grad_enabled():
            inputs = _recompute_inputs(ctx, (x, w_ih, None, h0, w_hh, None))
            x, w_ih, bias, h0, w_hh, b_hn = inputs
            outputs = ref.gru_recurrence_ref(F.linear(x, w_ih, bias), h0, w_hh, b_hn, ctx.batch_sizes, ctx.reverse)[:2]
            return (*_differentiate_reference(ctx, inputs, outputs, (dy, dh_n)),)
        bias, b_hn = ctx.recompute[2], ctx.recompute[5]  # only whether there are any: their gradients are sums
        need = ctx.needs_input_grad
        dxw, dh0, dw, db_hn = _gru_recurrence_grads(dy, dh_n, (h0, w_hh, y, ws), need[3:6], b_hn is not None,
                                                    ctx.batch_sizes, ctx.reverse, gru_bwd)
        return *layer_input_grads(need[:3], x, w_ih, bias, dxw), dh0, dw, db_hn, None, None


# --- entries --------------------------------------------------------------------------------------------


def _differentiated(*tensors: Optional[Tensor]) -> bool:
    """Whether autograd will record this call: otherwise the op need not save anything for a backward."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _one_call(x: Tensor, *tensors: Optional[Tensor]) -> Optional[str]:
    """How a layer call runs as one call, decided once: ``"infer"`` (one C++ inference op: nothing will
    differentiate it), ``"train"`` (one layer node: no autocast, tracer or dispatch mode looks either), or
    None (the per-op path, which compile, export and torch.func see). Both need the C++ backend."""
    if torch._C._are_functorch_transforms_active() or traced(x) or forward_ad._current_level >= 0:
        return None
    if not _differentiated(x, *tensors):
        return "infer" if _use_cpp(x) else None
    looked_at = (torch._C._get_tracing_state() is not None or torch._C._is_any_autocast_enabled()
                 or torch._C._len_torch_dispatch_stack() > 0)
    return "train" if not looked_at and _use_cpp(x) else None


def gru_layer(
    x: Tensor,
    w_ih: Tensor,
    bias: Optional[Tensor],
    h0: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor] = None,
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """One GRU layer and direction: ``gru_recurrence(F.linear(x, w_ih, bias), ...)``, as :func:`lstm_layer`."""
    path = _one_call(x, w_ih, bias, h0, w_hh, b_hn)
    if path == "infer":
        return torch.ops.fastrnn.gru_infer(x, w_ih, bias, h0, w_hh, b_hn, batch_sizes, reverse)
    if path == "train":
        return GRULayerFunction.apply(x, w_ih, bias, h0, w_hh, b_hn, batch_sizes, reverse)
    return gru_recurrence(F.linear(x, w_ih, bias), h0, w_hh, b_hn, batch_sizes, reverse)


def lstm_layer(
    x: Tensor,
    w_ih: Tensor,
    bias: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor] = None,
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer and direction: ``lstm_recurrence(F.linear(x, w_ih, bias), ...)``. A call that nothing
    will differentiate runs as one C++ op, which makes each step's input projection itself where it can."""
    path = _one_call(x, w_ih, bias, h0, c0, w_hh, w_hr)
    if path == "infer":
        return torch.ops.fastrnn.lstm_infer(x, w_ih, bias, h0, c0, w_hh, w_hr, batch_sizes, reverse)
    if path == "train":
        return LSTMLayerFunction.apply(x, w_ih, bias, h0, c0, w_hh, w_hr, batch_sizes, reverse)
    return lstm_recurrence(F.linear(x, w_ih, bias), h0, c0, w_hh, w_hr, batch_sizes, reverse)


def gru_recurrence(
    xw: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor] = None,
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """The GRU recurrence, differentiable once.

    Args:
        xw: ``[T, B, 3H]`` or packed ``[N, 3H]``: ``x W_ih^T + b_ih + [b_hr, b_hz, 0]``.
        h0: ``[B, H]``. w_hh: ``[3H, H]``. b_hn: ``[H]`` or ``None``.
        batch_sizes: ``[T]`` int64 CPU tensor for packed ``xw``.

    Returns:
        ``y`` (``[T, B, H]`` or ``[N, H]``) and ``h_n`` ``[B, H]``.
    """
    if needs_any_order(xw, h0, w_hh, b_hn):
        return ref.gru_recurrence_ref(xw, h0, w_hh, b_hn, batch_sizes, reverse)[:2]
    if torch._C._are_functorch_transforms_active():
        y, h_n, _ = _GRUUnderTransforms.apply(xw, h0, w_hh, b_hn, batch_sizes, reverse)
        return y, h_n
    if traced(xw):
        y, h_n, _ = gru_recurrence_op(xw, h0, w_hh, b_hn, batch_sizes, reverse)
        return y, h_n
    if not _differentiated(xw, h0, w_hh, b_hn):
        return gru_infer(xw, h0, w_hh, b_hn, batch_sizes, reverse)
    return GRURecurrenceFunction.apply(xw, h0, w_hh, b_hn, batch_sizes, reverse)


def lstm_recurrence(
    xw: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor] = None,
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """The LSTM recurrence, differentiable once.

    Args:
        xw: ``[T, B, 4H]`` or packed ``[N, 4H]``: ``x W_ih^T + b_ih + b_hh``.
        h0: ``[B, P]`` (``P`` = proj_size or H). c0: ``[B, H]``. w_hh: ``[4H, P]``. w_hr: ``[P, H]`` or ``None``.
        batch_sizes: ``[T]`` int64 CPU tensor for packed ``xw``.

    Returns:
        ``y`` (``[T, B, P]`` or ``[N, P]``), ``h_n`` ``[B, P]`` and ``c_n`` ``[B, H]``.
    """
    if needs_any_order(xw, h0, c0, w_hh, w_hr):
        return ref.lstm_recurrence_ref(xw, h0, c0, w_hh, w_hr, batch_sizes, reverse)[:3]
    if torch._C._are_functorch_transforms_active():
        y, h_n, c_n, _ = _LSTMUnderTransforms.apply(xw, h0, c0, w_hh, w_hr, batch_sizes, reverse)
        return y, h_n, c_n
    if traced(xw):
        y, h_n, c_n, _ = lstm_recurrence_op(xw, h0, c0, w_hh, w_hr, batch_sizes, reverse)
        return y, h_n, c_n
    if not _differentiated(xw, h0, c0, w_hh, w_hr):
        return lstm_infer(xw, h0, c0, w_hh, w_hr, batch_sizes, reverse)
    return LSTMRecurrenceFunction.apply(xw, h0, c0, w_hh, w_hr, batch_sizes, reverse)


register_flop_formulas()
# The C++ ops' fakes as soon as the ops load, so that a direct torch.ops.fastrnn.* call under a tracer finds
# them before any module has run.
on_load(_register_cpp_fakes)
