"""The family's recurrence ops (Elman, GRU, LSTM), generated from one :class:`Recurrence` spec per cell.

Each spec becomes:
- ``<name>RecurrenceFunction``, an old-style ``autograd.Function`` for plain eager tensors (a third of the
  per-call overhead of a ``setup_context`` one, which matters for short sequences);
- the ``torch.library`` custom ops ``fastrnn::<op>`` and ``fastrnn::<op>_backward`` with fakes and registered
  autograd, whenever dynamo, export or another tracer looks: graphs hold one opaque node per layer and direction;
- ``_<name>UnderTransforms``, a ``setup_context`` Function for torch.func, which batches the custom ops;
- the entry (:func:`rnn_recurrence`, :func:`gru_recurrence`, :func:`lstm_recurrence`) that picks one of them;
- for GRU / LSTM, ``<name>LayerFunction``, one eager training node per layer and direction that owns the input
  projection too, and :func:`layer`, which picks it, the C++ inference op or the projection and the entry.

Forward and backward run on the backend :func:`fastrnn.backends.select_backend` picks for the cell's family; the
backward returns per-step gate gradients, and the weight gradients are one GEMM or reduction each, here.
Higher-order gradients come one of two ways, a spec field: the Elman backward op has its own registered autograd,
``fastrnn::recurrence_double_backward`` (the reference's written-out second-order step loop); the gated cells'
create_graph backward differentiates the pure-PyTorch reference recomputed on the saved inputs.
Fakes only allocate, never touch data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F
from torch import Tensor

from fastrnn import reference as ref
from fastrnn._cpp import on_load
from fastrnn.backends import differentiated, needs_any_order, select_backend, traced
from fastrnn.flops import register_flop_formulas
from fastrnn.reference import ACTIVATIONS


def check_same_device(*tensors: Optional[Tensor]) -> None:
    """What a fake (meta) implementation raises when its tensors are on different devices, in torch's words:
    a meta tensor among CPU ones would otherwise get shapes back and no error."""
    first = tensors[0].device
    for t in tensors[1:]:
        if t is not None and t.device != first:  # the rare path: the set and the message
            devices = {u.device for u in tensors if u is not None}
            expected = next((d for d in devices if d.type == "meta"), first)
            wrong = next(u.device for u in tensors if u is not None and u.device != expected)
            raise RuntimeError(f"Tensor on device {wrong} is not on the expected device {expected}!")


def state_weight_grad(dg: Tensor, y: Tensor, h0: Tensor, batch_sizes: Optional[Tensor], reverse: bool) -> Tensor:
    """``dW_hh = dg^T h_prev`` over all steps and rows, ``h_prev`` being the state each step read: one GEMM (two
    for padded input, no copy).

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
    index = ref.prev_state_index(batch_sizes, reverse, y.size(0)).to(y.device)
    return dg.t().mm(torch.cat([y, h0]).index_select(0, index))  # [N, P] previous states


def _use_cpp(x: Tensor) -> bool:
    """Whether the backend chooser runs the gated ops on ``x`` in C++ (else the reference)."""
    return select_backend(x, "GRU/LSTM").name == "cpp"


def _cpp_or_reference(cpp_op: str, reference: Callable) -> Callable:
    """A GRU / LSTM kernel: the C++ op ``fastrnn::<cpp_op>`` where the backend chooser picks cpp, else
    ``reference``; both take the op's arguments."""

    def run(*args):
        if _use_cpp(args[0]):
            return getattr(torch.ops.fastrnn, cpp_op)(*args)
        return reference(*args)

    return run


def _tensor_args(schema: str) -> int:
    """How many tensor arguments come before the step layout (``batch_sizes``, ``reverse``, ...) in ``schema``."""
    return [a.name for a in torch._C.parse_schema(f"fastrnn::_{schema}").arguments].index("batch_sizes")


@dataclass(frozen=True)
class Recurrence:
    """One cell's recurrence op, as data; everything below the three rows is written once.

    The op takes ``(*t, *flags)``: tensors ``t = (xw, *states, w_hh[, extra])`` and the step layout ``flags =
    (batch_sizes, reverse[, activation])``. It returns ``(y, *final states)``, then, where ``ws``, the workspace its
    backward reads. The backward op takes the output gradients and saved tensors, then ``(*flags, need_dh0)``, and
    returns per-row gate gradients first and the initial states' gradients last.
    """

    name: str  # class names: <name>RecurrenceFunction, _<name>UnderTransforms
    op: str  # fastrnn::<op>, fastrnn::<op>_backward
    cpp: str  # the C++ ops fastrnn::<cpp>_fwd, _bwd (and for GRU / LSTM _infer, _layer_fwd)
    states: int
    ws: bool
    schema: str  # without the name
    backward_schema: str
    fwd: Callable  # (*t, *flags) -> outputs, on the chosen backend
    bwd: Callable  # the backward op's arguments -> its outputs, on the chosen backend
    reference: Callable  # (*t, *flags) -> outputs: pure PyTorch, differentiable to any order
    fake: Callable  # the op's arguments -> outputs, shapes only
    fake_backward: Callable
    grads: Callable  # (bptt, t, y, ws, output grads, needs_input_grad, flags) -> gradients of t
    infer: Optional[Callable] = None  # fwd without the workspace, for calls nothing differentiates
    # Elman: its backward op is differentiable through fastrnn::<op>_double_backward, this schema, running
    # ``second_order`` (the written-out VJP of ``reference_backward``). None: a create_graph backward
    # differentiates ``reference`` recomputed on the saved inputs, xw included.
    second_order_schema: Optional[str] = None
    second_order: Optional[Callable] = None
    reference_backward: Optional[Callable] = None
    vmap: Optional[Callable] = None  # (op) -> the op's vmap rule; its backward ops then run once per slice
    # GRU / LSTM: the layer node's (*states, w_hh, extra) -> (what it saves of them, which of them it saves for real)
    layer_saved: Optional[Callable] = None

    @cached_property
    def outputs(self) -> int:
        return 1 + self.states

    @cached_property
    def tensors(self) -> int:
        return _tensor_args(self.schema)

    @cached_property
    def saved_from(self) -> int:
        """The first tensor input the op saves: xw only where a create_graph backward recomputes the reference."""
        return 1 if self.second_order is not None else 0


# --- what each cell contributes -------------------------------------------------------------------------


def _rnn_grads(bptt, t, y, ws, g, need, flags) -> tuple:
    """``(dxw, dh0, dW_hh)`` from the BPTT's ``(dz, dh0)``; None where ``need`` says none."""
    dz, dh0 = bptt(g[0], g[1], y, t[2], *flags, need[1])
    dw = state_weight_grad(dz, y, t[1], *flags[:2]) if need[2] else None
    return dz, dh0 if need[1] else None, dw


def _gru_grads(bptt, t, y, ws, g, need, flags) -> tuple:
    """``(dxw, dh0, dW_hh, db_hn)`` from ``gru_bwd``'s ``(dxw, dg, dh0)``."""
    dxw, dg, dh0 = bptt(g[0], g[1], y, ws, t[1], t[2], *flags, need[1])
    hidden = y.size(-1)
    dw = state_weight_grad(dg, y, t[1], *flags) if need[2] else None
    db = dg.reshape(-1, 3 * hidden)[:, 2 * hidden :].sum(0) if need[3] else None
    return dxw, dh0 if need[1] else None, dw, db


def _lstm_grads(bptt, t, y, ws, g, need, flags) -> tuple:
    """``(da, dh0, dc0, dW_hh, dW_hr)`` from ``lstm_bwd``'s ``(da, dh_all, dh0, dc0)``."""
    da, dh_all, dh0, dc0 = bptt(g[0], g[1], g[2], ws, t[2], t[3], t[4], *flags, need[1])
    dw = state_weight_grad(da, y, t[1], *flags) if need[3] else None
    dw_hr = None
    if need[4]:
        hidden = t[2].size(-1)
        dw_hr = dh_all.reshape(-1, dh_all.size(-1)).t().mm(ws[..., 5 * hidden :].reshape(-1, hidden))
    return da, dh0 if need[1] else None, dc0 if need[2] else None, dw, dw_hr


def _fold_into_batch(op) -> Callable:
    """The Elman op's vmap rule: shared weights over padded input fold the vmapped dimension into the batch, one
    op call; anything else runs once per slice."""

    def rule(info, in_dims, xw, h0, w_hh, batch_sizes, reverse, activation):
        if in_dims[2] is not None or batch_sizes is not None or in_dims[3] is not None:
            return _vmap_by_loop(op, 3)(info, in_dims, xw, h0, w_hh, batch_sizes, reverse, activation)
        size = info.batch_size
        xs, hs = _to_front(xw, in_dims[0], size), _to_front(h0, in_dims[1], size)  # [V, T, B, H], [V, B, H]
        steps, batch, hidden = xs.shape[1:]
        y, h_n = op(xs.transpose(0, 1).reshape(steps, size * batch, hidden), hs.reshape(size * batch, hidden),
                    w_hh, None, reverse, activation)
        return (y.reshape(steps, size, batch, hidden).transpose(0, 1), h_n.reshape(size, batch, hidden)), (0, 0)

    return rule


def _rnn_fwd(xw, h0, w_hh, batch_sizes, reverse, activation):
    return select_backend(xw).fwd(xw, h0, w_hh, batch_sizes, reverse, ACTIVATIONS[activation])


def _rnn_bwd(dy, dh_n, y, w_hh, batch_sizes, reverse, activation, need_dh0=True):
    act = ACTIVATIONS[activation]
    return select_backend(y).bwd(dy, dh_n, y, w_hh, batch_sizes, reverse, act, need_dh0=need_dh0)


def _rnn_fake(xw, h0, w_hh, *flags):
    return torch.empty_like(xw), torch.empty_like(h0)


def _rnn_fake_backward(dy, dh_n, y, w_hh, *flags):
    return torch.empty_like(y), torch.empty_like(dh_n)


def _gru_fake(xw, h0, w_hh, b_hn, *flags):
    lead, hidden = xw.shape[:-1], h0.size(-1)
    return xw.new_empty(*lead, hidden), h0.new_empty(h0.shape), xw.new_empty(*lead, 4 * hidden)


def _gru_fake_backward(dy, dh_n, y, ws, h0, w_hh, *flags):
    wide = y.new_empty(*y.shape[:-1], 3 * y.size(-1))
    return wide, torch.empty_like(wide), dh_n.new_empty(dh_n.shape)


def _lstm_fake(xw, h0, c0, w_hh, w_hr, *flags):
    lead, hidden = xw.shape[:-1], c0.size(-1)
    saved = 5 * hidden if w_hr is None else 6 * hidden
    return xw.new_empty(*lead, h0.size(-1)), h0.new_empty(h0.shape), c0.new_empty(c0.shape), xw.new_empty(*lead, saved)


def _lstm_fake_backward(dy, dh_n, dc_n, ws, c0, w_hh, w_hr, *flags):
    dh_all = dy.new_empty(dy.shape) if w_hr is not None else dy.new_empty(0)
    return ws.new_empty(*ws.shape[:-1], 4 * c0.size(-1)), dh_all, dh_n.new_empty(dh_n.shape), c0.new_empty(c0.shape)


def _gated_infer(cpp: str, reference: Callable) -> Callable:
    """``fwd`` without the workspace: the C++ inference op (given no ``W_ih``), or the reference."""

    def run(xw, *rest):
        if _use_cpp(xw):
            return getattr(torch.ops.fastrnn, f"{cpp}_infer")(xw, None, None, *rest)
        return reference(xw, *rest)[:-1]

    return run


def _gru_layer_saved(h0: Tensor, w_hh: Tensor, b_hn: Optional[Tensor]) -> tuple[tuple, tuple]:
    # torch keeps h0 - n (an intermediate) where w_hh needs no gradient; the backward reads h0 itself.
    return (h0 if w_hh.requires_grad else h0.clone(), w_hh, None), (w_hh.requires_grad, True, False)


def _lstm_layer_saved(h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Optional[Tensor]) -> tuple[tuple, tuple]:
    return (h0 if w_hh.requires_grad else None, c0, w_hh, w_hr), (w_hh.requires_grad, True, True, True)


RNN = Recurrence(
    name="RNN", op="recurrence", cpp="rnn", states=1, ws=False,
    schema="(Tensor xw, Tensor h0, Tensor w_hh, Tensor? batch_sizes, bool reverse, SymInt activation) "
           "-> (Tensor, Tensor)",
    backward_schema="(Tensor dy, Tensor dh_n, Tensor y, Tensor w_hh, Tensor? batch_sizes, bool reverse, "
                    "SymInt activation, bool need_dh0) -> (Tensor, Tensor)",
    fwd=_rnn_fwd, bwd=_rnn_bwd,
    reference=lambda *a: ref.rnn_recurrence_ref(*a[:-1], ACTIVATIONS[a[-1]]),
    fake=_rnn_fake, fake_backward=_rnn_fake_backward, grads=_rnn_grads,
    second_order_schema="(Tensor ddz, Tensor ddh0, Tensor dy, Tensor dh_n, Tensor y, Tensor w_hh, "
                        "Tensor? batch_sizes, bool reverse, SymInt activation) -> (Tensor, Tensor, Tensor, Tensor)",
    second_order=lambda *a: ref.rnn_recurrence_double_bwd_ref(*a[:-1], ACTIVATIONS[a[-1]]),
    reference_backward=lambda *a: ref.rnn_recurrence_bwd_ref(*a[:-1], ACTIVATIONS[a[-1]]),
    vmap=_fold_into_batch,
)

GRU = Recurrence(
    name="GRU", op="gru_recurrence", cpp="gru", states=1, ws=True,
    schema="(Tensor xw, Tensor h0, Tensor w_hh, Tensor? b_hn, Tensor? batch_sizes, bool reverse) "
           "-> (Tensor, Tensor, Tensor)",
    backward_schema="(Tensor dy, Tensor dh_n, Tensor y, Tensor ws, Tensor h0, Tensor w_hh, Tensor? batch_sizes, "
                    "bool reverse, bool need_dh0) -> (Tensor, Tensor, Tensor)",
    fwd=_cpp_or_reference("gru_fwd", lambda *a: ref.gru_recurrence_ref(*a)),
    bwd=_cpp_or_reference("gru_bwd", lambda *a: ref.gru_recurrence_bwd_ref(*a[:-1])),
    reference=lambda *a: ref.gru_recurrence_ref(*a),
    fake=_gru_fake, fake_backward=_gru_fake_backward, grads=_gru_grads,
    infer=_gated_infer("gru", lambda *a: ref.gru_recurrence_ref(*a)),
    layer_saved=_gru_layer_saved,
)

LSTM = Recurrence(
    name="LSTM", op="lstm_recurrence", cpp="lstm", states=2, ws=True,
    schema="(Tensor xw, Tensor h0, Tensor c0, Tensor w_hh, Tensor? w_hr, Tensor? batch_sizes, bool reverse) "
           "-> (Tensor, Tensor, Tensor, Tensor)",
    backward_schema="(Tensor dy, Tensor dh_n, Tensor dc_n, Tensor ws, Tensor c0, Tensor w_hh, Tensor? w_hr, "
                    "Tensor? batch_sizes, bool reverse, bool need_dh0) -> (Tensor, Tensor, Tensor, Tensor)",
    fwd=_cpp_or_reference("lstm_fwd", lambda *a: ref.lstm_recurrence_ref(*a)),
    bwd=_cpp_or_reference("lstm_bwd", lambda *a: ref.lstm_recurrence_bwd_ref(*a[:-1])),
    reference=lambda *a: ref.lstm_recurrence_ref(*a),
    fake=_lstm_fake, fake_backward=_lstm_fake_backward, grads=_lstm_grads,
    infer=_gated_infer("lstm", lambda *a: ref.lstm_recurrence_ref(*a)),
    layer_saved=_lstm_layer_saved,
)


# --- the wiring, once for every cell --------------------------------------------------------------------

_NONES = (None,) * 4


def _saver(spec: Recurrence) -> Callable:
    """``save(ctx, inputs, output)``: what backward reads, the tensor inputs from ``spec.saved_from`` on, ``y``
    and the workspace, and the step layout (the per-call path: the spec's numbers bound once)."""
    first, count, outputs = spec.saved_from, spec.tensors, spec.outputs

    def save(ctx, inputs: tuple, output: tuple) -> None:
        ctx.save_for_backward(*inputs[first:count], output[0], *output[outputs:])
        ctx.flags = inputs[count:]

    return save


def _saved(spec: Recurrence, ctx) -> tuple:
    """``(t, y, ws)`` from one read of ``ctx.saved_tensors`` (non-reentrant checkpointing allows one unpack per
    backward), None in ``t`` where an input was not saved."""
    saved = ctx.saved_tensors
    first, count = spec.saved_from, spec.tensors - spec.saved_from
    return (None,) * first + saved[:count], saved[count], saved[-1] if spec.ws else None


def _zeros_if_none(grads: tuple, like: tuple) -> tuple:
    return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, like))


def _contiguous(tensors) -> tuple:
    """The custom ops' outputs in the layout their fake kernels promise (dense, row-major)."""
    return tuple(t.contiguous() for t in tensors)


def differentiate_reference(ctx, inputs: tuple, outputs: tuple, grads: tuple) -> list:
    """create_graph: the gradients of ``inputs`` through ``outputs``, the pure-PyTorch reference recomputed on
    the saved inputs under autograd, so that any order of gradient is the reference's."""
    grads = _zeros_if_none(grads, outputs)
    wanted = [i for i, t in enumerate(inputs) if ctx.needs_input_grad[i] and t is not None and t.requires_grad]
    result = [None] * len(ctx.needs_input_grad)
    found = torch.autograd.grad(outputs, [inputs[i] for i in wanted], grads, create_graph=True, allow_unused=True)
    for i, grad in zip(wanted, found):
        result[i] = grad
    return result


def _op_grads(spec: Recurrence, ctx, grads: tuple, bptt: Callable, materialized: bool = False) -> tuple:
    """The gradients of the op's inputs ``(*t, *flags)`` through ``bptt`` (the backward kernel or op); without a
    second-order op, a create_graph backward differentiates the reference instead. ``materialized``: no output
    gradient is None (an old-style Function's are zeros)."""
    t, y, ws = _saved(spec, ctx)
    if spec.second_order is None and torch.is_grad_enabled():
        outputs = spec.reference(*t, *ctx.flags)[: spec.outputs]
        return tuple(differentiate_reference(ctx, t, outputs, grads))
    if not materialized:
        grads = _zeros_if_none(grads, (y, *t[1 : 1 + spec.states]))
    return *spec.grads(bptt, t, y, ws, grads, ctx.needs_input_grad, ctx.flags), *_NONES[: len(ctx.flags)]


def _eager_function(spec: Recurrence, backward_op) -> type:
    """The old-style Function for plain eager tensors: a third of the overhead of a ``setup_context`` one."""

    fwd, first, count, outputs = spec.fwd, spec.saved_from, spec.tensors, spec.outputs

    def forward(ctx, *args):  # the per-call path: _saver's body, inline
        output = fwd(*args)
        ctx.save_for_backward(*args[first:count], output[0], *output[outputs:])
        ctx.flags = args[count:]
        return output[:outputs]

    def backward(ctx, *grads):  # create_graph: through the backward op, whose autograd is registered
        return _op_grads(spec, ctx, grads, backward_op if torch.is_grad_enabled() else spec.bwd, True)

    return type(f"{spec.name}RecurrenceFunction", (torch.autograd.Function,), {
        "__doc__": f"``fastrnn::{spec.op}`` on plain eager tensors, old-style (``forward(ctx, ...)``).",
        "forward": staticmethod(forward), "backward": staticmethod(backward), "__module__": __name__})


def _device_checked(fake: Callable, tensors: int) -> Callable:
    def checked(*args):
        check_same_device(*args[:tensors])
        return fake(*args)

    return checked


def _custom_ops(spec: Recurrence) -> tuple:
    """``fastrnn::<op>`` and its backward op, with fakes, registered autograd and (``spec.vmap``) vmap rules."""
    op = torch.library.custom_op(f"fastrnn::{spec.op}", lambda *args: _contiguous(spec.fwd(*args)),
                                 mutates_args=(), schema=spec.schema)
    op.register_fake(_device_checked(spec.fake, spec.tensors))

    def backward_impl(*args):
        out = list(spec.bwd(*args))
        if not args[-1]:  # need_dh0; the backward's outputs end with the initial states' gradients
            out[-spec.states] = torch.zeros_like(args[1])
        return _contiguous(out)

    backward_op = torch.library.custom_op(f"fastrnn::{spec.op}_backward", backward_impl, mutates_args=(),
                                          schema=spec.backward_schema)
    backward_tensors = _tensor_args(spec.backward_schema)
    backward_op.register_fake(_device_checked(spec.fake_backward, backward_tensors))
    op.register_autograd(lambda ctx, *grads: _op_grads(spec, ctx, grads[: spec.outputs], backward_op),
                         setup_context=_saver(spec))
    vmap = spec.vmap is not None and hasattr(op, "register_vmap")  # torch >= 2.5; else functorch's fallback
    if vmap:
        op.register_vmap(spec.vmap(op))
        backward_op.register_vmap(_vmap_by_loop(backward_op, backward_tensors))
    if spec.second_order is not None:
        _second_order_op(spec, backward_op, backward_tensors, vmap)
    return op, backward_op


def _second_order_op(spec: Recurrence, backward_op, backward_tensors: int, vmap: bool) -> None:
    """``fastrnn::<op>_double_backward``, the backward op's registered autograd: the VJP of the backward with
    respect to its tensor arguments, as ``spec.second_order`` writes it out. Its own autograd (third order and
    up) is torch.func's VJP of the differentiable ``spec.reference_backward``: torch.func keeps its levels apart
    from the outer autograd, so with create_graph every further order works."""
    double_op = torch.library.custom_op(f"fastrnn::{spec.op}_double_backward", lambda *a: spec.second_order(*a),
                                        mutates_args=(), schema=spec.second_order_schema)
    tensors = _tensor_args(spec.second_order_schema)
    first = tensors - backward_tensors  # the cotangents of the backward's outputs come first
    double_op.register_fake(_device_checked(lambda *a: tuple(torch.empty_like(t) for t in a[first:tensors]), tensors))

    def save(ctx, saved: tuple, flags: tuple, output: tuple = ()) -> None:
        ctx.save_for_backward(*saved)
        ctx.flags, ctx.shapes = flags, [o.shape for o in output]

    def double_backward_grad(ctx, *cotangents):
        saved = ctx.saved_tensors

        def double_backward(*a):
            _, vjp = torch.func.vjp(lambda *b: spec.reference_backward(*b, *ctx.flags), *a[first:])
            return vjp(a[:first])

        _, vjp = torch.func.vjp(double_backward, *saved)
        grads = vjp(_zeros_if_none(cotangents, saved[first:]))
        return *(g if need else None for g, need in zip(grads, ctx.needs_input_grad)), *_NONES[: len(ctx.flags)]

    def backward_grad(ctx, *cotangents):
        saved = ctx.saved_tensors
        cotangents = tuple(saved[0].new_zeros(s) if c is None else c for c, s in zip(cotangents, ctx.shapes))
        grads = double_op(*cotangents, *saved, *ctx.flags)
        return *(g if need else None for g, need in zip(grads, ctx.needs_input_grad)), *_NONES[: len(ctx.flags) + 1]

    double_op.register_autograd(double_backward_grad,
                                setup_context=lambda ctx, inputs, output: save(ctx, inputs[:tensors], inputs[tensors:]))
    backward_op.register_autograd(backward_grad, setup_context=lambda ctx, inputs, output: save(
        ctx, inputs[:backward_tensors], inputs[backward_tensors:-1], output))  # [-1]: need_dh0, no step layout
    if vmap:
        double_op.register_vmap(_vmap_by_loop(double_op, tensors))


def _to_front(t: Optional[Tensor], dim: Optional[int], size: int) -> Optional[Tensor]:
    if t is None or dim is None:
        return None if t is None else t.unsqueeze(0).expand(size, *t.shape)
    return t.movedim(dim, 0)


def _vmap_by_loop(op, tensor_args: int) -> Callable:
    """A vmap rule that runs the op once per vmapped slice (batch_sizes must not be vmapped)."""

    def rule(info, in_dims, *args):
        if any(d is not None for d in in_dims[tensor_args:]):
            raise ValueError("fastrnn: torch.func.vmap over batch_sizes is not supported")
        tensors = [_to_front(t, d, info.batch_size) for t, d in zip(args[:tensor_args], in_dims)]
        outs = [op(*(t[i] for t in tensors), *args[tensor_args:]) for i in range(info.batch_size)]
        stacked = tuple(torch.stack(parts) for parts in zip(*outs))
        return stacked, (0,) * len(stacked)

    return rule


def _functorch_function(spec: Recurrence, op, backward_op) -> type:
    """functorch needs a ``setup_context`` Function (the custom op's registered autograd is not one); it calls
    the op, which functorch batches, under no_grad. First order: deeper transforms run the reference."""

    def forward(*args):
        with torch.no_grad():  # this Function is the autograd; the op brings the vmap rule
            return op(*args)

    save = _saver(spec)

    def setup_context(ctx, inputs, output):
        save(ctx, inputs, output)
        if spec.ws:
            ctx.mark_non_differentiable(output[-1])

    def backward(ctx, *grads):
        with torch.no_grad():
            return _op_grads(spec, ctx, grads[: spec.outputs], backward_op)

    return type(f"_{spec.name}UnderTransforms", (torch.autograd.Function,), {
        "generate_vmap_rule": True, "forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward), "__module__": __name__})


def _define(spec: Recurrence) -> tuple:
    """(eager Function, custom op, backward op, functorch Function, entry) of one spec. The entry runs the op on
    ``(*t, *flags)`` through whichever of them fits who is looking and returns ``(y, *final states)``."""
    op, backward_op = _custom_ops(spec)
    function, under_transforms = _eager_function(spec, backward_op), _functorch_function(spec, op, backward_op)
    count, outputs, reference, infer = spec.tensors, spec.outputs, spec.reference, spec.infer

    def entry(*args):
        tensors = args[:count]
        if needs_any_order(*tensors):
            return reference(*args)[:outputs]
        if torch._C._are_functorch_transforms_active():
            return under_transforms.apply(*args)[:outputs]
        if traced(args[0]):
            return op(*args)[:outputs]
        if infer is not None and not differentiated(*tensors):
            return infer(*args)
        return function.apply(*args)

    return function, op, backward_op, under_transforms, entry


RNNRecurrenceFunction, recurrence, recurrence_backward, _RNNUnderTransforms, _rnn_entry = _define(RNN)
GRURecurrenceFunction, gru_recurrence_op, gru_recurrence_backward_op, _GRUUnderTransforms, _gru_entry = _define(GRU)
LSTMRecurrenceFunction, lstm_recurrence_op, lstm_recurrence_backward_op, _LSTMUnderTransforms, _lstm_entry = _define(
    LSTM)
recurrence_double_backward = torch.ops.fastrnn.recurrence_double_backward
_ENTRIES = {"RNN": _rnn_entry, "GRU": _gru_entry, "LSTM": _lstm_entry}


# --- entries --------------------------------------------------------------------------------------------


def rnn_recurrence(
    xw: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
    activation: str = "tanh",
) -> tuple[Tensor, Tensor]:
    """``h_t = act(xw_t + h_{t-1} W_hh^T)`` on the backend chosen for ``xw``, differentiable to any order.

    Args:
        xw: ``[T, B, H]`` or packed ``[N, H]``, the input projection with both biases folded in.
        h0: ``[B, H]``. w_hh: ``[H, H]``. batch_sizes: ``[T]`` int64 CPU tensor for packed ``xw``.

    Returns:
        ``y`` (shape of ``xw``) and ``h_n`` ``[B, H]``.
    """
    if not (isinstance(xw, Tensor) and isinstance(h0, Tensor) and isinstance(w_hh, Tensor)):
        name, t = next((n, t) for n, t in (("xw", xw), ("h0", h0), ("w_hh", w_hh)) if not isinstance(t, Tensor))
        raise TypeError(f"fastrnn.rnn_recurrence(): argument '{name}' must be Tensor, not {type(t).__name__}")
    check_same_device(xw, h0, w_hh)
    return _rnn_entry(xw, h0, w_hh, batch_sizes, reverse, ref.activation_id(activation))


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
    return _gru_entry(xw, h0, w_hh, b_hn, batch_sizes, reverse)


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
    return _lstm_entry(xw, h0, c0, w_hh, w_hr, batch_sizes, reverse)


# --- whole layers, eager training -----------------------------------------------------------------------
# One autograd node per layer and direction that owns the input projection too; it runs only where
# _one_call found the C++ backend, so it calls the C++ ops directly. Its forward is one C++ op, which makes
# each step's x_t W_ih^T + bias next to h W_hh^T in the step kernel where that pays (the [T, B, G] projection is
# then never written out and read back) and one GEMM first elsewhere (csrc/recurrence.cpp, fuse_projection);
# its backward's dX = da W_ih runs on fastrnn::mm_nn (oneDNN's microkernel, csrc/brgemm_gemm.h), which beats the
# BLAS behind at::mm on this project's CPUs.

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
    """``<op>(F.linear(x, w_ih, bias), *rest)`` as one node (see :func:`layer`)."""

    def forward(ctx, x, w_ih, bias, *rest):
        output = getattr(torch.ops.fastrnn, f"{spec.cpp}_layer_fwd")(x, w_ih, bias, *rest)
        saved, flags = spec.layer_saved(*rest[:-2])
        x_saved, w_saved = x if w_ih.requires_grad else None, w_ih if x.requires_grad else None
        ctx.save_for_backward(x_saved, w_saved, *saved, output[0], output[-1])
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


def layer(spec: Recurrence, x: Tensor, w_ih: Tensor, bias: Optional[Tensor], *rest) -> tuple:
    """One layer and direction, ``rest = (*states, w_hh, extra, batch_sizes, reverse)``: one C++ inference op
    (which makes each step's input projection itself where that pays), one layer node, or the projection and
    the op's entry (:func:`gru_recurrence`, :func:`lstm_recurrence`)."""
    path = _one_call(x, w_ih, bias, *rest[:-2])
    if path == "infer":
        return getattr(torch.ops.fastrnn, f"{spec.cpp}_infer")(x, w_ih, bias, *rest)
    if path == "train":
        return _LAYER_FUNCTIONS[spec.name].apply(x, w_ih, bias, *rest)
    return _ENTRIES[spec.name](F.linear(x, w_ih, bias), *rest)


def _layer_fake(spec: Recurrence, keep: int) -> Callable:
    """A ``<cpp>_layer_fwd`` / ``_infer`` fake: the op's shapes, ``x`` in place of ``xw``, ``keep`` outputs."""
    return lambda x, w_ih, bias, *rest: spec.fake(x, *rest)[:keep]


def _register_cpp_fakes() -> None:
    """Shape-only kernels of the C++ ops, for tracers and torch.library.opcheck: the shapes of the custom ops
    they serve (``<cpp>_fwd`` / ``_bwd`` take the op's arguments, ``_layer_fwd`` / ``_infer`` ``x, W_ih, bias``
    first); run by :func:`fastrnn._cpp.on_load` when the ops load."""
    for spec in (RNN, GRU, LSTM):
        cpp = spec.cpp
        torch.library.register_fake(f"fastrnn::{cpp}_fwd")(_device_checked(spec.fake, spec.tensors))
        torch.library.register_fake(f"fastrnn::{cpp}_bwd")(
            _device_checked(spec.fake_backward, _tensor_args(spec.backward_schema)))
        if spec.ws:
            torch.library.register_fake(f"fastrnn::{cpp}_layer_fwd")(_layer_fake(spec, spec.outputs + 1))
            torch.library.register_fake(f"fastrnn::{cpp}_infer")(_layer_fake(spec, spec.outputs))
    torch.library.register_fake("fastrnn::mm_nn")(lambda a, b, bias=None: a.new_empty(a.size(0), b.size(1)))


register_flop_formulas()
# The C++ ops' fakes and FLOP formulas as soon as the ops load, so that a direct torch.ops.fastrnn.* call under a
# tracer finds them before any module has run.
on_load(_register_cpp_fakes)
on_load(register_flop_formulas)
