"""Multi-program tier: W_hh split by output columns over programs that exchange the state each step.

T steps, B batch rows, H hidden units. Grid ``(P_N, G)``: program ``(i_n, i_g)`` owns hidden columns
``i_n * BLOCK_N ..`` and the rows of batch group ``i_g`` (``rows_per_group`` rows, walked in tiles of
BLOCK_B). Groups never talk to each other: each has its own barrier counter.

forward:  h_t[:, cols] = act(xw_t[:, cols] + h_{t-1} W_hh[cols, :]^T)
backward: dh_t[:, cols] = dz_{t+1} W_hh[:, cols];  dz_t[:, cols] = (dy_t + dh_t)[:, cols] * act'(y_t[:, cols])

Both are ``acc[n, b] = sum_k A[n, k] S[b, k]`` with A this program's column slice (W_hh for the forward,
W_hh^T for the backward, both passed row-major so a slice is contiguous rows) and S the previous step's
state rows, so hidden columns fill the dot's M and a batch of 1 wastes nothing. Tiles are ``[BLOCK_N,
BLOCK_B]`` (columns x rows) throughout.

W_ON_CHIP=True: the slice ``[BLOCK_N, H]`` is loaded once before the step loop and stays in registers for
all T steps; each row of S is a broadcast multiply and a reduction over H (float32 FMA; the path for
float32 without TF32 and for tiny batches). W_ON_CHIP=False: the slice streams in BLOCK_K chunks, served
from L1/L2, through tl.dot on the tensor cores (16-bit, TF32, tiles of 8+ rows) or else through the same
multiply-and-reduce.

Sync: the forward exchanges h through a double-buffered float32 ``[2, B, H]`` buffer (read slot s % 2,
write the other); the backward needs no state buffer: each program owns its columns of dh (kept in a
float32 ``[B, H]`` buffer only it touches, which ends as dh0) and only dz crosses programs, read back
from the dz output itself. One barrier per step in both. Each tile's independent loads (xw; dy and y) of
the next tile are issued before the barrier.

PERSISTENT=True runs steps ``s_first .. s_first + n_steps`` in one launch with a barrier after each step;
it needs every program of a group resident at once (the launcher checks occupancy, uses a cooperative
launch, and the barrier gives up after ``spin_limit`` and flags it, see rnn_common._grid_barrier).
PERSISTENT=False runs the steps with no barrier; the launcher then launches once per step (kernel
boundaries are the barrier), plus, for the backward, a last launch with n_steps = 0 that computes dh0.
That mode, and persistent grids of one column program, are what TRITON_INTERPRET=1 runs.

Limits: power-of-two BLOCK_*; W_ON_CHIP needs BLOCK_N * next_pow2(H) elements of registers per program;
tl.dot needs BLOCK_K >= 16 (M, N may be smaller since Triton 3.x pads them). Offsets: first columns, rows
and steps times H are int64 scalars (T * B * H and H * H pass 2^31 on large tensors), offsets within a
tile int32 (< BLOCK * H); ``aot_check --offsets`` fails any 32-bit product in an offset.
"""

from __future__ import annotations

import triton
import triton.language as tl
from fastrnn.kernels.rnn_common import (
    _activation,
    _activation_backward,
    _grid_barrier,
    _matmul,
    _step_index,
    _step_rows,
)


@triton.jit
def _load_slice(p_a, o_c, m_n, H, W_ON_CHIP: tl.constexpr, BLOCK_H: tl.constexpr):
    """This program's rows of A, ``[BLOCK_N, BLOCK_H]``, when they stay on chip (else a placeholder).
    ``p_a`` points at the slice's first row."""
    if W_ON_CHIP:
        o_k = tl.arange(0, BLOCK_H)
        return tl.load(p_a + o_c[:, None] * H + o_k[None, :], mask=m_n[:, None] & (o_k < H)[None, :], other=0.0)
    else:
        return tl.zeros((1, 1), dtype=p_a.dtype.element_ty)


@triton.jit
def _slice_times_rows(b_a, p_a, p_s, b0, n_rows, o_c, m_n, H,
                      W_ON_CHIP: tl.constexpr, FP32_DOT: tl.constexpr, PRECISION: tl.constexpr,
                      BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """``acc[n, j] = sum_k A[o_c[n], k] S[b0 + j, k]`` ``[BLOCK_N, BLOCK_B]``; rows ``>= n_rows`` of S read
    as zero. ``p_a`` points at the slice's first row, ``p_s`` at row 0 of S (row-major, H wide; written by
    other programs: volatile). ``b0`` is int64."""
    o_j = tl.arange(0, BLOCK_B)
    acc = tl.zeros((BLOCK_N, BLOCK_B), dtype=tl.float32)
    if W_ON_CHIP:
        o_k = tl.arange(0, BLOCK_H)
        for j in tl.static_range(BLOCK_B):
            row = b0 + j
            b_s = tl.load(p_s + row * H + o_k, mask=o_k < tl.where(row < n_rows, H, 0), other=0.0, volatile=True)
            b_z = tl.sum(b_a.to(tl.float32) * b_s.to(tl.float32)[None, :], axis=1)
            acc = tl.where(o_j[None, :] == j, b_z[:, None], acc)
    elif (FP32_DOT and PRECISION == "ieee") or BLOCK_B < 8:
        # An IEEE float32 tl.dot is an FMA dot whose operands replicate across threads (spills), and a
        # tensor-core dot of fewer than 8 rows is mostly padding: stream the slice in chunks through the
        # same multiply-and-reduce as the on-chip path.
        for k0 in range(0, H, BLOCK_K):
            o_k = k0 + tl.arange(0, BLOCK_K)
            m_k = o_k < H
            b_ak = tl.load(p_a + o_c[:, None] * H + o_k[None, :], mask=m_n[:, None] & m_k[None, :], other=0.0)
            for j in tl.static_range(BLOCK_B):
                row = b0 + j
                b_s = tl.load(p_s + row * H + o_k, mask=o_k < tl.where(row < n_rows, H, 0), other=0.0,
                              volatile=True)
                b_z = tl.sum(b_ak * b_s[None, :], axis=1)
                acc += tl.where(o_j[None, :] == j, b_z[:, None], 0.0)
    else:
        m_b = o_j < n_rows - b0
        p_s0 = p_s + b0 * H
        for k0 in range(0, H, BLOCK_K):
            o_k = k0 + tl.arange(0, BLOCK_K)
            m_k = o_k < H
            b_ak = tl.load(p_a + o_c[:, None] * H + o_k[None, :], mask=m_n[:, None] & m_k[None, :], other=0.0)
            b_st = tl.load(p_s0 + o_j[None, :] * H + o_k[:, None], mask=m_k[:, None] & m_b[None, :], other=0.0,
                           volatile=True)
            acc += _matmul(b_ak, b_st.to(b_ak.dtype), FP32_DOT, PRECISION)
    return acc


@triton.jit
def _load_tile(p_x, p_batch_sizes, p_offsets, s, s_end, b0, g_hi, n_lo, o_tile, m_n, T, B, H,
               REVERSE: tl.constexpr, PACKED: tl.constexpr, BLOCK_B: tl.constexpr):
    """The ``[BLOCK_N, BLOCK_B]`` float32 tile (columns n_lo.., rows b0..) of a per-step array (xw, y, dy) at
    processing step s in REVERSE order; zeros when ``s >= s_end`` (a prefetch past the last step)."""
    t = _step_index(tl.minimum(s, T - 1), T, REVERSE)
    n_t, row0 = _step_rows(p_batch_sizes, p_offsets, t, B, PACKED)
    m_b = tl.arange(0, BLOCK_B) < tl.where(s < s_end, tl.minimum(n_t, g_hi), 0) - b0
    return tl.load(p_x + ((row0 + b0) * H + n_lo) + o_tile, mask=m_n[:, None] & m_b[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _next_tile(s, b0, g_lo, g_hi, BLOCK_B: tl.constexpr):
    """The work item after (step s, tile b0): the next tile of the group, else the next step's first."""
    nb0 = b0 + BLOCK_B
    wrap = nb0 >= g_hi
    return tl.where(wrap, s + 1, s), tl.where(wrap, g_lo, nb0)


@triton.jit(do_not_specialize=["T", "s_first", "n_steps", "spin_limit"])
def _rnn_fwd_multi_kernel(
    p_xw, p_w, p_y, p_state, p_counter, p_error, p_batch_sizes, p_offsets,
    T, B, H, rows_per_group, s_first, n_steps, spin_limit,
    REVERSE: tl.constexpr, ACTIVATION: tl.constexpr, TANH: tl.constexpr, PACKED: tl.constexpr,
    PERSISTENT: tl.constexpr, W_ON_CHIP: tl.constexpr, FP32_DOT: tl.constexpr, PRECISION: tl.constexpr,
    CLOCK: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    i_g = tl.program_id(1)
    n_cols = tl.num_programs(0)
    # Offsets: the first column n_lo, the group's rows g_lo.. and each tile's and step's first row are
    # int64 scalars (row * H passes 2^31 on large tensors); within a tile, o_tile = o_j * H + o_c stays int32
    # (< BLOCK_B * H).
    n_lo = tl.program_id(0).to(tl.int64) * BLOCK_N
    o_c = tl.arange(0, BLOCK_N)
    m_n = o_c < H - n_lo
    o_j = tl.arange(0, BLOCK_B)
    o_tile = o_j[None, :] * H + o_c[:, None]
    g_lo = i_g.to(tl.int64) * rows_per_group
    g_hi = tl.minimum(g_lo + rows_per_group, B)
    s_end = s_first + n_steps
    p_w_n = p_w + n_lo * H
    b_a = _load_slice(p_w_n, o_c, m_n, H, W_ON_CHIP, BLOCK_H)
    b_x = _load_tile(p_xw, p_batch_sizes, p_offsets, s_first, s_end, g_lo, g_hi, n_lo, o_tile, m_n, T, B, H,
                     REVERSE, PACKED, BLOCK_B)
    for s in range(s_first, s_end):
        t = _step_index(s, T, REVERSE)
        n_t, row0 = _step_rows(p_batch_sizes, p_offsets, t, B, PACKED)
        p_cur = p_state + tl.cast(s % 2, tl.int64) * B * H
        p_nxt = p_state + tl.cast((s + 1) % 2, tl.int64) * B * H
        for b0 in range(g_lo, g_hi, BLOCK_B):
            m_b = o_j < g_hi - b0
            m_row = m_b & (o_j < n_t - b0)
            o_state = b0 * H + n_lo
            m_state = m_n[:, None] & m_b[None, :]
            if PACKED:  # rows this step skips keep their state: issued before the matmul, used after it
                b_old = tl.load(p_cur + o_state + o_tile, mask=m_state, other=0.0)
            acc = _slice_times_rows(b_a, p_w_n, p_cur, b0, tl.minimum(n_t, g_hi), o_c, m_n, H, W_ON_CHIP,
                                    FP32_DOT, PRECISION, BLOCK_B, BLOCK_N, BLOCK_H, BLOCK_K)
            b_h = _activation(b_x + acc, ACTIVATION, TANH)
            if PACKED:
                b_h = tl.where(m_row[None, :], b_h, b_old)
            ns, nb0 = _next_tile(s, b0, g_lo, g_hi, BLOCK_B)
            b_x = _load_tile(p_xw, p_batch_sizes, p_offsets, ns, s_end, nb0, g_hi, n_lo, o_tile, m_n, T, B, H,
                             REVERSE, PACKED, BLOCK_B)
            tl.store(p_nxt + o_state + o_tile, b_h, mask=m_state)
            tl.store(p_y + ((row0 + b0) * H + n_lo) + o_tile, b_h.to(p_y.dtype.element_ty),
                     mask=m_n[:, None] & m_row[None, :])
        if PERSISTENT:
            _grid_barrier(p_counter + i_g, n_cols * (s - s_first + 1), p_error, spin_limit, CLOCK)


@triton.jit(do_not_specialize=["T", "s_first", "n_steps", "spin_limit"])
def _rnn_bwd_multi_kernel(
    p_dy, p_y, p_wt, p_dz, p_dh, p_counter, p_error, p_batch_sizes, p_offsets,
    T, B, H, rows_per_group, s_first, n_steps, spin_limit,
    REVERSE: tl.constexpr, ACTIVATION: tl.constexpr, PACKED: tl.constexpr,
    PERSISTENT: tl.constexpr, W_ON_CHIP: tl.constexpr, FP32_DOT: tl.constexpr, PRECISION: tl.constexpr,
    CLOCK: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``p_dh`` ``[B, H]`` float32 holds dh_n on entry and dh0 once the launch with ``s_first + n_steps == T``
    ends. The backward walks steps in the opposite order to the forward (ORDER below)."""
    ORDER: tl.constexpr = REVERSE == 0
    i_g = tl.program_id(1)
    n_cols = tl.num_programs(0)
    n_lo = tl.program_id(0).to(tl.int64) * BLOCK_N  # int64 scalars and an int32 in-tile offset, as forward
    o_c = tl.arange(0, BLOCK_N)
    m_n = o_c < H - n_lo
    o_j = tl.arange(0, BLOCK_B)
    o_tile = o_j[None, :] * H + o_c[:, None]
    g_lo = i_g.to(tl.int64) * rows_per_group
    g_hi = tl.minimum(g_lo + rows_per_group, B)
    s_end = s_first + n_steps
    p_wt_n = p_wt + n_lo * H
    b_a = _load_slice(p_wt_n, o_c, m_n, H, W_ON_CHIP, BLOCK_H)
    b_dy = _load_tile(p_dy, p_batch_sizes, p_offsets, s_first, s_end, g_lo, g_hi, n_lo, o_tile, m_n, T, B, H,
                      ORDER, PACKED, BLOCK_B)
    b_y = _load_tile(p_y, p_batch_sizes, p_offsets, s_first, s_end, g_lo, g_hi, n_lo, o_tile, m_n, T, B, H,
                     ORDER, PACKED, BLOCK_B)
    # s = T is the epilogue: dh0 = dz of the last step times W, for rows that step covers. Persistent: after
    # the last step's barrier; per step: a launch of its own (n_steps = 0), the kernel boundary its barrier.
    if PERSISTENT:
        s_stop = s_end + (s_end == T).to(tl.int32)
    else:
        s_stop = s_end + (n_steps == 0).to(tl.int32)
    for s in range(s_first, s_stop):
        t = _step_index(tl.minimum(s, T - 1), T, ORDER)
        n_t, row0 = _step_rows(p_batch_sizes, p_offsets, t, B, PACKED)
        t_p = _step_index(tl.maximum(s - 1, 0), T, ORDER)
        n_p, row0_p = _step_rows(p_batch_sizes, p_offsets, t_p, B, PACKED)
        n_p = tl.where(s > 0, tl.minimum(n_p, g_hi), 0)  # rows whose dh comes from the previous step's dz
        for b0 in range(g_lo, g_hi, BLOCK_B):
            m_b = o_j < g_hi - b0
            o_state = b0 * H + n_lo
            m_state = m_n[:, None] & m_b[None, :]
            b_dh = tl.load(p_dh + o_state + o_tile, mask=m_state, other=0.0)
            if n_p > b0:
                acc = _slice_times_rows(b_a, p_wt_n, p_dz + row0_p * H, b0, n_p, o_c, m_n, H, W_ON_CHIP,
                                        FP32_DOT, PRECISION, BLOCK_B, BLOCK_N, BLOCK_H, BLOCK_K)
                b_dh = tl.where((o_j < n_p - b0)[None, :], acc, b_dh)
            tl.store(p_dh + o_state + o_tile, b_dh, mask=m_state)
            if s < T:
                b_dz = _activation_backward(b_dy + b_dh, b_y, ACTIVATION)
                ns, nb0 = _next_tile(s, b0, g_lo, g_hi, BLOCK_B)
                b_dy = _load_tile(p_dy, p_batch_sizes, p_offsets, ns, s_end, nb0, g_hi, n_lo, o_tile, m_n, T, B,
                                  H, ORDER, PACKED, BLOCK_B)
                b_y = _load_tile(p_y, p_batch_sizes, p_offsets, ns, s_end, nb0, g_hi, n_lo, o_tile, m_n, T, B, H,
                                 ORDER, PACKED, BLOCK_B)
                tl.store(p_dz + ((row0 + b0) * H + n_lo) + o_tile, b_dz.to(p_dz.dtype.element_ty),
                         mask=m_n[:, None] & (m_b & (o_j < n_t - b0))[None, :])
        if PERSISTENT:
            if s < s_end:
                _grid_barrier(p_counter + i_g, n_cols * (s - s_first + 1), p_error, spin_limit, CLOCK)
