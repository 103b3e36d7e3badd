"""Backend choice for the recurrence op: ``triton`` (GPU), ``cpp`` (CPU), ``reference`` (anywhere).

``FASTRNN_BACKEND=reference|cpp|triton`` forces one (an error if it cannot run the given tensors);
otherwise the fastest backend that can run them is taken, with one warning when a faster one is missing.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Optional, Protocol

import torch
from torch import Tensor

from fastrnn import reference
from fastrnn._cpp import load_cpp_ops

BACKEND_ENV = "FASTRNN_BACKEND"


class Backend(Protocol):
    name: str

    def unavailable_reason(self) -> Optional[str]: ...

    def cannot_run(self, xw: Tensor) -> Optional[str]: ...

    def fwd(
        self, xw: Tensor, h0: Tensor, w_hh: Tensor, batch_sizes: Optional[Tensor], reverse: bool, act: str
    ) -> tuple[Tensor, Tensor]: ...

    def bwd(
        self,
        dy: Tensor,
        dh_n: Tensor,
        y: Tensor,
        w_hh: Tensor,
        batch_sizes: Optional[Tensor],
        reverse: bool,
        act: str,
        need_dh0: bool = True,
    ) -> tuple[Tensor, Tensor]: ...


class ReferenceBackend:
    """Step-by-step PyTorch: any device, any dtype; the oracle."""

    name = "reference"

    def unavailable_reason(self) -> Optional[str]:
        return None

    def cannot_run(self, xw: Tensor) -> Optional[str]:
        return None

    def fwd(self, xw, h0, w_hh, batch_sizes, reverse, act):
        return reference.rnn_recurrence_ref(xw, h0, w_hh, batch_sizes, reverse, act)

    def bwd(self, dy, dh_n, y, w_hh, batch_sizes, reverse, act, need_dh0=True):
        return reference.rnn_recurrence_bwd_ref(dy, dh_n, y, w_hh, batch_sizes, reverse, act)


class CppBackend:
    """The C++ op ``torch.ops.fastrnn.rnn_fwd/rnn_bwd``: CPU tensors, float32 and float64."""

    name = "cpp"
    dtypes = (torch.float32, torch.float64)

    def unavailable_reason(self) -> Optional[str]:
        return load_cpp_ops()

    def cannot_run(self, xw: Tensor) -> Optional[str]:
        if xw.device.type != "cpu":
            return f"it runs on CPU tensors, got a tensor on {xw.device}"
        if xw.dtype not in self.dtypes:
            return f"it supports float32 and float64, got {xw.dtype}"
        return None

    def fwd(self, xw, h0, w_hh, batch_sizes, reverse, act):
        return torch.ops.fastrnn.rnn_fwd(xw, h0, w_hh, batch_sizes, reverse, reference.activation_id(act))

    def bwd(self, dy, dh_n, y, w_hh, batch_sizes, reverse, act, need_dh0=True):
        return torch.ops.fastrnn.rnn_bwd(
            dy, dh_n, y, w_hh, batch_sizes, reverse, reference.activation_id(act), need_dh0
        )


@functools.cache
def _triton_import_error() -> Optional[str]:
    try:
        import fastrnn.kernels.launch  # noqa: F401  (imports triton)
    except ImportError as error:
        return f"Triton is not importable ({error})"
    return None


class TritonBackend:
    """The fused Triton kernels (``fastrnn.kernels``): CUDA tensors in float32, float16 and bfloat16, or
    CPU tensors under ``TRITON_INTERPRET=1`` (how CI and machines without a GPU check the kernels)."""

    name = "triton"
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def unavailable_reason(self) -> Optional[str]:
        missing = _triton_import_error()
        if missing is not None:
            return missing
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1":
            return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU tensors)"
        return None

    def cannot_run(self, xw: Tensor) -> Optional[str]:
        interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
        if xw.device.type != "cuda" and not (interpreted and xw.device.type == "cpu"):
            return f"it runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1), got {xw.device}"
        if xw.dtype not in self.dtypes:
            return f"it supports float32, float16 and bfloat16, got {xw.dtype}"
        if xw.device.type == "cpu" and xw.dtype == torch.bfloat16:
            return "Triton's interpreter computes bfloat16 tl.dot wrongly; bfloat16 runs on CUDA only"
        return None

    def fwd(self, xw, h0, w_hh, batch_sizes, reverse, act):
        from fastrnn.kernels.launch import rnn_fwd_triton

        return rnn_fwd_triton(xw, h0, w_hh, batch_sizes, reverse, reference.activation_id(act))

    def bwd(self, dy, dh_n, y, w_hh, batch_sizes, reverse, act, need_dh0=True):
        from fastrnn.kernels.launch import rnn_bwd_triton

        return rnn_bwd_triton(dy, dh_n, y, w_hh, batch_sizes, reverse, reference.activation_id(act))


_BACKENDS: dict[str, Backend] = {b.name: b for b in (TritonBackend(), CppBackend(), ReferenceBackend())}
_PREFERENCE = {"cpu": ("cpp", "reference"), "cuda": ("triton", "reference")}
_warned: set[str] = set()


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine (for some device and dtype)."""
    return [name for name, b in _BACKENDS.items() if b.unavailable_reason() is None]


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def select_backend(xw: Tensor) -> Backend:
    """The backend that runs the op on ``xw``'s device and dtype."""
    forced = os.environ.get(BACKEND_ENV, "").strip()
    if forced:
        if forced not in _BACKENDS:
            raise ValueError(
                f"{BACKEND_ENV}={forced!r} is not a fastrnn backend; choose from {sorted(_BACKENDS)}"
            )
        backend = _BACKENDS[forced]
        reason = backend.unavailable_reason() or backend.cannot_run(xw)
        if reason is not None:
            raise RuntimeError(f"{BACKEND_ENV}={forced} cannot run here: {reason}")
        return backend
    skipped = []
    for name in _PREFERENCE.get(xw.device.type, ("reference",)):
        backend = _BACKENDS.get(name)
        if backend is None:
            skipped.append(f"{name}: not installed")
            continue
        missing = backend.unavailable_reason()
        if missing is not None:
            skipped.append(f"{name}: {missing}")
            continue
        if backend.cannot_run(xw) is None:
            if skipped:
                _warn_once(
                    f"{xw.device.type}:{name}",
                    f"fastrnn: using the {name} backend on {xw.device.type} because "
                    + "; ".join(skipped),
                )
            return backend
    return _BACKENDS["reference"]
