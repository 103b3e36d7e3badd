"""The gated recurrences (GRU, LSTM) as differentiable ops, generated from one definition per cell
(:class:`GatedRecurrence`): an old-style ``autograd.Function`` for plain eager tensors (least per-call overhead),
``torch.library`` custom ops with fake and registered autograd whenever dynamo, export or torch.func look (graphs
hold one opaque node per layer and direction), a ``setup_context`` Function for torch.func, and one layer node
per cell that owns the input projection too.

Each forward runs the C++ op (``torch.ops.fastrnn.gru_fwd`` / ``lstm_fwd``: CPU, float32 and float64) or the
reference (anything else), and saves the workspace ``ws`` its backward needs (see
:mod:`fastrnn.gated_reference`). Backward runs BPTT in the same backend and returns the pre-activation
gradients; ``W_hh``, ``b_hn`` and ``W_hr`` gradients are then one GEMM or reduction each, here.

A backward that must itself be differentiable (``create_graph``) differentiates the pure-PyTorch reference
recomputed on the saved inputs, so gradients of any order are the reference's, at the op level (a direct call,
an exported program) as in the modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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


# --- what each cell contributes -------------------------------------------------------------------------
# The op's tensor inputs are t = (xw, *states, w_hh, extra), extra being GRU's b_hn or LSTM's w_hr, followed by
# (batch_sizes, reverse); its outputs are (y, *finals, ws). Everything below the two specs is written once.


def _gru_grads(out: tuple, t: tuple, y: Tensor, ws: Tensor, need: tuple, batch_sizes, reverse: bool) -> tuple:
    """``(dxw, dh0, dW_hh, db_hn)`` from ``gru_bwd``'s ``(dxw, dg, dh0)``; None where ``need`` says none."""
    dxw, dg, dh0 = out
    hidden = y.size(-1)
    dw = state_weight_grad(dg, y, t[1], batch_sizes, reverse) if need[2] else None
    db = dg.reshape(-1, 3 * hidden)[:, 2 * hidden :].sum(0) if need[3] else None
    return dxw, dh0 if need[1] else None, dw, db


def _lstm_grads(out: tuple, t: tuple, y: Tensor, ws: Tensor, need: tuple, batch_sizes, reverse: bool) -> tuple:
    """``(da, dh0, dc0, dW_hh, dW_hr)`` from ``lstm_bwd``'s ``(da, dh_all, dh0, dc0)``."""
    da, dh_all, dh0, dc0 = out
    dw = state_weight_grad(da, y, t[1], batch_sizes, reverse) if need[3] else None
    dw_hr = None
    if need[4]:
        hidden = t[2].size(-1)
        u = ws[..., 5 * hidden :].reshape(-1, hidden)
        dw_hr = dh_all.reshape(-1, dh_all.size(-1)).t().mm(u)
    return da, dh0 if need[1] else None, dc0 if need[2] else None, dw, dw_hr


def _gru_layer_saved(h0: Tensor, w_hh: Tensor, b_hn: Optional[Tensor]) -> tuple[tuple, tuple]:
    # torch keeps h0 - n (an intermediate) where w_hh needs no gradient; the backward reads h0 itself.
    return (h0 if w_hh.requires_grad else h0.clone(), w_hh, None), (w_hh.requires_grad, True, False)


def _lstm_layer_saved(h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Optional[Tensor]) -> tuple[tuple, tuple]:
    return (h0 if w_hh.requires_grad else None, c0, w_hh, w_hr), (w_hh.requires_grad, True, True, True)


@dataclass(frozen=True)
class GatedRecurrence:
    """One gated cell's recurrence, as data."""

    name: str  # "GRU": GRURecurrenceFunction, _GRUUnderTransforms, GRULayerFunction, reference "gru_recurrence_ref"
    cpp: str  # the C++ ops fastrnn::<cpp>_fwd, _infer, _bwd, _layer_fwd
    states: int
    schema: str  # of fastrnn::<cpp>_recurrence; the backward's: of fastrnn::<cpp>_recurrence_backward
    backward_schema: str
    fake: Callable  # (*t, batch_sizes, reverse) -> outputs, shapes only
    fake_backward: Callable
    backward_args: Callable  # (output grads, t, y, ws) -> the tensor arguments of fastrnn::<cpp>_bwd
    grads: Callable  # (backward's outputs, t, y, ws, need, batch_sizes, reverse) -> grads of t
    layer_saved: Callable  # (*t[1:]) -> (what the layer node saves of them, which it saves for real)

    def reference(self, *args):
        return getattr(ref, f"{self.cpp}_recurrence_ref")(*args)

    def fwd(self, *args):
        if _use_cpp(args[0]):
            return getattr(torch.ops.fastrnn, f"{self.cpp}_fwd")(*args)
        return self.reference(*args)

    def infer(self, *args):
        """``fwd`` without the workspace: for calls that nothing will differentiate."""
        if _use_cpp(args[0]):
            return getattr(torch.ops.fastrnn, f"{self.cpp}_infer")(args[0], None, None, *args[1:])
        return self.reference(*args)[:-1]

    def bwd(self, *args):
        if _use_cpp(args[0]):
            return getattr(torch.ops.fastrnn, f"{self.cpp}_bwd")(*args)
        return getattr(ref, f"{self.cpp}_recurrence_bwd_ref")(*args[:-1])


GRU = GatedRecurrence(
    name="GRU", cpp="gru", states=1,
    schema="(Tensor xw, Tensor h0, Tensor w_hh, Tensor? b_hn, Tensor? batch_sizes, bool reverse) "
           "-> (Tensor, Tensor, Tensor)",
    backward_schema="(Tensor dy, Tensor dh_n, Tensor y, Tensor ws, Tensor h0, Tensor w_hh, Tensor? batch_sizes, "
                    "bool reverse, bool need_dh0) -> (Tensor, Tensor, Tensor)",
    fake=lambda xw, h0, w_hh, b_hn, batch_sizes, reverse: (
        xw.new_empty(*xw.shape[:-1], h0.size(-1)), h0.new_empty(h0.shape),
        xw.new_empty(*xw.shape[:-1], 4 * h0.size(-1))),
    fake_backward=lambda dy, dh_n, y, ws, h0, w_hh, batch_sizes, reverse, need_dh0: (
        y.new_empty(*y.shape[:-1], 3 * y.size(-1)), y.new_empty(*y.shape[:-1], 3 * y.size(-1)),
        dh_n.new_empty(dh_n.shape)),
    backward_args=lambda g, t, y, ws: (g[0], g[1], y, ws, t[1], t[2]),
    grads=_gru_grads,
    layer_saved=_gru_layer_saved,
)

LSTM = GatedRecurrence(
    name="LSTM", cpp="lstm", states=2,
    schema="(Tensor xw, Tensor h0, Tensor c0, Tensor w_hh, Tensor? w_hr, Tensor? batch_sizes, bool reverse) "
           "-> (Tensor, Tensor, Tensor, Tensor)",
    backward_schema="(Tensor dy, Tensor dh_n, Tensor dc_n, Tensor ws, Tensor c0, Tensor w_hh, Tensor? w_hr, "
                    "Tensor? batch_sizes, bool reverse, bool need_dh0) -> (Tensor, Tensor, Tensor, Tensor)",
    fake=lambda xw, h0, c0, w_hh, w_hr, batch_sizes, reverse: (
        xw.new_empty(*xw.shape[:-1], h0.size(-1)), h0.new_empty(h0.shape), c0.new_empty(c0.shape),
        xw.new_empty(*xw.shape[:-1], (5 if w_hr is None else 6) * c0.size(-1))),
    fake_backward=lambda dy, dh_n, dc_n, ws, c0, w_hh, w_hr, batch_sizes, reverse, need_dh0: (
        ws.new_empty(*ws.shape[:-1], 4 * c0.size(-1)), dy.new_empty(dy.shape if w_hr is not None else 0),
        dh_n.new_empty(dh_n.shape), c0.new_empty(c0.shape)),
    backward_args=lambda g, t, y, ws: (g[0], g[1], g[2], ws, t[2], t[3], t[4]),
    grads=_lstm_grads,
    layer_saved=_lstm_layer_saved,
)


# --- the wiring, once for every cell --------------------------------------------------------------------


def _save(ctx, inputs: tuple, output: tuple) -> None:
    """Every tensor input (a create_graph backward recomputes the reference from them), ``y`` and ``ws``."""
    ctx.save_for_backward(*inputs[:-2], output[0], output[-1])
    ctx.batch_sizes, ctx.reverse = inputs[-2:]


def _zeros_if_none(grads: tuple, like: tuple) -> tuple:
    return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, like))


def _differentiate_reference(ctx, inputs: tuple, outputs: tuple, grads: tuple) -> list:
    """create_graph: the gradients of ``inputs`` through ``outputs``, the pure-PyTorch reference recomputed on
    the saved inputs under autograd, so that any order of gradient is the reference's."""
    grads = _zeros_if_none(grads, outputs)
    wanted = [i for i, t in enumerate(inputs) if ctx.needs_input_grad[i] and t is not None and t.requires_grad]
    result = [None] * len(ctx.needs_input_grad)
    found = torch.autograd.grad(outputs, [inputs[i] for i in wanted], grads, create_graph=True, allow_unused=True)
    for i, grad in zip(wanted, found):
        result[i] = grad
    return result


def _op_grads(spec: GatedRecurrence, ctx, grads: tuple, backward) -> tuple:
    """The gradients of the op's inputs ``(*t, batch_sizes, reverse)``; with ``create_graph``, the reference's."""
    *t, y, ws = ctx.saved_tensors  # once: non-reentrant checkpointing allows one unpack per backward
    if torch.is_grad_enabled():
        outputs = spec.reference(*t, ctx.batch_sizes, ctx.reverse)[:-1]
        return tuple(_differentiate_reference(ctx, tuple(t), outputs, grads))
    grads = _zeros_if_none(grads, (y, *t[1 : 1 + spec.states]))
    need = ctx.needs_input_grad
    out = backward(*spec.backward_args(grads, t, y, ws), ctx.batch_sizes, ctx.reverse, need[1])
    return *spec.grads(out, t, y, ws, need, ctx.batch_sizes, ctx.reverse), None, None


def _eager_function(spec: GatedRecurrence) -> type:
    """The old-style Function for plain eager tensors: a third of the overhead of a ``setup_context`` one."""

    def forward(ctx, *args):
        output = spec.fwd(*args)
        _save(ctx, args, output)
        return output[:-1]

    def backward(ctx, *grads):
        return _op_grads(spec, ctx, grads, spec.bwd)

    return type(f"{spec.name}RecurrenceFunction", (torch.autograd.Function,), {
        "__doc__": f"The {spec.name} recurrence on plain eager tensors (see :func:`{spec.cpp}_recurrence`).",
        "forward": staticmethod(forward), "backward": staticmethod(backward), "__module__": __name__})


def _custom_ops(spec: GatedRecurrence):
    """``fastrnn::<cpp>_recurrence`` and its backward op, with fakes and the registered autograd."""
    op = torch.library.custom_op(f"fastrnn::{spec.cpp}_recurrence", lambda *args: _contiguous(spec.fwd(*args)),
                                 mutates_args=(), schema=spec.schema)
    op.register_fake(spec.fake)

    def backward_impl(*args):
        out = list(spec.bwd(*args))
        if not args[-1]:  # need_dh0
            out[2] = torch.zeros_like(args[1])
        return _contiguous(out)

    backward_op = torch.library.custom_op(f"fastrnn::{spec.cpp}_recurrence_backward", backward_impl,
                                          mutates_args=(), schema=spec.backward_schema)
    backward_op.register_fake(spec.fake_backward)
    op.register_autograd(lambda ctx, *grads: _op_grads(spec, ctx, grads[:-1], backward_op), setup_context=_save)
    return op, backward_op


def _functorch_function(spec: GatedRecurrence, op, backward_op) -> type:
    """functorch needs a ``setup_context`` Function (the custom op's registered autograd is not one); it calls
    the op, which functorch batches, under no_grad. First order: deeper transforms run the reference."""

    def forward(*args):
        with torch.no_grad():
            return op(*args)

    def setup_context(ctx, inputs, output):
        _save(ctx, inputs, output)
        ctx.mark_non_differentiable(output[-1])

    def backward(ctx, *grads):
        with torch.no_grad():
            return _op_grads(spec, ctx, grads[:-1], backward_op)

    return type(f"_{spec.name}UnderTransforms", (torch.autograd.Function,), {
        "generate_vmap_rule": True, "forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward), "__module__": __name__})


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


def _layer_function(spec: GatedRecurrence) -> type:
    """``<cpp>_recurrence(F.linear(x, w_ih, bias), *rest)`` as one node (see :func:`gru_layer`)."""

    def forward(ctx, x, w_ih, bias, *rest):
        output = getattr(torch.ops.fastrnn, f"{spec.cpp}_layer_fwd")(x, w_ih, bias, *rest)
        saved, flags = spec.layer_saved(*rest[:-2])
        ctx.save_for_backward(_needed(w_ih.requires_grad, x), _needed(x.requires_grad, w_ih), *saved, output[0],
                              output[-1])
        _keep_for_recompute(ctx, (x, w_ih, bias, *rest[:-2]), (w_ih.requires_grad, x.requires_grad, False, *flags))
        ctx.batch_sizes, ctx.reverse = rest[-2:]
        return output[:-1]

    def backward(ctx, *grads):
        x, w_ih, *t, y, ws = ctx.saved_tensors
        if torch.is_grad_enabled():
            x, w_ih, bias, *t = _recompute_inputs(ctx, (x, w_ih, None, *t))
            outputs = spec.reference(F.linear(x, w_ih, bias), *t, ctx.batch_sizes, ctx.reverse)[:-1]
            return tuple(_differentiate_reference(ctx, (x, w_ih, bias, *t), outputs, grads))
        need = ctx.needs_input_grad
        t = (None, *t)
        op_need = (any(need[:3]), *need[3:])
        out = spec.bwd(*spec.backward_args(grads, t, y, ws), ctx.batch_sizes, ctx.reverse, need[3])
        dxw, *rest = spec.grads(out, t, y, ws, op_need, ctx.batch_sizes, ctx.reverse)
        return *layer_input_grads(need[:3], x, w_ih, dxw), *rest, None, None

    return type(f"{spec.name}LayerFunction", (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward), "__module__": __name__})


GRURecurrenceFunction = _eager_function(GRU)
LSTMRecurrenceFunction = _eager_function(LSTM)
gru_recurrence_op, gru_recurrence_backward_op = _custom_ops(GRU)
lstm_recurrence_op, lstm_recurrence_backward_op = _custom_ops(LSTM)
_GRUUnderTransforms = _functorch_function(GRU, gru_recurrence_op, gru_recurrence_backward_op)
_LSTMUnderTransforms = _functorch_function(LSTM, lstm_recurrence_op, lstm_recurrence_backward_op)
GRULayerFunction = _layer_function(GRU)
LSTMLayerFunction = _layer_function(LSTM)
_FUNCTIONS = {GRU: (GRURecurrenceFunction, gru_recurrence_op, _GRUUnderTransforms, GRULayerFunction),
              LSTM: (LSTMRecurrenceFunction, lstm_recurrence_op, _LSTMUnderTransforms, LSTMLayerFunction)}


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


def _layer(spec: GatedRecurrence, x: Tensor, w_ih: Tensor, bias: Optional[Tensor], *rest) -> tuple:
    """One layer and direction, ``rest = (*states, w_hh, extra, batch_sizes, reverse)``: one C++ inference op
    (which makes each step's input projection itself where it can), one layer node, or the projection and
    :func:`_recurrence`."""
    path = _one_call(x, w_ih, bias, *rest[:-2])
    if path == "infer":
        return getattr(torch.ops.fastrnn, f"{spec.cpp}_infer")(x, w_ih, bias, *rest)
    if path == "train":
        return _FUNCTIONS[spec][3].apply(x, w_ih, bias, *rest)
    return _recurrence(spec, F.linear(x, w_ih, bias), *rest)


def _recurrence(spec: GatedRecurrence, *args) -> tuple:
    """The op on ``args = (*t, batch_sizes, reverse)`` through the entry that fits who is looking."""
    function, op, under_transforms, _ = _FUNCTIONS[spec]
    if needs_any_order(*args[:-2]):
        return spec.reference(*args)[:-1]
    if torch._C._are_functorch_transforms_active():
        return under_transforms.apply(*args)[:-1]
    if traced(args[0]):
        return op(*args)[:-1]
    if not _differentiated(*args[:-2]):
        return spec.infer(*args)
    return function.apply(*args)


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


def gru_recurrence(
    xw: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor] = None,
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """The GRU recurrence, differentiable to any order.

    Args:
        xw: ``[T, B, 3H]`` or packed ``[N, 3H]``: ``x W_ih^T + b_ih + [b_hr, b_hz, 0]``.
        h0: ``[B, H]``. w_hh: ``[3H, H]``. b_hn: ``[H]`` or ``None``.
        batch_sizes: ``[T]`` int64 CPU tensor for packed ``xw``.

    Returns:
        ``y`` (``[T, B, H]`` or ``[N, H]``) and ``h_n`` ``[B, H]``.
    """
    return _recurrence(GRU, xw, h0, w_hh, b_hn, batch_sizes, reverse)


def lstm_recurrence(
    xw: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor] = None,
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """The LSTM recurrence, differentiable to any order.

    Args:
        xw: ``[T, B, 4H]`` or packed ``[N, 4H]``: ``x W_ih^T + b_ih + b_hh``.
        h0: ``[B, P]`` (``P`` = proj_size or H). c0: ``[B, H]``. w_hh: ``[4H, P]``. w_hr: ``[P, H]`` or ``None``.
        batch_sizes: ``[T]`` int64 CPU tensor for packed ``xw``.

    Returns:
        ``y`` (``[T, B, P]`` or ``[N, P]``), ``h_n`` ``[B, P]`` and ``c_n`` ``[B, H]``.
    """
    return _recurrence(LSTM, xw, h0, c0, w_hh, w_hr, batch_sizes, reverse)


register_flop_formulas()
# The C++ ops' fakes as soon as the ops load, so that a direct torch.ops.fastrnn.* call under a tracer finds
# them before any module has run.
on_load(_register_cpp_fakes)
