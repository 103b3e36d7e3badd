"""Multi-program tier: W_hh split by output columns across P programs that exchange the state each step.

T steps, B batch rows, H hidden units; program p owns columns ``p * BLOCK_N .. p * BLOCK_N + BLOCK_N``.

forward:  h_t[:, cols] = act(xw_t[:, cols] + h_{t-1} W_hh[cols, :]^T)
backward: dz_t[:, cols] = (dy_t + dh_{t+1})[:, cols] * act'(y_t[:, cols]);  dh_t[:, cols] = dz_t W_hh[:, cols]

Every program needs the whole previous state, so the state lives in a float32 global buffer, double
buffered ``[2, B, H]`` (read slot s % 2, write the other), and steps are separated by a grid-wide barrier:
a release atomic on a counter, then an acquire spin until all P programs have arrived. W_hh and the state
stream through L2 in BLOCK_K chunks (W_hh of H = 2048 in float32 is 16 MiB, well inside H100's L2).

PERSISTENT=True runs all steps in one launch and needs all P programs resident at once: the launcher only
uses it on a GPU with at least P SMs. PERSISTENT=False runs steps ``s_first .. s_first + n_steps`` with no
barrier; the launcher then launches once per step (kernel boundaries are the barrier). That mode is what
TRITON_INTERPRET=1 runs, since interpreted programs run one after another and a spin-wait would hang.

Limits: BLOCK_N, BLOCK_K, BLOCK_B >= 16 (tl.dot) and powers of two; H padded up to a multiple of BLOCK_N.
"""

from __future__ import annotations

import triton
import triton.language as tl
from fastrnn.kernels.rnn_single import _activation, _activation_grad, _matmul, _step_rows


@triton.jit
def _grid_barrier(p_counter, target):
    # Make this program's stores visible, then wait for every program to have made theirs.
    tl.debug_barrier()
    tl.atomic_add(p_counter, 1, sem="release", scope="gpu")
    arrived = tl.atomic_add(p_counter, 0, sem="acquire", scope="gpu")
    while arrived < target:
        arrived = tl.atomic_add(p_counter, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _rows_times_weight(p_rows, o_rows, m_rows, p_w, o_n, m_n, H, TRANSPOSE_W: tl.constexpr,
                       FP32_DOT: tl.constexpr, PRECISION: tl.constexpr, W_DTYPE: tl.constexpr,
                       BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_B, BLOCK_N] = rows[:, :H] @ op(W)[:, cols], op(W) = W^T when TRANSPOSE_W."""
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < H
        b_a = tl.load(p_rows + o_rows[:, None] * H + o_k[None, :], mask=m_rows[:, None] & m_k[None, :],
                      other=0.0, volatile=True)
        if TRANSPOSE_W:
            o_w = o_n[None, :] * H + o_k[:, None]
        else:
            o_w = o_k[:, None] * H + o_n[None, :]
        b_w = tl.load(p_w + o_w, mask=m_k[:, None] & m_n[None, :], other=0.0)
        acc += _matmul(b_a.to(W_DTYPE), b_w.to(W_DTYPE), FP32_DOT, PRECISION)
    return acc


@triton.jit(do_not_specialize=["T", "s_first", "n_steps"])
def _rnn_fwd_multi_kernel(
    p_xw, p_w, p_y, p_state, p_counter, p_batch_sizes, p_offsets,
    T, B, H, s_first, n_steps,
    REVERSE: tl.constexpr, ACTIVATION: tl.constexpr, PACKED: tl.constexpr, PERSISTENT: tl.constexpr,
    FP32_DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    i_n = tl.program_id(0)
    n_programs = tl.num_programs(0)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < H
    for s in range(s_first, s_first + n_steps):
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        n_t, row0 = _step_rows(p_batch_sizes, p_offsets, t, B, PACKED)
        p_cur = p_state + tl.cast(s % 2, tl.int64) * B * H
        p_nxt = p_state + tl.cast((s + 1) % 2, tl.int64) * B * H
        for b0 in range(0, B, BLOCK_B):
            o_b = b0 + tl.arange(0, BLOCK_B)
            m_b = o_b < B
            m_row = o_b < n_t
            acc = _rows_times_weight(p_cur, o_b, m_row, p_w, o_n, m_n, H, True, FP32_DOT, PRECISION,
                                     p_w.dtype.element_ty, BLOCK_B, BLOCK_N, BLOCK_K)
            o_xy = (row0 + o_b)[:, None] * H + o_n[None, :]
            m = m_row[:, None] & m_n[None, :]
            b_x = tl.load(p_xw + o_xy, mask=m, other=0.0).to(tl.float32)
            o_state = o_b[:, None] * H + o_n[None, :]
            m_state = m_b[:, None] & m_n[None, :]
            b_old = tl.load(p_cur + o_state, mask=m_state, other=0.0, volatile=True)
            b_h = tl.where(m_row[:, None], _activation(b_x + acc, ACTIVATION), b_old)
            tl.store(p_nxt + o_state, b_h, mask=m_state)
            tl.store(p_y + o_xy, b_h.to(p_y.dtype.element_ty), mask=m)
        if PERSISTENT:
            _grid_barrier(p_counter, n_programs * (s + 1))


@triton.jit(do_not_specialize=["T", "s_first", "n_steps"])
def _rnn_bwd_multi_kernel(
    p_dy, p_y, p_w, p_dz, p_state, p_counter, p_batch_sizes, p_offsets,
    T, B, H, s_first, n_steps,
    REVERSE: tl.constexpr, ACTIVATION: tl.constexpr, PACKED: tl.constexpr, PERSISTENT: tl.constexpr,
    PHASE: tl.constexpr,
    FP32_DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """PHASE 0: dz_t for own columns; PHASE 1: dh_t = dz_t W_hh for own columns; PHASE 2: both, with a
    barrier between (persistent). Per-step mode launches phase 0 then phase 1 for each step."""
    i_n = tl.program_id(0)
    n_programs = tl.num_programs(0)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < H
    for s in range(s_first, s_first + n_steps):
        if REVERSE:
            t = s
        else:
            t = T - 1 - s
        n_t, row0 = _step_rows(p_batch_sizes, p_offsets, t, B, PACKED)
        p_cur = p_state + tl.cast(s % 2, tl.int64) * B * H
        p_nxt = p_state + tl.cast((s + 1) % 2, tl.int64) * B * H
        if PHASE != 1:
            for b0 in range(0, B, BLOCK_B):
                o_b = b0 + tl.arange(0, BLOCK_B)
                m_row = o_b < n_t
                o_xy = (row0 + o_b)[:, None] * H + o_n[None, :]
                m = m_row[:, None] & m_n[None, :]
                b_y = tl.load(p_y + o_xy, mask=m, other=0.0).to(tl.float32)
                b_dy = tl.load(p_dy + o_xy, mask=m, other=0.0).to(tl.float32)
                b_dh = tl.load(p_cur + o_b[:, None] * H + o_n[None, :], mask=m, other=0.0, volatile=True)
                b_dz = (b_dy + b_dh) * _activation_grad(b_y, ACTIVATION)
                tl.store(p_dz + o_xy, b_dz.to(p_dz.dtype.element_ty), mask=m)
        if PERSISTENT:
            _grid_barrier(p_counter, n_programs * (2 * s + 1))
        if PHASE != 0:
            for b0 in range(0, B, BLOCK_B):
                o_b = b0 + tl.arange(0, BLOCK_B)
                m_b = o_b < B
                m_row = o_b < n_t
                acc = _rows_times_weight(p_dz + row0 * H, o_b, m_row, p_w, o_n, m_n, H, False, FP32_DOT,
                                         PRECISION, p_w.dtype.element_ty, BLOCK_B, BLOCK_N, BLOCK_K)
                o_state = o_b[:, None] * H + o_n[None, :]
                m_state = m_b[:, None] & m_n[None, :]
                b_old = tl.load(p_cur + o_state, mask=m_state, other=0.0, volatile=True)
                tl.store(p_nxt + o_state, tl.where(m_row[:, None], acc, b_old), mask=m_state)
        if PERSISTENT:
            _grid_barrier(p_counter, n_programs * (2 * s + 2))
