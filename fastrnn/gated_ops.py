"""The GRU / LSTM layer nodes, which own the input projection too, and the gated cells' entries.

The recurrence ops themselves (``fastrnn::gru_recurrence``, ``lstm_recurrence``, their Functions and entries) are
generated from their specs in :mod:`fastrnn.ops` and re-exported here. A create_graph backward of a layer node
differentiates the pure-PyTorch reference recomputed on the saved inputs, so gradients of any order are the
reference's.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F
from torch import Tensor

from fastrnn.backends import traced
from fastrnn.ops import (  # noqa: F401  (re-exported: the gated ops' names before the family shared one generator)
    GRU,
    LSTM,
    GRURecurrenceFunction,
    LSTMRecurrenceFunction,
    Recurrence,
    _GRUUnderTransforms,
    _LSTMUnderTransforms,
    _use_cpp,
    differentiate_reference,
    differentiated,
    gru_recurrence,
    gru_recurrence_backward_op,
    gru_recurrence_op,
    lstm_recurrence,
    lstm_recurrence_backward_op,
    lstm_recurrence_op,
    run_recurrence,
    state_weight_grad,
)


def _gru_layer_saved(h0: Tensor, w_hh: Tensor, b_hn: Optional[Tensor]) -> tuple[tuple, tuple]:
    # torch keeps h0 - n (an intermediate) where w_hh needs no gradient; the backward reads h0 itself.
    return (h0 if w_hh.requires_grad else h0.clone(), w_hh, None), (w_hh.requires_grad, True, False)


def _lstm_layer_saved(h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Optional[Tensor]) -> tuple[tuple, tuple]:
    return (h0 if w_hh.requires_grad else None, c0, w_hh, w_hr), (w_hh.requires_grad, True, True, True)


# (*states, w_hh, extra) -> (what the layer node saves of them, which of them it saves for real)
_LAYER_SAVED = {"GRU": _gru_layer_saved, "LSTM": _lstm_layer_saved}


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


def layer_input_grads(need: tuple, x: Tensor, w_ih: Tensor, dxw: Tensor) -> tuple:
    """``(dx, dW_ih, db)`` of ``xw = x W_ih^T + bias`` from ``dxw`` (``[..., G]``); ``need`` says which of
    ``(x, w_ih, bias)`` want a gradient (None where not)."""
    flat = dxw.reshape(-1, dxw.size(-1))
    dx = _mm(flat, w_ih).view(*dxw.shape[:-1], w_ih.size(1)) if need[0] else None
    dw_ih = flat.t().mm(x.reshape(-1, x.size(-1))) if need[1] else None
    db = flat.sum(0) if need[2] else None
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


def _layer_function(spec: Recurrence) -> type:
    """``<cpp>_recurrence(F.linear(x, w_ih, bias), *rest)`` as one node (see :func:`gru_layer`)."""

    def forward(ctx, x, w_ih, bias, *rest):
        output = getattr(torch.ops.fastrnn, f"{spec.cpp}_layer_fwd")(x, w_ih, bias, *rest)
        saved, flags = _LAYER_SAVED[spec.name](*rest[:-2])
        ctx.save_for_backward(_needed(w_ih.requires_grad, x), _needed(x.requires_grad, w_ih), *saved, output[0],
                              output[-1])
        _keep_for_recompute(ctx, (x, w_ih, bias, *rest[:-2]), (w_ih.requires_grad, x.requires_grad, False, *flags))
        ctx.flags = rest[-2:]
        return output[:-1]

    def backward(ctx, *grads):
        x, w_ih, *t, y, ws = ctx.saved_tensors
        if torch.is_grad_enabled():
            x, w_ih, bias, *t = _recompute_inputs(ctx, (x, w_ih, None, *t))
            outputs = spec.reference(F.linear(x, w_ih, bias), *t, *ctx.flags)[: spec.outputs]
            return tuple(differentiate_reference(ctx, (x, w_ih, bias, *t), outputs, grads))
        need = ctx.needs_input_grad
        dxw, *rest = spec.grads(spec.bwd, (None, *t), y, ws, grads, (any(need[:3]), *need[3:]), ctx.flags)
        return *layer_input_grads(need[:3], x, w_ih, dxw), *rest, None, None

    return type(f"{spec.name}LayerFunction", (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward), "__module__": __name__})


GRULayerFunction = _layer_function(GRU)
LSTMLayerFunction = _layer_function(LSTM)
_LAYER_FUNCTIONS = {"GRU": GRULayerFunction, "LSTM": LSTMLayerFunction}


# --- entries --------------------------------------------------------------------------------------------


def _one_call(x: Tensor, *tensors: Optional[Tensor]) -> Optional[str]:
    """How a layer call runs as one call, decided once: ``"infer"`` (one C++ inference op: nothing will
    differentiate it), ``"train"`` (one layer node: no autocast, tracer or dispatch mode looks either), or
    None (the per-op path, which compile, export and torch.func see). Both need the C++ backend."""
    if torch._C._are_functorch_transforms_active() or traced(x) or forward_ad._current_level >= 0:
        return None
    if not differentiated(x, *tensors):
        return "infer" if _use_cpp(x) else None
    looked_at = (torch._C._get_tracing_state() is not None or torch._C._is_any_autocast_enabled()
                 or torch._C._len_torch_dispatch_stack() > 0)
    return "train" if not looked_at and _use_cpp(x) else None


def _layer(spec: Recurrence, x: Tensor, w_ih: Tensor, bias: Optional[Tensor], *rest) -> tuple:
    """One layer and direction, ``rest = (*states, w_hh, extra, batch_sizes, reverse)``: one C++ inference op
    (which makes each step's input projection itself where it can), one layer node, or the projection and
    :func:`fastrnn.ops.run_recurrence`."""
    path = _one_call(x, w_ih, bias, *rest[:-2])
    if path == "infer":
        return getattr(torch.ops.fastrnn, f"{spec.cpp}_infer")(x, w_ih, bias, *rest)
    if path == "train":
        return _LAYER_FUNCTIONS[spec.name].apply(x, w_ih, bias, *rest)
    return run_recurrence(spec, F.linear(x, w_ih, bias), *rest)


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
    """One GRU layer and direction: ``gru_recurrence(F.linear(x, w_ih, bias), ...)``."""
    return _layer(GRU, x, w_ih, bias, h0, w_hh, b_hn, batch_sizes, reverse)


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
    """One LSTM layer and direction: ``lstm_recurrence(F.linear(x, w_ih, bias), ...)``."""
    return _layer(LSTM, x, w_ih, bias, h0, c0, w_hh, w_hr, batch_sizes, reverse)
