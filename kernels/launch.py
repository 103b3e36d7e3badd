"""Launchers of the Triton recurrence kernels: tier choice, block sizes, packed-step tables.

Tiers (H = hidden size):
  single   H <= rnn_single.MAX_H (MAX_H_FP32_IEEE for float32 without TF32): one program per batch tile,
           W_hh in registers, all steps in one launch.
  multi    larger H: W_hh split by columns over P = ceil(H / BLOCK_N) programs; one persistent launch
           with a grid barrier when the GPU has at least P SMs, otherwise (and under TRITON_INTERPRET=1)
           one launch per step, which is correct but pays a launch per step and says so once.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional

import torch
import triton
from fastrnn.kernels.rnn_multi import _rnn_bwd_multi_kernel, _rnn_fwd_multi_kernel
from fastrnn.kernels.rnn_single import MAX_H, MAX_H_FP32_IEEE, _rnn_bwd_single_kernel, _rnn_fwd_single_kernel
from torch import Tensor

MULTI_BLOCK_N = 32
MULTI_BLOCK_K = 64
_warned: set[str] = set()


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _alloc_like(t: Tensor) -> Tensor:
    """Output allocation, one place so tests can poison it with NaN."""
    return torch.empty_like(t)


def _tables(batch_sizes: Optional[Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-step batch sizes and first packed rows on the kernel's device (dummies when padded)."""
    if batch_sizes is None:
        dummy = torch.zeros(1, dtype=torch.int32, device=device)
        return dummy, dummy
    sizes = batch_sizes.to(torch.int64)
    offsets = torch.cumsum(sizes, 0) - sizes
    return sizes.to(device=device, dtype=torch.int32), offsets.to(device)


def _dot_mode(dtype: torch.dtype) -> tuple[bool, str]:
    if dtype == torch.float32:
        return True, "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return False, "ieee"


def _block_b(batch: int) -> int:
    return 16 if batch <= 16 else 32 if batch <= 32 else 64


def _batch_tiles(batch: int):
    return lambda meta: (triton.cdiv(batch, meta["BLOCK_B"]),)


def _persistent(programs: int, device: torch.device) -> bool:
    if interpreting() or device.type != "cuda":
        return False
    return programs <= torch.cuda.get_device_properties(device).multi_processor_count


def _warn_per_step(hidden: int, programs: int) -> None:
    if interpreting() or "per_step" in _warned:
        return
    _warned.add("per_step")
    warnings.warn(
        f"fastrnn: hidden size {hidden} needs {programs} cooperating programs, more than this GPU runs at "
        "once; the Triton backend launches one kernel per step for it (correct, slower)",
        RuntimeWarning,
        stacklevel=4,
    )


def tier(hidden: int, dtype: torch.dtype) -> str:
    fp32_dot, precision = _dot_mode(dtype)
    limit = MAX_H_FP32_IEEE if fp32_dot and precision == "ieee" else MAX_H
    return "single" if hidden <= limit else "multi"


def _geometry(xw: Tensor, batch_sizes: Optional[Tensor]) -> tuple[int, int, int]:
    hidden = xw.size(-1)
    if batch_sizes is None:
        return xw.size(0), xw.size(1), hidden
    return batch_sizes.numel(), int(batch_sizes[0]) if batch_sizes.numel() else 0, hidden


def _flags(w_hh: Tensor, batch_sizes: Optional[Tensor], reverse: bool, activation: int) -> dict:
    fp32_dot, precision = _dot_mode(w_hh.dtype)
    return dict(REVERSE=reverse, ACTIVATION=activation, PACKED=batch_sizes is not None, FP32_DOT=fp32_dot,
                PRECISION=precision)


def _run_multi_tier(kernel, tensors: tuple, state0: Tensor, tables: tuple, steps: int, flags: dict,
                    persistent_meta: dict, per_step_metas: list[dict]) -> Tensor:
    """Launches a multi-tier kernel over all steps and returns its final float32 state ``[B, H]``.

    ``state0`` seeds both slots of the ``[2, B, H]`` state buffer; kernels take
    ``(*tensors, state, counter, batch_sizes, offsets, T, B, H, s_first, n_steps)``.
    """
    batch, hidden = state0.shape
    programs = triton.cdiv(hidden, MULTI_BLOCK_N)
    state = state0.to(torch.float32).unsqueeze(0).repeat(2, 1, 1)  # [2, B, H]
    counter = torch.zeros(1, dtype=torch.int32, device=state0.device)
    meta = dict(flags, BLOCK_B=_block_b(batch), BLOCK_N=MULTI_BLOCK_N, BLOCK_K=MULTI_BLOCK_K)
    args = (*tensors, state, counter, *tables, steps, batch, hidden)
    if _persistent(programs, state0.device):
        kernel[(programs,)](*args, 0, steps, PERSISTENT=True, **persistent_meta, **meta)
    else:
        _warn_per_step(hidden, programs)
        for s in range(steps):
            for step_meta in per_step_metas:
                kernel[(programs,)](*args, s, 1, PERSISTENT=False, **step_meta, **meta)
    return state[steps % 2]


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
    tables = _tables(batch_sizes, xw.device)
    flags = _flags(w_hh, batch_sizes, reverse, activation)
    if tier(hidden, w_hh.dtype) == "single":
        h_n = _alloc_like(h0)  # [B, H]
        _rnn_fwd_single_kernel[_batch_tiles(batch)](
            xw, h0, w_hh.t().contiguous(), y, h_n, *tables, steps, batch, hidden,
            BLOCK_H=max(16, triton.next_power_of_2(hidden)), **flags,
        )
        return y, h_n
    h_n = _run_multi_tier(_rnn_fwd_multi_kernel, (xw, w_hh, y), h0, tables, steps, flags, {}, [{}])
    return y, h_n.to(h0.dtype)


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
    tables = _tables(batch_sizes, y.device)
    flags = _flags(w_hh, batch_sizes, reverse, activation)
    if tier(hidden, w_hh.dtype) == "single":
        dh0 = _alloc_like(dh_n)  # [B, H]
        _rnn_bwd_single_kernel[_batch_tiles(batch)](
            dy, dh_n, y, w_hh, dz, dh0, *tables, steps, batch, hidden,
            BLOCK_H=max(16, triton.next_power_of_2(hidden)), **flags,
        )
        return dz, dh0
    # Per step, phase 0 writes dz_t for each program's columns and phase 1 reads all of it.
    dh0 = _run_multi_tier(_rnn_bwd_multi_kernel, (dy, y, w_hh, dz), dh_n, tables, steps, flags,
                          {"PHASE": 2}, [{"PHASE": 0}, {"PHASE": 1}])
    return dz, dh0.to(dh_n.dtype)
