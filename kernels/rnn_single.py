"""Single-program tier: one program per batch tile holds all of W_hh and loops over every step.

T steps, B batch rows, H hidden units (xw, y, dy, dz: packed rows of H; step t owns rows
``offsets[t] .. offsets[t] + batch_sizes[t]``).

forward:  h_t = act(xw_t + h_{t-1} W_hh^T)        writes y and h_n
backward: g_t = dy_t + dh_{t+1}; dz_t = g_t * act'(y_t); dh_t = dz_t W_hh      writes dz and dh0

Both are ``S @ A`` per step with S the state rows and A loaded once before the step loop: W_hh^T for the
forward (transposed on the host), W_hh for the backward, both row-major. The state is carried in float32
and cast on store. Rows a step does not cover keep their state (packed input), so the state after the last
step is h_n (dh0) in both directions. Lanes past H are forced to zero after every step: A's zero padding
times an inf in a real lane would otherwise turn them into 0 * inf = NaN and feed that back into every
column. Programs never talk to each other, so the kernels run as written under TRITON_INTERPRET=1.

Two ways to hold A for all T steps (``W_IN_REGS``, chosen by the launcher with plan.single_w_in_regs):
  registers  (W_IN_REGS=True; IEEE float32 always, any dtype for batch classes of <= 4 rows): A as
             float32 in registers, each state row a broadcast multiply and a reduction over A's first axis,
             which a row-major load spreads over a thread's own registers and over warps, not over lanes.
             128 x 128 float32 is 128 / 64 / 32 elements a thread at 4 / 8 / 16 warps; the autotuner times
             8 and 16 warps at BLOCK_H = 128, 4 and 8 below. Triton 3.6 for sm_90: A is a loop-invariant
             SSA value in the TTGIR, with no ``ttg.local_alloc`` / ``ttg.local_load`` anywhere in the kernel
             (aot_check fails any W_IN_REGS variant that has one); in the PTX a step issues one FMA per A
             element a thread holds and row (64 at H = 128, 8 warps) and moves only the state through
             shared memory: cross-warp partial sums and the state's change of layout, at most 15 ld.shared
             a thread and 5-9 bar.sync a step for one-row tiles (22-36 for four rows). ptxas: 26-128
             registers over the variants the autotuner can pick, no spills; REGS_SPILLING lists the five
             configs it never times (a value stored before the loop and loaded after it). 4 warps at
             BLOCK_H = 128, not picked, would take 163-168 (float32) / 186-210 (bfloat16) registers.
  tl.dot     (W_IN_REGS=False; 16-bit and TF32 with tiles of 8+ rows): the tensor cores, with A in shared
             memory. Triton 3.6 picks mma.sync here (``nvidia_mma versionMajor = 2`` in the TTGIR), stores A
             to shared memory before the loop and reloads it into operand registers every step
             (``ttg.local_load`` inside the loop: 32 KiB a step for 128 x 128 bfloat16); it does not hoist
             that loop-invariant load. Hopper's wgmma, were Triton to pick it, reads its B operand from
             shared memory by hardware design, so the tensor-core path keeps W in shared memory either way.

Limits: H <= MAX_H. tl.dot needs BLOCK_H >= 16 (its K); power-of-two BLOCK_B (1..32) and BLOCK_H. Offsets:
the tile's and each step's first row times H are int64 scalars (T * B * H passes 2^31 on large tensors),
offsets within a tile int32 (< BLOCK_B * H); ``aot_check --offsets`` fails any 32-bit product in an offset.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl
from fastrnn.kernels.plan import REGS_MAX_TILE, single_w_in_regs
from fastrnn.kernels.rnn_common import _activation, _activation_backward, _matmul, _step_rows

MAX_H = 128
BATCH_TILES = (1, 2, 4, 8, 16)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _configs() -> list[triton.Config]:
    # ptxas register use swings with the warp count (aot_check prints it), so the warp count and batch tile
    # are tuned per (H, batch class, dtype, path) on the GPU among tile_candidates. Tiles below 16 rows
    # serve small batches: B = 1 never computes 16 rows. The interpreter takes one config per batch tile.
    if _interpreting():
        return [triton.Config({"BLOCK_B": b}, num_warps=4) for b in BATCH_TILES]
    small = [triton.Config({"BLOCK_B": b}, num_warps=w) for b in BATCH_TILES[:-1] for w in (4, 8)]
    # 16 warps only for the register path (32 float32 of a 128 x 128 W a thread); the dot path never takes
    # them: at 16 warps ptxas has 128 registers a thread and the float32 dot spilled.
    regs16 = [triton.Config({"BLOCK_B": b}, num_warps=16) for b in (1, 2, 4)]
    return small + [triton.Config({"BLOCK_B": b}, num_warps=w) for b, w in ((16, 4), (16, 8), (32, 8))] + regs16


def batch_class(batch: int) -> int:
    """The autotuner's batch key: the batch rounded up to a power of two, capped at 16 (wider batches run
    16- or 32-row tiles whatever their size), so a new batch size re-tunes only when its class changes."""
    return min(triton.next_power_of_2(max(batch, 1)), 16)


# (mode, BLOCK_H, BLOCK_B, num_warps) that ptxas (Triton 3.6, sm_90) compiles with a spill, so the autotuner
# never times them; `python -m fastrnn.kernels.aot_check --no-spills` (full) checks the rest stays clean.
# tl.dot path:
SPILLING = {("tf32", 128, 16, 4), ("fp16", 128, 4, 8)}
# Register path, each for some packed / reverse / B specialisations only: ptxas keeps a value that lives
# across the step loop on the stack (stored before the loop, loaded after it, never inside: SASS) and stops
# at 48-64 registers even with --maxrregcount 128. bfloat16 backward H 64 1 row 8 warps; float32 / TF32
# (the same code) backward H 128 1 row 16 warps; 16-bit forward H 32 4 rows 8 warps.
# The int64 row offsets (issue 19) added the same kind of spill (8-32 bytes, the last store's offset or mask
# kept across the loop) to seven 4-row configs, packed specialisations only: float32 / TF32 backward H 128
# 16 warps; forward H 16 8 warps (reverse); 16-bit H 128 8 warps; bfloat16 forward H 64 8 warps.
REGS_SPILLING = {("bf16", 64, 1, 8), ("fp32", 128, 1, 16), ("tf32", 128, 1, 16), ("fp16", 32, 4, 8),
                 ("bf16", 32, 4, 8), ("fp32", 128, 4, 16), ("tf32", 128, 4, 16), ("fp32", 16, 4, 8),
                 ("tf32", 16, 4, 8), ("fp16", 16, 4, 8), ("bf16", 16, 4, 8), ("fp16", 128, 4, 8),
                 ("bf16", 128, 4, 8), ("bf16", 64, 4, 8)}


def mode_of(fp32_dot: bool, precision: str, dtype_name: str) -> str:
    """aot_check's name for a dtype / precision: fp32, tf32, fp16 or bf16."""
    if fp32_dot:
        return "tf32" if precision == "tf32" else "fp32"
    return "bf16" if "bfloat16" in dtype_name else "fp16"


def w_in_regs(b_class: int, mode: str) -> bool:
    """Whether the launcher runs the register path for this batch class and mode (plan.single_w_in_regs)."""
    return single_w_in_regs(b_class, mode == "fp32")


def regs_warps(block_h: int) -> tuple[int, ...]:
    """Warp counts the autotuner times on the register path: 8 and 16 at BLOCK_H = 128 (64 / 32 float32
    of W a thread; 4 warps hold 128 and chain twice the FMAs a step), else 4 and 8."""
    return (8, 16) if block_h >= 128 else (4, 8)


def tile_candidates(configs: list, b_class: int, mode: str = "", block_h: int = 0, regs: bool = False) -> list:
    """The configs worth timing for a batch class.

    tl.dot path: the tile equal to the class below 16 rows, else the 16- and 32-row tiles; never 16 warps,
    never one that spills for this mode and BLOCK_H. Register path: one-row tiles (the most programs, so
    the most SMs, the shortest chain a step) and tiles of min(class, REGS_MAX_TILE) rows (fewer programs,
    for batches past the GPU's resident programs), in ``regs_warps``, never one in REGS_SPILLING; the
    interpreter takes the latter tile only.
    """
    if regs:
        tile = min(b_class, REGS_MAX_TILE)
        if _interpreting():
            return [c for c in configs if c.kwargs["BLOCK_B"] == tile] or configs[:1]
        kept = [c for c in configs if c.kwargs["BLOCK_B"] in (1, tile) and c.num_warps in regs_warps(block_h)
                and (mode, block_h, c.kwargs["BLOCK_B"], c.num_warps) not in REGS_SPILLING]
        return kept or configs[:1]
    kept = [c for c in configs if c.num_warps <= 8 and (
        c.kwargs["BLOCK_B"] == b_class or (b_class >= 16 and c.kwargs["BLOCK_B"] >= 16))]
    clean = [c for c in kept if (mode, block_h, c.kwargs["BLOCK_B"], c.num_warps) not in SPILLING]
    return clean or kept or configs[:1]


def _prune(configs, named_args, **kwargs):
    mode = mode_of(kwargs.get("FP32_DOT", True), kwargs.get("PRECISION", "ieee"), str(named_args["p_xw"].dtype)
                   if "p_xw" in named_args else str(named_args.get("p_dy").dtype))
    return tile_candidates(configs, named_args["B_CLASS"], mode, kwargs.get("BLOCK_H", 0),
                           bool(kwargs.get("W_IN_REGS", False)))


_autotune = triton.autotune(configs=_configs(), key=["H", "B_CLASS", "W_IN_REGS", "FP32_DOT", "PRECISION", "PACKED"],
                            prune_configs_by={"early_config_prune": _prune})


@triton.jit
def _rows_times(b_s, b_a, W_IN_REGS: tl.constexpr, FP32_DOT: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_B: tl.constexpr):
    """``S @ A`` ``[BLOCK_B, BLOCK_H]`` float32 for the state S ``[BLOCK_B, BLOCK_H]`` (float32) and A
    ``[BLOCK_H, BLOCK_H]`` held since before the step loop (float32 when W_IN_REGS)."""
    if W_IN_REGS:
        # Row by row: a broadcast multiply of A by the state row, reduced over A's first axis (the axis a
        # row-major load spreads over a thread's registers and over warps; lanes would cost a shuffle tree
        # per element). Other rows are selected away, not multiplied by zero, so their inf / NaN stay out.
        o_j = tl.arange(0, BLOCK_B)
        acc = tl.zeros_like(b_s)
        for j in tl.static_range(BLOCK_B):
            b_row = tl.sum(tl.where(o_j[:, None] == j, b_s, 0.0), axis=0)
            b_z = tl.sum(b_a * b_row[:, None], axis=0)
            acc = tl.where(o_j[:, None] == j, b_z[None, :], acc)
        return acc
    else:
        return _matmul(b_s.to(b_a.dtype), b_a, FP32_DOT, PRECISION)


@_autotune
@triton.jit(do_not_specialize=["T"])
def _rnn_fwd_single_kernel(
    p_xw, p_h0, p_wt, p_y, p_hn, p_batch_sizes, p_offsets,
    T, B, H, B_CLASS,
    REVERSE: tl.constexpr, ACTIVATION: tl.constexpr, TANH: tl.constexpr, PACKED: tl.constexpr,
    W_IN_REGS: tl.constexpr, FP32_DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    # Offsets: the tile's first row b_lo and each step's first row are int64 scalars (row * H passes 2^31
    # on large tensors); within the tile, o_tile = o_j * H + o_h stays int32 (< BLOCK_B * H).
    b_lo = tl.program_id(0).to(tl.int64) * BLOCK_B
    o_j = tl.arange(0, BLOCK_B)
    o_h = tl.arange(0, BLOCK_H)
    m_b = o_j < B - b_lo
    m_h = o_h < H
    o_tile = o_j[:, None] * H + o_h[None, :]
    # W^T, transposed on the host so this load is row-major like the backward's: a strided (transposing)
    # load here makes ptxas spill at BLOCK_H = 64. Loaded once: z = h @ W^T.
    b_wt = tl.load(p_wt + o_h[:, None] * H + o_h[None, :], mask=m_h[:, None] & m_h[None, :], other=0.0)
    if W_IN_REGS:
        b_wt = b_wt.to(tl.float32)
    m_bh = m_b[:, None] & m_h[None, :]
    b_h = tl.load(p_h0 + b_lo * H + o_tile, mask=m_bh, other=0.0).to(tl.float32)
    for s in range(T):
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        n_t, row0 = _step_rows(p_batch_sizes, p_offsets, t, B, PACKED)
        m_row = o_j < n_t - b_lo
        m = m_row[:, None] & m_h[None, :]
        o_step = (row0 + b_lo) * H
        b_x = tl.load(p_xw + o_step + o_tile, mask=m, other=0.0).to(tl.float32)
        b_z = b_x + _rows_times(b_h, b_wt, W_IN_REGS, FP32_DOT, PRECISION, BLOCK_B)
        b_new = tl.where(m_h[None, :], _activation(b_z, ACTIVATION, TANH), 0.0)
        b_h = tl.where(m_row[:, None], b_new, b_h)
        tl.store(p_y + o_step + o_tile, b_h.to(p_y.dtype.element_ty), mask=m)
    tl.store(p_hn + b_lo * H + o_tile, b_h.to(p_hn.dtype.element_ty), mask=m_bh)


@_autotune
@triton.jit(do_not_specialize=["T"])
def _rnn_bwd_single_kernel(
    p_dy, p_dhn, p_y, p_w, p_dz, p_dh0, p_batch_sizes, p_offsets,
    T, B, H, B_CLASS,
    REVERSE: tl.constexpr, ACTIVATION: tl.constexpr, PACKED: tl.constexpr,
    W_IN_REGS: tl.constexpr, FP32_DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    b_lo = tl.program_id(0).to(tl.int64) * BLOCK_B  # int64 row offsets as in the forward
    o_j = tl.arange(0, BLOCK_B)
    o_h = tl.arange(0, BLOCK_H)
    m_b = o_j < B - b_lo
    m_h = o_h < H
    o_tile = o_j[:, None] * H + o_h[None, :]
    # W[k, j] as it is: dh = dz @ W.
    b_w = tl.load(p_w + o_h[:, None] * H + o_h[None, :], mask=m_h[:, None] & m_h[None, :], other=0.0)
    if W_IN_REGS:
        b_w = b_w.to(tl.float32)
    m_bh = m_b[:, None] & m_h[None, :]
    b_dh = tl.load(p_dhn + b_lo * H + o_tile, mask=m_bh, other=0.0).to(tl.float32)
    for s in range(T):
        if REVERSE:
            t = s
        else:
            t = T - 1 - s
        n_t, row0 = _step_rows(p_batch_sizes, p_offsets, t, B, PACKED)
        m_row = o_j < n_t - b_lo
        m = m_row[:, None] & m_h[None, :]
        o_step = (row0 + b_lo) * H
        b_y = tl.load(p_y + o_step + o_tile, mask=m, other=0.0).to(tl.float32)
        b_dy = tl.load(p_dy + o_step + o_tile, mask=m, other=0.0).to(tl.float32)
        b_dz = _activation_backward(b_dy + b_dh, b_y, ACTIVATION)
        tl.store(p_dz + o_step + o_tile, b_dz.to(p_dz.dtype.element_ty), mask=m)
        b_new = tl.where(m_h[None, :], _rows_times(b_dz, b_w, W_IN_REGS, FP32_DOT, PRECISION, BLOCK_B), 0.0)
        b_dh = tl.where(m_row[:, None], b_new, b_dh)
    tl.store(p_dh0 + b_lo * H + o_tile, b_dh.to(p_dh0.dtype.element_ty), mask=m_bh)
