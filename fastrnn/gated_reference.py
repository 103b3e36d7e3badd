"""Pure-PyTorch reference of the gated recurrence ops (GRU, LSTM): the oracle for the C++ op and the
backend for dtypes and devices it does not take.

Like :mod:`fastrnn.reference`, each op is one layer, one direction, the whole sequence, on the
precomputed input projection, padded ``[T, B, G]`` or packed ``[N, G]`` with ``batch_sizes``:

GRU (``G = 3H``, gates in torch's order r, z, n; ``xw = x W_ih^T + b_ih + [b_hr, b_hz, 0]``)::

    a = h W_hh^T;  r = sigmoid(xw_r + a_r);  z = sigmoid(xw_z + a_z);  m = a_n + b_hn
    n = tanh(xw_n + r * m);  h' = (h - n) * z + n            (torch's formula, b_hn inside r's product)

    saved ws = [r, z, n, m]  (4H per row)

LSTM (``G = 4H``, gates i, f, g, o; ``xw = x W_ih^T + b_ih + b_hh``; ``P`` = proj_size or H)::

    a = xw + h W_hh^T;  i, f, o = sigmoid(a_i, a_f, a_o);  g = tanh(a_g)
    c' = f * c + i * g;  u = o * tanh(c');  h' = u W_hr^T (or u without projection)

    saved ws = [i, f, g, o, c'] (+ u with projection): 5H or 6H per row

Backward passes return the pre-activation gradients, from which the caller makes every weight, bias and
input gradient with one GEMM or reduction each. One plain step function per cell is the readable oracle.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastrnn.reference import _schedule, run_steps


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
    y, (h_n, c_n), ws = run_steps(
        lambda x, h, c: lstm_step(x, h, c, w_hh, w_hr), xw, [h0, c0], batch_sizes, reverse
    )
    return y, h_n, c_n, ws


def _prev_rows(sizes: list[int], offsets: list[int], t: int, reverse: bool) -> Optional[int]:
    """The step whose rows hold step ``t``'s previous state (``None``: the initial state)."""
    prev = t + 1 if reverse else t - 1
    return prev if 0 <= prev < len(sizes) else None


def _prev_state(flat: Tensor, init: Tensor, sizes, offsets, t: int, reverse: bool) -> Tensor:
    """Rows ``0 .. sizes[t]`` of the state before step ``t``: the neighbouring step's rows where that step
    covers them, ``init`` for the rest (a reversed packed sequence starts its shorter rows from ``init``)."""
    b = sizes[t]
    p = _prev_rows(sizes, offsets, t, reverse)
    if p is None:
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
