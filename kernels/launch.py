"""Launchers of the Triton recurrence kernels: tier choice, geometry, device guard, the persistent launch and
its escape, packed-step tables.

Tiers (H = hidden size):
  single   H <= rnn_single.MAX_H: one program per batch tile, W_hh on chip, all steps in one launch; W in
           registers (IEEE float32, batch classes <= 4) or behind tl.dot on the tensor cores (16-bit / TF32
           tiles of 8+ rows): ``single_path``.
  multi    larger H: grid (column slices x batch groups) from kernels.plan; one persistent launch with one
           grid barrier per step when the whole grid fits on the GPU at once (cooperative launch where
           Triton has it, occupancy checked), otherwise -- and under TRITON_INTERPRET=1 -- one launch per
           step, which is correct but pays a launch per step and says so once.

A persistent launch that cannot make progress (programs not co-resident: another persistent kernel, MPS
limits, a sanitizer) never hangs: each barrier wait gives up after FASTRNN_SPIN_TIMEOUT_MS (default 1000)
and flags it, and this call is re-run one launch per step, with one warning. Everything launches on the
tensors' device (``torch.cuda.device`` guard) and current stream.

``FASTRNN_MULTI_MODE=auto|persistent|per_step`` forces the multi tier's launch mode (tests, diagnosis).
"""

from __future__ import annotations

import collections
import contextlib
import os
import warnings
from typing import Callable, Optional

import torch
import triton
from fastrnn.kernels.plan import MultiPlan, plan_multi
from fastrnn.kernels.rnn_common import (
    BARRIER_ABORT,
    CLOCK_GLOBALTIMER,
    CLOCK_SPINS,
    TANH_APPROX,
    TANH_LIBDEVICE,
    TANH_PORTABLE,
)
from fastrnn.kernels.rnn_multi import _rnn_bwd_multi_kernel, _rnn_fwd_multi_kernel
from fastrnn.kernels.rnn_single import (
    MAX_H,
    _rnn_bwd_single_kernel,
    _rnn_fwd_single_kernel,
    batch_class,
    mode_of,
    w_in_regs,
)
from torch import Tensor

# The kernels keep in-tile offsets (a tile index below aot_check.TILE_INDEX_LIMIT = 128, times H) in int32 and
# every other offset in int64; H below this keeps the former under 2^31. W_hh alone would be 2^48 elements.
MAX_HIDDEN = 2**31 // 128
MODE_ENV = "FASTRNN_MULTI_MODE"
TIMEOUT_ENV = "FASTRNN_SPIN_TIMEOUT_MS"
INTERPRETER_SPIN_LIMIT = 200
# The interpreter runs programs one after another: plan for a 4-SM GPU, so CI walks several column slices
# and batch groups without thousands of interpreted programs.
INTERPRETER_SMS = 4
_warned: set[str] = set()
_table_cache: collections.OrderedDict = collections.OrderedDict()
_occupancy_cache: dict = {}
_persistent_failed: set = set()  # (kernel, grid, device) whose persistent launch timed out or was refused


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _alloc_like(t: Tensor) -> Tensor:
    """Output allocation, one place so tests can poison it with NaN."""
    return torch.empty_like(t)


def _warn_once(key: str, message: str) -> None:
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def _device_guard(t: Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _tables(batch_sizes: Optional[Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-step batch sizes and first packed rows on the kernel's device (dummies when padded).

    Cached by value per device, so a repeated shape (every layer of a packed call, every training step,
    a CUDA graph replay) copies nothing host-to-device; a first copy goes through pinned memory without
    blocking the host.
    """
    if batch_sizes is None:
        key = ("dummy", str(device))
        if key not in _table_cache:
            dummy = torch.zeros(1, dtype=torch.int32, device=device)
            _table_cache[key] = (dummy, dummy)
        return _table_cache[key]
    key = (str(device), tuple(batch_sizes.tolist()))
    found = _table_cache.get(key)
    if found is not None:
        _table_cache.move_to_end(key)
        return found
    sizes = batch_sizes.to(torch.int64)
    host = torch.stack([sizes, torch.cumsum(sizes, 0) - sizes])  # [2, T]
    if device.type == "cuda":
        host = host.pin_memory()
    both = host.to(device, non_blocking=True)
    found = (both[0].to(torch.int32), both[1])
    _table_cache[key] = found
    if len(_table_cache) > 256:
        _table_cache.popitem(last=False)
    return found


def _dot_mode(dtype: torch.dtype) -> tuple[bool, str]:
    # torch.nn.RNN on CUDA runs cuDNN, which follows torch.backends.cudnn.allow_tf32 (default True), not
    # the matmul flag: a drop-in follows what the user's nn.RNN followed.
    if dtype == torch.float32:
        return True, "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    return False, "ieee"


def _tanh_mode(dtype: torch.dtype) -> int:
    if interpreting():
        return TANH_PORTABLE
    return TANH_LIBDEVICE if dtype == torch.float32 else TANH_APPROX


def tier(hidden: int, dtype: torch.dtype) -> str:
    return "single" if hidden <= MAX_H else "multi"


def single_path(batch: int, dtype: torch.dtype) -> str:
    """The single tier's hold on W_hh: "regs" (multiply-and-reduce) or "dot" (tl.dot via shared memory)."""
    fp32_dot, precision = _dot_mode(dtype)
    return "regs" if w_in_regs(batch_class(batch), mode_of(fp32_dot, precision, str(dtype))) else "dot"


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SMS


def plan(hidden: int, batch: int, dtype: torch.dtype, device: torch.device) -> MultiPlan:
    """The multi tier's geometry for this call (kernels.plan's performance model)."""
    fp32_dot, precision = _dot_mode(dtype)
    return plan_multi(hidden, batch, torch.finfo(dtype).bits // 8, fp32_dot and precision == "ieee",
                      _sm_count(device))


def _geometry(xw: Tensor, batch_sizes: Optional[Tensor]) -> tuple[int, int, int]:
    hidden = xw.size(-1)
    if hidden >= MAX_HIDDEN:
        raise ValueError(f"fastrnn's Triton kernels take hidden sizes below {MAX_HIDDEN}, got {hidden}")
    if batch_sizes is None:
        return xw.size(0), xw.size(1), hidden
    return batch_sizes.numel(), int(batch_sizes[0]) if batch_sizes.numel() else 0, hidden


def _flags(w_hh: Tensor, batch_sizes: Optional[Tensor], reverse: bool, activation: int) -> dict:
    fp32_dot, precision = _dot_mode(w_hh.dtype)
    return dict(REVERSE=reverse, ACTIVATION=activation, PACKED=batch_sizes is not None, FP32_DOT=fp32_dot,
                PRECISION=precision)


def _cooperative_supported() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDAOptions

        return "launch_cooperative_grid" in CUDAOptions.__dataclass_fields__
    except Exception:  # no NVIDIA backend, or a Triton without the option
        return False


def _resident_programs(kernel, args: tuple, meta: dict, grid: tuple, device: torch.device) -> int:
    """How many programs of this compiled kernel the GPU runs at once (occupancy x SMs)."""
    key = (kernel.fn.__name__ if hasattr(kernel, "fn") else str(kernel), str(device),
           tuple(sorted((k, v) for k, v in meta.items())))
    if key not in _occupancy_cache:
        per_sm = 1
        try:
            compiled = kernel.warmup(*args, grid=grid, **meta)
            compiled._init_handles()
            props = torch.cuda.get_device_properties(device)
            threads = 32 * compiled.metadata.num_warps
            regs = max(compiled.n_regs, 1)
            by_regs = props.regs_per_multiprocessor // (((regs * 32 + 255) // 256) * 256 * (threads // 32))
            by_threads = props.max_threads_per_multi_processor // threads
            shared = compiled.metadata.shared
            smem = getattr(props, "shared_memory_per_multiprocessor", 228 * 1024)
            by_smem = smem // shared if shared else 32
            per_sm = max(0, min(by_regs, by_threads, by_smem, 32))
        except Exception:  # occupancy unknown: assume one program per SM
            per_sm = 1
        _occupancy_cache[key] = per_sm * _sm_count(device)
    return _occupancy_cache[key]


def _spin_limit() -> int:
    if interpreting():
        return INTERPRETER_SPIN_LIMIT
    return int(float(os.environ.get(TIMEOUT_ENV, "1000")) * 1e6)


def _launch_multi(kernel, make_args: Callable, reset: Callable, p: MultiPlan, steps: int, meta: dict,
                  device: torch.device, epilogue: bool) -> None:
    """Runs a multi-tier kernel over all steps: persistent when possible, else (or after a timed-out
    persistent try, whose buffers ``reset`` restores) one launch per step."""
    grid = (p.col_programs, p.groups)
    meta = dict(meta, W_ON_CHIP=p.w_on_chip, BLOCK_B=p.block_b, BLOCK_N=p.block_n, BLOCK_H=p.block_h,
                BLOCK_K=p.block_k, num_warps=p.num_warps,
                CLOCK=CLOCK_SPINS if interpreting() else CLOCK_GLOBALTIMER)
    counters = torch.zeros(p.groups, dtype=torch.int32, device=device)
    error = torch.zeros(1, dtype=torch.int32, device=device)
    forced = os.environ.get(MODE_ENV, "auto").strip() or "auto"
    persistent = forced == "persistent" or (forced == "auto" and not interpreting() and device.type == "cuda")
    extra = {}
    if device.type == "cuda" and _cooperative_supported():
        extra["launch_cooperative_grid"] = True
    if persistent and forced == "auto":
        resident = _resident_programs(kernel, make_args(0, steps, counters, error),
                                      dict(meta, PERSISTENT=True, **extra), grid, device)
        if p.programs > resident:
            persistent = False
            _warn_once("per_step", (
                f"fastrnn: a call needs {p.programs} cooperating Triton programs, more than the "
                f"{resident} this GPU runs at once; such calls launch one kernel per step (correct, slower)"))
    failed_key = (getattr(kernel, "__name__", str(kernel)), grid, str(device))
    if persistent and forced == "auto" and failed_key in _persistent_failed:
        persistent = False
    if persistent:
        chunk = max(1, (BARRIER_ABORT // 2) // max(p.col_programs, 1))
        try:
            for s0 in range(0, steps, chunk):
                counters.zero_()
                kernel[grid](*make_args(s0, min(chunk, steps - s0), counters, error), PERSISTENT=True, **extra,
                             **meta)
            failed = False if _capturing(device) else bool(error.item())
        except RuntimeError as launch_error:  # e.g. a cooperative launch refused as too large
            failed, reason = True, str(launch_error).splitlines()[0]
        else:
            reason = "a grid barrier timed out waiting for programs that were not resident"
        if not failed:
            return
        _warn_once("persistent_failed", (
            f"fastrnn: the persistent Triton launch could not run ({reason}: another persistent kernel, MPS "
            "limits or a sanitizer?); that call was re-run one launch per step, and later ones of that "
            "geometry launch per step from the start"))
        _persistent_failed.add(failed_key)
        reset()
    for s in range(steps):
        kernel[grid](*make_args(s, 1, counters, error), PERSISTENT=False, **meta)
    if epilogue:
        kernel[grid](*make_args(steps, 0, counters, error), PERSISTENT=False, **meta)


def rnn_fwd_triton(
    xw: Tensor, h0: Tensor, w_hh: Tensor, batch_sizes: Optional[Tensor], reverse: bool, activation: int
) -> tuple[Tensor, Tensor]:
    """The forward op on Triton. Shapes as :func:`fastrnn.reference.rnn_recurrence_ref`."""
    xw, h0, w_hh = xw.contiguous(), h0.contiguous(), w_hh.contiguous()
    steps, _, hidden = _geometry(xw, batch_sizes)
    batch = h0.size(0)
    y = _alloc_like(xw)  # [T, B, H] or [N, H]
    if steps == 0 or batch == 0:
        return y, h0.clone()
    with _device_guard(xw):
        tables = _tables(batch_sizes, xw.device)
        flags = _flags(w_hh, batch_sizes, reverse, activation)
        tanh = _tanh_mode(w_hh.dtype)
        if tier(hidden, w_hh.dtype) == "single":
            h_n = _alloc_like(h0)  # [B, H]
            _rnn_fwd_single_kernel[lambda meta: (triton.cdiv(batch, meta["BLOCK_B"]),)](
                xw, h0, w_hh.t().contiguous(), y, h_n, *tables, steps, batch, hidden, batch_class(batch),
                BLOCK_H=max(16, triton.next_power_of_2(hidden)), TANH=tanh,
                W_IN_REGS=single_path(batch, w_hh.dtype) == "regs", **flags,
            )
            return y, h_n
        p = plan(hidden, batch, w_hh.dtype, xw.device)
        state = torch.empty(2, batch, hidden, dtype=torch.float32, device=xw.device)  # [2, B, H]

        def reset() -> None:
            state.copy_(h0.to(torch.float32).unsqueeze(0).expand(2, -1, -1))

        def make_args(s_first, n_steps, counters, error):
            return (xw, w_hh, y, state, counters, error, *tables, steps, batch, hidden, p.rows_per_group,
                    s_first, n_steps, _spin_limit())

        reset()
        _launch_multi(_rnn_fwd_multi_kernel, make_args, reset, p, steps, dict(flags, TANH=tanh), xw.device,
                      epilogue=False)
        return y, state[steps % 2].to(h0.dtype)


def rnn_bwd_triton(
    dy: Tensor, dh_n: Tensor, y: Tensor, w_hh: Tensor, batch_sizes: Optional[Tensor], reverse: bool,
    activation: int,
) -> tuple[Tensor, Tensor]:
    """The backward op on Triton: ``dz`` (shape of ``y``) and ``dh0`` ``[B, H]``."""
    dy, dh_n, y, w_hh = dy.contiguous(), dh_n.contiguous(), y.contiguous(), w_hh.contiguous()
    steps, _, hidden = _geometry(y, batch_sizes)
    batch = dh_n.size(0)
    dz = _alloc_like(y)  # [T, B, H] or [N, H]
    if steps == 0 or batch == 0:
        return dz, dh_n.clone()
    with _device_guard(y):
        tables = _tables(batch_sizes, y.device)
        flags = _flags(w_hh, batch_sizes, reverse, activation)
        if tier(hidden, w_hh.dtype) == "single":
            dh0 = _alloc_like(dh_n)  # [B, H]
            _rnn_bwd_single_kernel[lambda meta: (triton.cdiv(batch, meta["BLOCK_B"]),)](
                dy, dh_n, y, w_hh, dz, dh0, *tables, steps, batch, hidden, batch_class(batch),
                BLOCK_H=max(16, triton.next_power_of_2(hidden)),
                W_IN_REGS=single_path(batch, w_hh.dtype) == "regs", **flags,
            )
            return dz, dh0
        p = plan(hidden, batch, w_hh.dtype, y.device)
        w_t = w_hh.t().contiguous()  # [H, H]: the backward's slice is columns of W, rows of W^T
        dh = torch.empty(batch, hidden, dtype=torch.float32, device=y.device)  # [B, H], ends as dh0

        def reset() -> None:
            dh.copy_(dh_n)

        def make_args(s_first, n_steps, counters, error):
            return (dy, y, w_t, dz, dh, counters, error, *tables, steps, batch, hidden, p.rows_per_group,
                    s_first, n_steps, _spin_limit())

        reset()
        _launch_multi(_rnn_bwd_multi_kernel, make_args, reset, p, steps, flags, y.device, epilogue=True)
        return dz, dh.to(dh_n.dtype)
