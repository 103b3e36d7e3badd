"""Pure-PyTorch reference of the family's recurrence ops (Elman, GRU, LSTM): the oracle for every kernel and the
last-resort backend.

Each op is one layer, one direction, the whole sequence, on the precomputed input projection. Elman
(``xw = x W_ih^T + b_ih + b_hh``)::

    h_t = act(xw_t + h_{t-1} W_hh^T)

GRU (``G = 3H``, gates in torch's order r, z, n; ``xw = x W_ih^T + b_ih + [b_hr, b_hz, 0]``)::

    a = h W_hh^T;  r = sigmoid(xw_r + a_r);  z = sigmoid(xw_z + a_z);  m = a_n + b_hn
    n = tanh(xw_n + r * m);  h' = (h - n) * z + n            (torch's formula, b_hn inside r's product)

    saved ws = [r, z, n, m]  (4H per row)

LSTM (``G = 4H``, gates i, f, g, o; ``xw = x W_ih^T + b_ih + b_hh``; ``P`` = proj_size or H)::

    a = xw + h W_hh^T;  i, f, o = sigmoid(a_i, a_f, a_o);  g = tanh(a_g)
    c' = f * c + i * g;  u = o * tanh(c');  h' = u W_hr^T (or u without projection)

    saved ws = [i, f, g, o, c'] (+ u with projection): 5H or 6H per row

Sequences are either padded, ``xw`` of shape ``[T, B, G]``, or packed, ``xw`` of shape ``[N, G]`` with
``batch_sizes`` ``[T]`` (non-increasing, ``N = sum(batch_sizes)``): step ``t`` updates rows
``0 .. batch_sizes[t] - 1`` of the running state and leaves the others alone, so the running state after
the last step is ``h_n`` in both directions. ``reverse`` walks the steps from ``T - 1`` down to ``0``.

One step loop runs every cell's forward (:func:`run_steps`), one plain step function per cell being the readable
oracle. The gated cells' backward passes return the pre-activation gradients, from which the caller makes every
weight, bias and input gradient with one GEMM or reduction each. Everything here is written with differentiable
torch ops and works in any dtype (float64 included).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

ACTIVATIONS = ("tanh", "relu")


def activation_id(activation: str) -> int:
    """The integer the compiled ops take for ``activation`` (0: tanh, 1: relu)."""
    return ACTIVATIONS.index(activation)


def check_batch_sizes(batch_sizes: Tensor | None, rows: int, batch: int) -> None:
    """The compiled op's checks of packed step sizes, for the backends written in Python (same messages):
    a 1-D int64 CPU tensor, positive, non-increasing, summing to ``rows``, starting at ``batch``."""
    if batch_sizes is None:
        return
    if batch_sizes.dim() != 1 or batch_sizes.dtype != torch.int64 or batch_sizes.device.type != "cpu":
        raise RuntimeError(
            f"fastrnn: batch_sizes must be a 1-D int64 CPU tensor, got {batch_sizes.dim()}-D "
            f"{batch_sizes.dtype} on {batch_sizes.device}"
        )
    sizes = batch_sizes.tolist()
    total = 0
    for t, b in enumerate(sizes):
        if b <= 0:
            raise RuntimeError(f"fastrnn: batch_sizes must be positive, got {b} at step {t}")
        if t > 0 and b > sizes[t - 1]:
            raise RuntimeError(f"fastrnn: batch_sizes must be non-increasing, got {sizes[t - 1]} then {b} at step {t}")
        total += b
    if total != rows:
        raise RuntimeError(f"fastrnn: batch_sizes sum to {total} but the input has {rows} rows")
    if sizes and sizes[0] != batch:
        raise RuntimeError(f"fastrnn: batch_sizes start at {sizes[0]} but the state has {batch} rows")


def _schedule(x: Tensor, batch_sizes: Tensor | None, reverse: bool, backward: bool):
    """Rows per step (``batch_sizes``, or ``[B] * T`` for padded ``[T, B, G]``), first packed row of each step (plus
    the total N), and the order the pass walks the steps in: the forward pass from 0 (from T - 1 when reversed),
    the backward pass the other way."""
    sizes = [x.size(1)] * x.size(0) if batch_sizes is None else [int(b) for b in batch_sizes.tolist()]
    offsets = [0]
    for b in sizes:
        offsets.append(offsets[-1] + b)
    order = list(range(len(sizes)))
    return sizes, offsets, order[::-1] if reverse != backward else order


def _act_grad(y: Tensor, activation: str) -> Tensor:
    """Derivative of the activation written in terms of its output ``y``. relu's is torch's
    ``threshold_backward``: 0 where ``y <= 0``, else 1, so a NaN output passes its gradient through."""
    return 1 - y * y if activation == "tanh" else (y <= 0).logical_not().to(y.dtype)


def run_steps(step, xw: Tensor, states: list[Tensor], batch_sizes: Tensor | None, reverse: bool):
    """The forward step loop of every cell: ``step(xw_rows, *state_rows) -> (*new_states, ws_rows)`` over the
    steps (``ws_rows`` None where the cell saves nothing); rows past a step's batch size keep their state.

    Returns ``y`` (each step's first state, ``xw``'s leading shape), the final states and ``ws`` (or None).
    """
    sizes, offsets, order = _schedule(xw, batch_sizes, reverse, backward=False)
    flat = xw.reshape(-1, xw.size(-1))
    ys: dict[int, Tensor] = {}
    wss: dict[int, Tensor] = {}
    for t in order:
        b = sizes[t]
        *new, ws = step(flat[offsets[t] : offsets[t + 1]], *(s[:b] for s in states))
        ys[t], wss[t] = new[0], ws
        states = [torch.cat([n, s[b:]]) if b < s.size(0) else n for n, s in zip(new, states)]
    lead = xw.shape[:-1]
    if not sizes:
        width = states[0].size(-1)
        return flat[:0, :width].view(*lead, width), states, None
    y = torch.cat([ys[t] for t in range(len(sizes))]).view(*lead, -1)
    return y, states, None if wss[0] is None else torch.cat([wss[t] for t in range(len(sizes))]).view(*lead, -1)


def rnn_recurrence_ref(
    xw: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    batch_sizes: Tensor | None = None,
    reverse: bool = False,
    activation: str = "tanh",
) -> tuple[Tensor, Tensor]:
    """Run the recurrence step by step.

    Args:
        xw: ``[T, B, H]`` (padded) or ``[N, H]`` (packed with ``batch_sizes``).
        h0: ``[B, H]`` initial state.
        w_hh: ``[H, H]``.
        batch_sizes: ``[T]`` int64 CPU tensor for packed input, else ``None``.

    Returns:
        ``y`` with the shape of ``xw`` and ``h_n`` ``[B, H]``.
    """
    act = torch.tanh if activation == "tanh" else torch.relu
    y, (h_n,), _ = run_steps(lambda x, h: (act(x + h @ w_hh.t()), None), xw, [h0], batch_sizes, reverse)
    return y, h_n


def rnn_recurrence_bwd_ref(
    dy: Tensor,
    dh_n: Tensor,
    y: Tensor,
    w_hh: Tensor,
    batch_sizes: Tensor | None = None,
    reverse: bool = False,
    activation: str = "tanh",
) -> tuple[Tensor, Tensor]:
    """Backpropagation through time of :func:`rnn_recurrence_ref`.

    ``g_t = dy_t + dh_{t+1}``, ``dz_t = g_t * act'(y_t)``, ``dh_t = dz_t W_hh``.

    Returns:
        ``dz`` with the shape of ``y`` (the gradient of ``xw``) and ``dh0`` ``[B, H]``.
    """
    sizes, offsets, steps = _schedule(y, batch_sizes, reverse, backward=True)
    hidden = y.size(-1)
    flat_y = y.reshape(-1, hidden)
    flat_dy = dy.reshape(-1, hidden)
    # Out of place throughout, so that this backward is itself differentiable (double backward).
    dh = dh_n
    pieces: dict[int, Tensor] = {}
    for t in steps:
        b, lo, hi = sizes[t], offsets[t], offsets[t + 1]
        dz_t = (flat_dy[lo:hi] + dh[:b]) * _act_grad(flat_y[lo:hi], activation)
        pieces[t] = dz_t
        dh_t = dz_t @ w_hh
        dh = torch.cat([dh_t, dh[b:]]) if b < dh.size(0) else dh_t
    dz = torch.cat([pieces[t] for t in range(len(sizes))]) if sizes else flat_y[:0]
    return dz.view_as(y), dh


def rnn_recurrence_double_bwd_ref(
    ddz: Tensor,
    ddh0: Tensor,
    dy: Tensor,
    dh_n: Tensor,
    y: Tensor,
    w_hh: Tensor,
    batch_sizes: Tensor | None = None,
    reverse: bool = False,
    activation: str = "tanh",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Vector-Jacobian product of :func:`rnn_recurrence_bwd_ref`, written out (no autograd inside).

    With cotangents ``ddz`` (of dz) and ``ddh0`` (of dh0), replay the backward keeping ``g_t``, then walk
    its steps in reverse with the carry's cotangent ``c`` (``ddh0`` at first)::

        dz^_t = ddz_t + c W^T;   dW += dz_t^T c;   g^_t = dz^_t * act'(y_t);   c = g^_t
        y^_t = dz^_t * g_t * act''(y_t)   (tanh: -2 y_t; relu: 0)

    Returns the gradients with respect to ``dy``, ``dh_n``, ``y`` and ``w_hh``.
    """
    sizes, offsets, steps = _schedule(y, batch_sizes, reverse, backward=True)
    hidden = y.size(-1)
    flat_y, flat_dy, flat_ddz = (t.reshape(-1, hidden) for t in (y, dy, ddz))
    carry = dh_n.clone()
    g = torch.empty_like(flat_y)
    dz = torch.empty_like(flat_y)
    for t in steps:
        b, lo, hi = sizes[t], offsets[t], offsets[t + 1]
        g[lo:hi] = flat_dy[lo:hi] + carry[:b]
        dz[lo:hi] = g[lo:hi] * _act_grad(flat_y[lo:hi], activation)
        carry[:b] = dz[lo:hi] @ w_hh
    c = ddh0.clone()
    d_dy = torch.empty_like(flat_y)
    d_y = torch.zeros_like(flat_y)
    d_w = torch.zeros_like(w_hh)
    for t in reversed(steps):
        b, lo, hi = sizes[t], offsets[t], offsets[t + 1]
        dz_hat = flat_ddz[lo:hi] + c[:b] @ w_hh.t()
        d_w += dz[lo:hi].t() @ c[:b]
        if activation == "tanh":
            d_y[lo:hi] = dz_hat * g[lo:hi] * (-2 * flat_y[lo:hi])
        d_dy[lo:hi] = dz_hat * _act_grad(flat_y[lo:hi], activation)
        c[:b] = d_dy[lo:hi]
    return d_dy.view_as(dy), c, d_y.view_as(y), d_w


def prev_state_index(batch_sizes: Tensor, reverse: bool, total_rows: int) -> Tensor:
    """For each packed row, where its previous state lives in ``cat([y, h0])``.

    Row ``r`` of step ``t`` reads, in the forward direction, row ``r`` of step ``t - 1`` (or of ``h0`` at
    ``t = 0``); reversed, row ``r`` of step ``t + 1`` when that row is active there, else row ``r`` of ``h0``.
    ``total_rows`` is ``N = sum(batch_sizes)``, passed in (it is ``y.size(0)``) so that tracers never need
    the values of ``batch_sizes``. Returns an int64 tensor ``[N]`` with values in ``[0, N + B)``.
    """
    sizes = batch_sizes.to(torch.int64)
    offsets = torch.cumsum(sizes, 0) - sizes
    step = torch.repeat_interleave(torch.arange(sizes.numel()), sizes, output_size=total_rows)
    row = torch.arange(total_rows) - offsets[step]
    h0_index = total_rows + row
    if not reverse:
        prev = offsets[(step - 1).clamp(min=0)] + row
        return torch.where(step == 0, h0_index, prev)
    nxt = (step + 1).clamp(max=sizes.numel() - 1)
    active_next = (step + 1 < sizes.numel()) & (row < sizes[nxt])
    return torch.where(active_next, offsets[nxt] + row, h0_index)


def gru_step(xw_t: Tensor, h: Tensor, w_hh: Tensor, b_hn: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """One GRU step on ``b`` rows: ``xw_t`` ``[b, 3H]``, ``h`` ``[b, H]``. Returns ``h'`` and ws ``[b, 4H]``."""
    x_r, x_z, x_n = xw_t.chunk(3, -1)
    a_r, a_z, a_n = (h @ w_hh.t()).chunk(3, -1)
    m = a_n if b_hn is None else a_n + b_hn
    r = torch.sigmoid(x_r + a_r)
    z = torch.sigmoid(x_z + a_z)
    n = torch.tanh(x_n + r * m)
    return (h - n) * z + n, torch.cat([r, z, n, m], -1)


def lstm_step(
    xw_t: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, w_hr: Optional[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM step: ``xw_t`` ``[b, 4H]``, ``h`` ``[b, P]``, ``c`` ``[b, H]``. Returns ``h'``, ``c'``, ws."""
    a_i, a_f, a_g, a_o = (xw_t + h @ w_hh.t()).chunk(4, -1)
    i, f, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.sigmoid(a_o)
    g = torch.tanh(a_g)
    c_new = f * c + i * g
    u = o * torch.tanh(c_new)
    saved = [i, f, g, o, c_new]
    if w_hr is None:
        return u, c_new, torch.cat(saved, -1)
    return u @ w_hr.t(), c_new, torch.cat([*saved, u], -1)


def gru_recurrence_ref(
    xw: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor] = None,
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """GRU over the sequence. ``xw`` ``[T, B, 3H]`` or ``[N, 3H]``; ``h0`` ``[B, H]``; ``w_hh`` ``[3H, H]``;
    ``b_hn`` ``[H]``. Returns ``y`` (``[T, B, H]`` / ``[N, H]``), ``h_n`` ``[B, H]`` and ws (``4H`` a row)."""
    y, (h_n,), ws = run_steps(lambda x, h: gru_step(x, h, w_hh, b_hn), xw, [h0], batch_sizes, reverse)
    return y, h_n, ws


def lstm_recurrence_ref(
    xw: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor] = None,
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """LSTM over the sequence. ``xw`` ``[T, B, 4H]`` or ``[N, 4H]``; ``h0`` ``[B, P]``; ``c0`` ``[B, H]``;
    ``w_hh`` ``[4H, P]``; ``w_hr`` ``[P, H]``. Returns ``y`` (``P`` a row), ``h_n``, ``c_n`` and ws."""
    y, (h_n, c_n), ws = run_steps(lambda x, h, c: lstm_step(x, h, c, w_hh, w_hr), xw, [h0, c0], batch_sizes, reverse)
    return y, h_n, c_n, ws


def _prev_state(flat: Tensor, init: Tensor, sizes, offsets, t: int, reverse: bool) -> Tensor:
    """Rows ``0 .. sizes[t]`` of the state before step ``t``: the neighbouring step's rows where that step
    covers them, ``init`` for the rest (a reversed packed sequence starts its shorter rows from ``init``)."""
    b, p = sizes[t], t + 1 if reverse else t - 1
    if not 0 <= p < len(sizes):
        return init[:b]
    k = min(b, sizes[p])
    rows = flat[offsets[p] : offsets[p] + k]
    return rows if k == b else torch.cat([rows, init[k:b]])


def gru_recurrence_bwd_ref(
    dy: Tensor,
    dh_n: Tensor,
    y: Tensor,
    ws: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """BPTT of :func:`gru_recurrence_ref`. With ``g = dy_t + dh_{t+1}``::

        dn = g (1 - z) (1 - n^2);  dz = g (h - n) z (1 - z);  dr = dn m r (1 - r);  dm = dn r
        dh_t = g z + [dr, dz, dm] W_hh

    Returns ``dxw`` (``[dr, dz, dn]``, shape of ``xw``), ``dg`` (``[dr, dz, dm]``, shape of ``xw``: the
    gradient of ``h W_hh^T + [0, 0, b_hn]``) and ``dh0`` ``[B, H]``.
    """
    sizes, offsets, order = _schedule(y, batch_sizes, reverse, backward=True)
    hidden = y.size(-1)
    flat_y, flat_dy, flat_ws = y.reshape(-1, hidden), dy.reshape(-1, hidden), ws.reshape(-1, 4 * hidden)
    dxw = torch.empty(flat_y.size(0), 3 * hidden, dtype=y.dtype, device=y.device)
    dg = torch.empty_like(dxw)
    dh = dh_n.clone()
    for t in order:
        b, lo, hi = sizes[t], offsets[t], offsets[t + 1]
        r, z, n, m = flat_ws[lo:hi].chunk(4, -1)
        h_prev = _prev_state(flat_y, h0, sizes, offsets, t, reverse)
        g = flat_dy[lo:hi] + dh[:b]
        dn = g * (1 - z) * (1 - n * n)
        dz = g * (h_prev - n) * z * (1 - z)
        dr = dn * m * r * (1 - r)
        dxw[lo:hi] = torch.cat([dr, dz, dn], -1)
        dg[lo:hi] = torch.cat([dr, dz, dn * r], -1)
        dh[:b] = g * z + dg[lo:hi] @ w_hh
    lead = y.shape[:-1]
    return dxw.view(*lead, -1), dg.view(*lead, -1), dh


def lstm_recurrence_bwd_ref(
    dy: Tensor,
    dh_n: Tensor,
    dc_n: Tensor,
    ws: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor] = None,
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """BPTT of :func:`lstm_recurrence_ref`. With ``dh = dy_t + dh_{t+1}`` and ``du = dh W_hr`` (or ``dh``)::

        dc = dc_{t+1} + du o (1 - tanh(c')^2);  da = [dc g i(1-i), dc c f(1-f), dc i (1-g^2), du tanh(c') o(1-o)]
        dh_t = da W_hh;  dc_t = dc f

    Returns ``da`` (shape of ``xw``), ``dh`` per step (``P`` a row, the gradient of each ``h'``; empty
    without projection, where the caller does not need it), ``dh0`` ``[B, P]`` and ``dc0`` ``[B, H]``.
    """
    sizes, offsets, order = _schedule(ws, batch_sizes, reverse, backward=True)
    hidden = c0.size(-1)
    proj = dy.size(-1)
    flat_dy = dy.reshape(-1, proj)
    flat_ws = ws.reshape(-1, ws.size(-1))
    flat_c = flat_ws[:, 4 * hidden : 5 * hidden]
    da = torch.empty(flat_ws.size(0), 4 * hidden, dtype=ws.dtype, device=ws.device)
    dh_all = torch.empty_like(flat_dy) if w_hr is not None else flat_dy.new_empty(0)
    dh, dc = dh_n.clone(), dc_n.clone()
    for t in order:
        b, lo, hi = sizes[t], offsets[t], offsets[t + 1]
        i, f, g, o, c = flat_ws[lo:hi, : 5 * hidden].chunk(5, -1)
        c_prev = _prev_state(flat_c, c0, sizes, offsets, t, reverse)
        dh_t = flat_dy[lo:hi] + dh[:b]
        if w_hr is not None:
            dh_all[lo:hi] = dh_t
            du = dh_t @ w_hr
        else:
            du = dh_t
        tc = torch.tanh(c)
        dc_t = dc[:b] + du * o * (1 - tc * tc)
        da[lo:hi] = torch.cat(
            [dc_t * g * i * (1 - i), dc_t * c_prev * f * (1 - f), dc_t * i * (1 - g * g), du * tc * o * (1 - o)], -1
        )
        dc[:b] = dc_t * f
        dh[:b] = da[lo:hi] @ w_hh
    return da.view(*ws.shape[:-1], -1), dh_all.view(*dy.shape) if w_hr is not None else dh_all, dh, dc
