"""Launch geometry of the multi-program tier, the single tier's choice of path, and the performance model
behind both (no torch, no GPU).

The model predicts one recurrence step (forward; the backward's step does the same work) on an H100/H200
from FLOPs, bytes and syncs, with the figures in ``GPU``. The planner keeps the candidate geometry with
the lowest prediction; ``benchmarks/NOTES.md`` tabulates the same predictions against cuDNN so the first
GPU run shows which assumption was wrong (``python -m fastrnn.kernels.plan`` prints the table).
"""

from __future__ import annotations

import dataclasses
import math

# H100 SXM / H200 (same SM, 132 SMs; H200 has faster HBM). Sustained clock, not boost.
GPU = dict(
    sms=132,
    clock_hz=1.75e9,
    fma_per_clk_sm=128,  # float32 FMA lanes
    mma_fma_per_clk_sm={2: 1024, 4: 512},  # mma.sync (Triton's choice at these shapes): ~half of wgmma peak
    l2_bytes_per_s=5.5e12,
    l2_bytes_per_clk_sm=64,
    hbm_bytes_per_s=3.35e12,  # H100 SXM; H200: 4.8e12
    barrier_s=1.0e-6,  # one grid barrier: an acq_rel atomic and a spin on L2, ~2 L2 round trips
    step_latency_s=0.8e-6,  # state load after the barrier (L2 latency) + activation + store
    row_reduce_s=0.08e-6,  # W_ON_CHIP: one cross-warp reduction per batch row per step
    tile_s=0.05e-6,  # per tile and step: its loads, activation and stores, one after another in a program
    launch_s=4.0e-6,  # per-step mode: one launch (two in the backward's epilogue) per step
)


@dataclasses.dataclass(frozen=True)
class MultiPlan:
    """Grid ``(col_programs, groups)``; each program owns BLOCK_N columns and ``rows_per_group`` rows."""

    block_n: int
    block_b: int
    block_h: int
    block_k: int
    rows_per_group: int
    col_programs: int
    groups: int
    num_warps: int
    w_on_chip: bool

    @property
    def programs(self) -> int:
        return self.col_programs * self.groups


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


# Streamed tl.dot tiles (BLOCK_N x BLOCK_B) that ptxas 3.6 allocates without spilling at BLOCK_K = 64
# (16-bit) / 32 (TF32: operands twice as wide): 128 x 64 spilled at 8 warps for TF32, and for 16-bit when
# H is not a multiple of 16 (aot_check, full).
_DOT_TILE_LIMIT = {2: 4096, 4: 4096}


def _block_k(block_h: int, elem_bytes: int) -> int:
    return min(64 if elem_bytes == 2 else 32, block_h)


def _on_chip_shape(block_n: int, block_h: int, batch: int) -> tuple[int, int] | None:
    """(num_warps, BLOCK_B) that hold a ``[block_n, block_h]`` W slice in registers without spilling.

    Registers hold the slice as float32 (Triton hoists the 16-bit -> float32 conversion out of the step
    loop), E elements a thread; each row of a tile is an unrolled multiply-and-reduce whose temporaries
    come on top. Measured with ptxas from Triton 3.6 for sm_90 (python -m fastrnn.kernels.aot_check): rows
    per tile 4 up to E = 16, 2 up to 32, 1 up to 64, with at most 8 warps (255 registers a thread); 16 warps
    (128 registers) only for one row and at most 16 columns (113-127 registers). Anything else spilled.
    """
    elems = block_n * block_h
    for warps in (4, 8, 16):
        per_thread = elems / (32 * warps)
        block_b = 4 if per_thread <= 16 else 2 if per_thread <= 32 else 1 if per_thread <= 64 else 0
        if warps == 16 and (block_b > 1 or block_n > 16):
            continue
        if block_b:
            return warps, min(block_b, _pow2(batch))
    return None


def candidates(hidden: int, batch: int, elem_bytes: int, fp32_ieee: bool, sms: int) -> list[MultiPlan]:
    """Every geometry the launcher may pick for this shape, each with at most ``sms`` programs."""
    block_h = _pow2(hidden)
    plans = []
    for w_on_chip in (True, False):
        if not w_on_chip and (fp32_ieee or batch < 8):
            continue  # IEEE float32 streams through the chunked multiply-and-reduce (the fallback below)
        for block_n in (4, 8, 16, 32, 64, 128):
            if block_n > block_h or (not w_on_chip and block_n < 16):
                continue
            col_programs = math.ceil(hidden / block_n)
            if col_programs > sms:
                continue
            if w_on_chip:
                shape = _on_chip_shape(block_n, block_h, batch)
                if shape is None:
                    continue
                warps, block_b = shape
            else:
                block_b = max(16, min(_pow2(batch), 64))
                if block_n * block_b > _DOT_TILE_LIMIT[elem_bytes]:
                    continue
                warps = 8 if block_n * block_b >= 2048 else 4
            max_groups = max(1, min(sms // col_programs, math.ceil(batch / block_b)))
            rows = math.ceil(math.ceil(batch / max_groups) / block_b) * block_b
            groups = math.ceil(batch / rows)
            plans.append(MultiPlan(block_n, block_b, block_h, _block_k(block_h, elem_bytes), rows, col_programs,
                                   groups, warps, w_on_chip))
    return plans


def predict_step_s(plan: MultiPlan, hidden: int, batch: int, elem_bytes: int, persistent: bool = True) -> float:
    """Predicted seconds per step of the multi tier with this plan (see GPU for the figures)."""
    g = GPU
    clock = g["clock_hz"]
    fmas = plan.rows_per_group * plan.block_n * hidden
    if plan.w_on_chip:
        compute = fmas / (g["fma_per_clk_sm"] * clock) + plan.rows_per_group * g["row_reduce_s"]
        w_bytes = 0
    else:
        compute = fmas / (g["mma_fma_per_clk_sm"].get(elem_bytes, 512) * clock)
        w_bytes = plan.block_n * hidden * elem_bytes * math.ceil(plan.rows_per_group / plan.block_b)
    state_bytes = plan.rows_per_group * hidden * (4 if plan.w_on_chip else elem_bytes)
    per_sm = (state_bytes + w_bytes) / (g["l2_bytes_per_clk_sm"] * clock)
    l2_all = plan.programs * (state_bytes + w_bytes) / g["l2_bytes_per_s"]
    hbm = 2 * batch * hidden * elem_bytes / g["hbm_bytes_per_s"]
    sync = g["barrier_s"] if persistent else g["launch_s"]
    tiles = math.ceil(plan.rows_per_group / plan.block_b) * g["tile_s"]
    return max(compute, per_sm, l2_all, hbm) + tiles + sync + g["step_latency_s"]


def plan_multi(hidden: int, batch: int, elem_bytes: int, fp32_ieee: bool, sms: int) -> MultiPlan:
    """The candidate with the lowest predicted step time."""
    plans = candidates(hidden, batch, elem_bytes, fp32_ieee, sms)
    if not plans:  # W does not fit on chip even once (float32 H > ~2900): stream it in wide slices
        block_h = _pow2(hidden)
        block_n = max(16, _pow2(math.ceil(hidden / sms)))
        small = fp32_ieee or batch < 8  # the chunked multiply-and-reduce (see rnn_multi._slice_times_rows)
        block_b = min(_pow2(batch), 4) if small else min(_pow2(batch), _DOT_TILE_LIMIT[elem_bytes] // block_n, 64)
        warps = 8 if not small and block_n * block_b >= 2048 else 4
        return MultiPlan(block_n, block_b, block_h, _block_k(block_h, elem_bytes), batch,
                         math.ceil(hidden / block_n), 1, warps, False)
    return min(plans, key=lambda p: (predict_step_s(p, hidden, batch, elem_bytes), p.programs))


# The single tier's register path takes tiles of at most this many rows (one multiply-and-reduce per row,
# unrolled); the launcher sends batch classes up to it there in every dtype.
REGS_MAX_TILE = 4


def single_w_in_regs(batch_class: int, fp32_ieee: bool) -> bool:
    """Whether the single tier keeps W in registers (multiply-and-reduce) rather than in shared memory behind
    tl.dot: always for IEEE float32 (its tl.dot is an FMA dot anyway, through shared memory, and spilled
    at H = 128), and for batch classes up to REGS_MAX_TILE rows in 16-bit and TF32, where a tensor-core
    dot of 1..4 rows is mostly padding. Tiles of 8+ rows in 16-bit / TF32 keep the tensor cores."""
    return fp32_ieee or batch_class <= REGS_MAX_TILE


def cudnn_step_s(hidden: int, batch: int, elem_bytes: int, tf32: bool = False) -> float:
    """An estimate of cuDNN's per-step time for the same step (no GPU measurement yet): a GEMM per step at
    60% of peak plus ~5 us of launch and pointwise work (cuDNN's persistent kernels cover only small H)."""
    peak = {4: 67e12 if not tf32 else 495e12, 2: 989e12}[elem_bytes]
    return 2 * batch * hidden * hidden / (0.6 * peak) + 5e-6


def single_step_s(hidden: int, batch: int, elem_bytes: int, fp32_ieee: bool) -> float:
    """Predicted seconds per step of the single tier: programs of one batch tile each do the whole step
    alone, no barrier. Register path (plan.single_w_in_regs): one-row tiles while the batch fits on the SMs,
    else REGS_MAX_TILE rows; FMA at 128 a clock per SM over the rows an SM holds, no W traffic, and per row
    one cross-warp reduction (GPU["row_reduce_s"]) after the first. tl.dot path: the tile's dot on the
    tensor cores and W read from shared memory every step (128 B a clock per SM). Both add the dependent
    chain: state exchange through shared memory, activation, store (0.5 us)."""
    g = GPU
    clock = g["clock_hz"]
    batch = max(batch, 1)
    b_class = min(_pow2(batch), 16)
    if single_w_in_regs(b_class, fp32_ieee):
        tile = 1 if batch <= g["sms"] else REGS_MAX_TILE
        rows_per_sm = tile * math.ceil(math.ceil(batch / tile) / g["sms"])
        compute = rows_per_sm * hidden * hidden / (g["fma_per_clk_sm"] * clock)
        return compute + (tile - 1) * g["row_reduce_s"] + 0.5e-6
    tile = min(batch, 16)
    compute = tile * hidden * hidden / (g["mma_fma_per_clk_sm"].get(elem_bytes, 512) * clock)
    smem = hidden * hidden * elem_bytes / (128 * clock)  # 128 B/clk of shared-memory bandwidth per SM
    return max(compute, smem) + 0.5e-6


GRID = [(b, h, "fp32") for b in (1, 16, 64, 256) for h in (128, 256, 512, 1024, 2048)] + [
    (64, h, "bf16") for h in (128, 256, 512, 1024, 2048)]


def table(grid=GRID) -> str:
    """Markdown: per case of the GPU benchmark grid (T = 1000), each tier's predicted microseconds per step
    next to the cuDNN estimate; 'launcher' is the tier and geometry fastrnn runs."""
    lines = ["| B | H | dtype | single us/step | multi persistent us/step | multi per-step us/step | geometry "
             "(BLOCK_N x rows/tile, grid, W) | cuDNN est. us/step | predicted ratio |",
             "|---:|---:|---|---:|---:|---:|---|---:|---:|"]
    for batch, hidden, dtype in grid:
        elem, ieee = (4, True) if dtype == "fp32" else (2, False)
        single_ok = hidden <= 128
        single = single_step_s(hidden, batch, elem, ieee) * 1e6 if single_ok else None
        p = plan_multi(hidden, batch, elem, ieee, GPU["sms"])
        multi = predict_step_s(p, hidden, batch, elem) * 1e6
        per_step = predict_step_s(p, hidden, batch, elem, persistent=False) * 1e6
        theirs = cudnn_step_s(hidden, batch, elem) * 1e6
        ours = single if single is not None else multi
        lines.append(
            f"| {batch} | {hidden} | {dtype} | {f'{single:.1f}' if single is not None else '-'} | {multi:.1f} | "
            f"{per_step:.1f} | {p.block_n} x {p.rows_per_group}/{p.block_b}, {p.col_programs}x{p.groups}, "
            f"{'regs' if p.w_on_chip else 'streamed'} | {theirs:.1f} | {theirs / ours:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
