"""Single-program tier: one program per batch tile holds all of W_hh and loops over every step.

T steps, B batch rows, H hidden units (xw, y, dy, dz: packed rows of H; step t owns rows
``offsets[t] .. offsets[t] + batch_sizes[t]``).

forward:  h_t = act(xw_t + h_{t-1} W_hh^T)        writes y and h_n
backward: g_t = dy_t + dh_{t+1}; dz_t = g_t * act'(y_t); dh_t = dz_t W_hh      writes dz and dh0

The state is carried in float32 registers and cast on store. Rows a step does not cover keep their
state (packed input), so the state after the last step is h_n (dh0) in both directions. Programs never
talk to each other, so the kernels run as written under TRITON_INTERPRET=1.

Limits: H <= MAX_H (W_hh, [BLOCK_H, BLOCK_H], must fit in one program's registers), and
H <= MAX_H_FP32_IEEE for float32 with TF32 off: ptxas spills the forward's IEEE dot at BLOCK_H = 128 in
every warp count (python -m fastrnn.kernels.aot_check shows it). tl.dot needs BLOCK_B, BLOCK_H >= 16
and powers of two.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

MAX_H = 128
MAX_H_FP32_IEEE = 64


def _configs() -> list[triton.Config]:
    # ptxas register use of the IEEE float32 dot swings with the warp count (aot_check prints it), so the
    # warp count and batch tile are tuned per (H, B, dtype) on the GPU. The interpreter takes one config.
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return [triton.Config({"BLOCK_B": 16}, num_warps=4)]
    return [triton.Config({"BLOCK_B": b}, num_warps=w) for b, w in ((16, 4), (16, 8), (16, 16), (32, 8))]


_autotune = triton.autotune(configs=_configs(), key=["H", "B", "FP32_DOT", "PRECISION", "PACKED"])


@triton.jit
def _activation(z, ACTIVATION: tl.constexpr):
    if ACTIVATION == 0:
        # tanh(z) = 1 - 2 / (exp(2z) + 1): saturates to +-1 without inf/inf for large |z|. The division
        # is the approximate one (2 ulp): IEEE div.rn.f32 makes ptxas spill the whole state to the stack.
        return 1.0 - tl.fdiv(2.0, tl.exp(2.0 * z) + 1.0, ieee_rounding=False)
    else:
        return tl.maximum(z, 0.0)


@triton.jit
def _activation_grad(y, ACTIVATION: tl.constexpr):
    if ACTIVATION == 0:
        return 1.0 - y * y
    else:
        return (y > 0.0).to(tl.float32)


@triton.jit
def _step_rows(p_batch_sizes, p_offsets, t, B, PACKED: tl.constexpr):
    """Rows active at step t and the first packed row of step t."""
    if PACKED:
        n_t = tl.load(p_batch_sizes + t).to(tl.int32)
        row0 = tl.load(p_offsets + t).to(tl.int64)
    else:
        n_t = B
        row0 = tl.cast(t, tl.int64) * B
    return n_t, row0


@triton.jit
def _matmul(a, b, FP32_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b with float32 accumulation; 16-bit operands go to the tensor cores as they are."""
    if FP32_DOT:
        return tl.dot(a, b, input_precision=PRECISION)
    else:
        return tl.dot(a, b, out_dtype=tl.float32)


@_autotune
@triton.jit(do_not_specialize=["T"])
def _rnn_fwd_single_kernel(
    p_xw, p_h0, p_wt, p_y, p_hn, p_batch_sizes, p_offsets,
    T, B, H,
    REVERSE: tl.constexpr, ACTIVATION: tl.constexpr, PACKED: tl.constexpr,
    FP32_DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    i_b = tl.program_id(0)
    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    o_h = tl.arange(0, BLOCK_H)
    m_b = o_b < B
    m_h = o_h < H
    # W^T, transposed on the host so this load is row-major like the backward's: a strided (transposing)
    # load here makes ptxas spill at BLOCK_H = 64. Loaded once: z = h @ W^T.
    b_wt = tl.load(p_wt + o_h[:, None] * H + o_h[None, :], mask=m_h[:, None] & m_h[None, :], other=0.0)
    m_bh = m_b[:, None] & m_h[None, :]
    b_h = tl.load(p_h0 + o_b[:, None] * H + o_h[None, :], mask=m_bh, other=0.0).to(tl.float32)
    for s in range(T):
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        n_t, row0 = _step_rows(p_batch_sizes, p_offsets, t, B, PACKED)
        m_row = o_b < n_t
        m = m_row[:, None] & m_h[None, :]
        o_xy = (row0 + o_b)[:, None] * H + o_h[None, :]
        b_x = tl.load(p_xw + o_xy, mask=m, other=0.0).to(tl.float32)
        b_z = b_x + _matmul(b_h.to(b_wt.dtype), b_wt, FP32_DOT, PRECISION)
        b_h = tl.where(m_row[:, None], _activation(b_z, ACTIVATION), b_h)
        tl.store(p_y + o_xy, b_h.to(p_y.dtype.element_ty), mask=m)
    tl.store(p_hn + o_b[:, None] * H + o_h[None, :], b_h.to(p_hn.dtype.element_ty), mask=m_bh)


@_autotune
@triton.jit(do_not_specialize=["T"])
def _rnn_bwd_single_kernel(
    p_dy, p_dhn, p_y, p_w, p_dz, p_dh0, p_batch_sizes, p_offsets,
    T, B, H,
    REVERSE: tl.constexpr, ACTIVATION: tl.constexpr, PACKED: tl.constexpr,
    FP32_DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    i_b = tl.program_id(0)
    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    o_h = tl.arange(0, BLOCK_H)
    m_b = o_b < B
    m_h = o_h < H
    # W[k, j] as it is: dh = dz @ W.
    b_w = tl.load(p_w + o_h[:, None] * H + o_h[None, :], mask=m_h[:, None] & m_h[None, :], other=0.0)
    m_bh = m_b[:, None] & m_h[None, :]
    b_dh = tl.load(p_dhn + o_b[:, None] * H + o_h[None, :], mask=m_bh, other=0.0).to(tl.float32)
    for s in range(T):
        if REVERSE:
            t = s
        else:
            t = T - 1 - s
        n_t, row0 = _step_rows(p_batch_sizes, p_offsets, t, B, PACKED)
        m_row = o_b < n_t
        m = m_row[:, None] & m_h[None, :]
        o_xy = (row0 + o_b)[:, None] * H + o_h[None, :]
        b_y = tl.load(p_y + o_xy, mask=m, other=0.0).to(tl.float32)
        b_dy = tl.load(p_dy + o_xy, mask=m, other=0.0).to(tl.float32)
        b_dz = (b_dy + b_dh) * _activation_grad(b_y, ACTIVATION)
        tl.store(p_dz + o_xy, b_dz.to(p_dz.dtype.element_ty), mask=m)
        b_new = _matmul(b_dz.to(b_w.dtype), b_w, FP32_DOT, PRECISION)
        b_dh = tl.where(m_row[:, None], b_new, b_dh)
    tl.store(p_dh0 + o_b[:, None] * H + o_h[None, :], b_dh.to(p_dh0.dtype.element_ty), mask=m_bh)
