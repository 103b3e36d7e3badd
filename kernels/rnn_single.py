"""Single-program tier: one program per batch tile holds all of W_hh and loops over every step.

T steps, B batch rows, H hidden units (xw, y, dy, dz: packed rows of H; step t owns rows
``offsets[t] .. offsets[t] + batch_sizes[t]``).

forward:  h_t = act(xw_t + h_{t-1} W_hh^T)        writes y and h_n
backward: g_t = dy_t + dh_{t+1}; dz_t = g_t * act'(y_t); dh_t = dz_t W_hh      writes dz and dh0

The state is carried in float32 registers and cast on store. Rows a step does not cover keep their
state (packed input), so the state after the last step is h_n (dh0) in both directions. Lanes past H are
forced to zero after every step: the dot multiplies them by W's zero padding, and an inf in a real lane
would otherwise turn them into 0 * inf = NaN and feed that back into every column. Programs never talk
to each other, so the kernels run as written under TRITON_INTERPRET=1.

W_hh is loaded from global memory once, before the step loop, and stays on chip for all T steps, but in
shared memory, not registers: Triton 3.6 stores the dot's W operand to shared memory before the loop and
reads it into operand registers every step (``ttg.local_load`` inside the loop in the TTGIR for sm_90,
float32 and bfloat16 alike; a 128 x 128 bfloat16 W is 32 KiB of shared-memory reads a step). The
multi tier's on-chip path (a multiply-and-reduce, no tl.dot) is the one that keeps W in registers.

Limits: H <= MAX_H (W_hh, [BLOCK_H, BLOCK_H], must fit in one program's registers), and
H <= MAX_H_FP32_IEEE for float32 with TF32 off: ptxas spills the forward's IEEE dot at BLOCK_H = 128 in
every warp count (python -m fastrnn.kernels.aot_check shows it). tl.dot needs BLOCK_H >= 16 (its K);
BLOCK_B may be 1..16 (Triton 3.x pads a dot's M and N), all powers of two.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl
from fastrnn.kernels.rnn_common import _activation, _activation_backward, _matmul, _step_rows

MAX_H = 128
MAX_H_FP32_IEEE = 64
BATCH_TILES = (1, 2, 4, 8, 16)


def _configs() -> list[triton.Config]:
    # ptxas register use of the IEEE float32 dot swings with the warp count (aot_check prints it), so the
    # warp count and batch tile are tuned per (H, batch class, dtype) on the GPU. Tiles below 16 rows serve
    # small batches: B = 1 no longer computes 16 rows. The interpreter takes one config per batch tile.
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return [triton.Config({"BLOCK_B": b}, num_warps=4) for b in BATCH_TILES]
    small = [triton.Config({"BLOCK_B": b}, num_warps=w) for b in BATCH_TILES[:-1] for w in (4, 8)]
    # No 16-warp config: at 16 warps ptxas has 128 registers a thread and the float32 forward spills.
    return small + [triton.Config({"BLOCK_B": b}, num_warps=w) for b, w in ((16, 4), (16, 8), (32, 8))]


def batch_class(batch: int) -> int:
    """The autotuner's batch key: the batch rounded up to a power of two, capped at 16 (wider batches run
    16- or 32-row tiles whatever their size), so a new batch size re-tunes only when its class changes."""
    return min(triton.next_power_of_2(max(batch, 1)), 16)


# (mode, BLOCK_H, BLOCK_B, num_warps) that ptxas (Triton 3.6, sm_90) compiles with a spill, so the autotuner
# never times them; `python -m fastrnn.kernels.aot_check --no-spills` (full) checks the rest stays clean.
SPILLING = {("tf32", 128, 16, 4), ("fp16", 128, 4, 8)}


def mode_of(fp32_dot: bool, precision: str, dtype_name: str) -> str:
    """aot_check's name for a dtype / precision: fp32, tf32, fp16 or bf16."""
    if fp32_dot:
        return "tf32" if precision == "tf32" else "fp32"
    return "bf16" if "bfloat16" in dtype_name else "fp16"


def tile_candidates(configs: list, b_class: int, mode: str = "", block_h: int = 0) -> list:
    """The configs worth timing for a batch class: the tile equal to the class below 16 rows, else the
    16- and 32-row tiles; never one that spills for this mode and BLOCK_H."""
    kept = [c for c in configs if c.kwargs["BLOCK_B"] == b_class or (b_class >= 16 and c.kwargs["BLOCK_B"] >= 16)]
    clean = [c for c in kept if (mode, block_h, c.kwargs["BLOCK_B"], c.num_warps) not in SPILLING]
    return clean or kept or configs[:1]


def _prune(configs, named_args, **kwargs):
    mode = mode_of(kwargs.get("FP32_DOT", True), kwargs.get("PRECISION", "ieee"), str(named_args["p_xw"].dtype)
                   if "p_xw" in named_args else str(named_args.get("p_dy").dtype))
    return tile_candidates(configs, named_args["B_CLASS"], mode, kwargs.get("BLOCK_H", 0))


_autotune = triton.autotune(configs=_configs(), key=["H", "B_CLASS", "FP32_DOT", "PRECISION", "PACKED"],
                            prune_configs_by={"early_config_prune": _prune})


@_autotune
@triton.jit(do_not_specialize=["T"])
def _rnn_fwd_single_kernel(
    p_xw, p_h0, p_wt, p_y, p_hn, p_batch_sizes, p_offsets,
    T, B, H, B_CLASS,
    REVERSE: tl.constexpr, ACTIVATION: tl.constexpr, TANH: tl.constexpr, PACKED: tl.constexpr,
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
        b_new = tl.where(m_h[None, :], _activation(b_z, ACTIVATION, TANH), 0.0)
        b_h = tl.where(m_row[:, None], b_new, b_h)
        tl.store(p_y + o_xy, b_h.to(p_y.dtype.element_ty), mask=m)
    tl.store(p_hn + o_b[:, None] * H + o_h[None, :], b_h.to(p_hn.dtype.element_ty), mask=m_bh)


@_autotune
@triton.jit(do_not_specialize=["T"])
def _rnn_bwd_single_kernel(
    p_dy, p_dhn, p_y, p_w, p_dz, p_dh0, p_batch_sizes, p_offsets,
    T, B, H, B_CLASS,
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
        b_dz = _activation_backward(b_dy + b_dh, b_y, ACTIVATION)
        tl.store(p_dz + o_xy, b_dz.to(p_dz.dtype.element_ty), mask=m)
        b_new = tl.where(m_h[None, :], _matmul(b_dz.to(b_w.dtype), b_w, FP32_DOT, PRECISION), 0.0)
        b_dh = tl.where(m_row[:, None], b_new, b_dh)
    tl.store(p_dh0 + o_b[:, None] * H + o_h[None, :], b_dh.to(p_dh0.dtype.element_ty), mask=m_bh)
