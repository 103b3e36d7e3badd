"""Pure-PyTorch reference of the recurrence op: the oracle for every kernel and the last-resort backend.

The op is one layer, one direction, the whole sequence, on the precomputed input projection
``xw = x W_ih^T + b_ih + b_hh``::

    h_t = act(xw_t + h_{t-1} W_hh^T)

Sequences are either padded, ``xw`` of shape ``[T, B, H]``, or packed, ``xw`` of shape ``[N, H]`` with
``batch_sizes`` ``[T]`` (non-increasing, ``N = sum(batch_sizes)``): step ``t`` updates rows
``0 .. batch_sizes[t] - 1`` of the running state and leaves the others alone, so the running state after
the last step is ``h_n`` in both directions. ``reverse`` walks the steps from ``T - 1`` down to ``0``.

Everything here is written with differentiable torch ops and works in any dtype (float64 included).
"""

from __future__ import annotations

import torch
from torch import Tensor

ACTIVATIONS = ("tanh", "relu")


def activation_id(activation: str) -> int:
    """The integer the compiled ops take for ``activation`` (0: tanh, 1: relu)."""
    return ACTIVATIONS.index(activation)


def step_sizes(xw: Tensor, batch_sizes: Tensor | None) -> list[int]:
    """Rows active at each step: ``batch_sizes`` as a list, or ``[B] * T`` for padded ``[T, B, H]``."""
    if batch_sizes is None:
        return [xw.size(1)] * xw.size(0)
    return [int(b) for b in batch_sizes.tolist()]


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
    """Rows per step, first packed row of each step (plus the total N), and the order the pass walks the
    steps in: the forward pass from 0 (from T - 1 when reversed), the backward pass the other way."""
    sizes = step_sizes(x, batch_sizes)
    offsets = [0]
    for b in sizes:
        offsets.append(offsets[-1] + b)
    order = list(range(len(sizes)))
    return sizes, offsets, order[::-1] if reverse != backward else order


def _act(z: Tensor, activation: str) -> Tensor:
    return torch.tanh(z) if activation == "tanh" else torch.relu(z)


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
    y, (h_n,), _ = run_steps(lambda x, h: (_act(x + h @ w_hh.t(), activation), None), xw, [h0], batch_sizes, reverse)
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
