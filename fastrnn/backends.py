"""Backend choice for the recurrence op: ``triton`` (GPU), ``cpp`` (CPU), ``reference`` (anywhere).

``FASTRNN_BACKEND=reference|cpp|triton`` forces one (an error if it cannot run the given tensors);
otherwise the fastest backend that can run them is taken, with one warning when a faster one is missing.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Optional, Union

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

from fastrnn import reference
from fastrnn._cpp import load_cpp_ops

BACKEND_ENV = "FASTRNN_BACKEND"
# os.environ.get encodes the key and decodes the value in Python (~1 us, paid per call on the op's path);
# CPython's os.environ keeps its bytes in `_data`, which setenv and monkeypatching update too.
_ENV_BYTES = getattr(os.environ, "_data", None)
_BACKEND_KEY = BACKEND_ENV.encode() if isinstance(_ENV_BYTES, dict) else None


def forced_backend() -> str:
    """The value of FASTRNN_BACKEND, stripped ('' when unset)."""
    if _BACKEND_KEY is not None:
        value = _ENV_BYTES.get(_BACKEND_KEY)
        return value.decode().strip() if value else ""
    return os.environ.get(BACKEND_ENV, "").strip()


class ReferenceBackend:
    """Step-by-step PyTorch: any device, any dtype; the oracle."""

    name = "reference"

    def unavailable_reason(self) -> Optional[str]:
        return None

    def cannot_run(self, xw: Tensor) -> Optional[str]:
        return None

    def fwd(self, xw, h0, w_hh, batch_sizes, reverse, act):
        reference.check_batch_sizes(batch_sizes, xw.size(0), h0.size(0))
        return reference.rnn_recurrence_ref(xw, h0, w_hh, batch_sizes, reverse, act)

    def bwd(self, dy, dh_n, y, w_hh, batch_sizes, reverse, act, need_dh0=True):
        reference.check_batch_sizes(batch_sizes, y.size(0), dh_n.size(0))
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


Backend = Union[TritonBackend, CppBackend, ReferenceBackend]
_BACKENDS: dict[str, Backend] = {b.name: b for b in (TritonBackend(), CppBackend(), ReferenceBackend())}
# Per family, the backends with kernels for it, fastest first, by device type (any other device: the reference).
# GRU / LSTM have no Triton kernels yet.
_PREFERENCE = {
    "RNN": {"cpu": ("cpp", "reference"), "cuda": ("triton", "reference")},
    "GRU/LSTM": {"cpu": ("cpp", "reference")},
}
_KERNELS = {family: {n for row in rows.values() for n in row} for family, rows in _PREFERENCE.items()}
_warned: set[str] = set()


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine (for some device and dtype)."""
    return [name for name, b in _BACKENDS.items() if b.unavailable_reason() is None]


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _base_tensor(t: Tensor) -> Tensor:
    """The plain tensor under every torch.func wrapper (grad, vmap, jvp levels) of ``t``."""
    from torch._C._functorch import get_unwrapped, is_functorch_wrapped_tensor

    while is_functorch_wrapped_tensor(t):
        t = get_unwrapped(t)
    return t


def needs_any_order(*tensors: Optional[Tensor]) -> bool:
    """Whether a call must be differentiable beyond one reverse-mode pass at the torch.func level it runs at:
    forward-mode AD (an open ``torch.autograd.forward_ad.dual_level``, or ``torch.func.jvp`` / ``jacfwd`` /
    ``hessian``), or two reverse-mode levels (``torch.func.grad`` of ``grad``, ``vjp`` of ``vjp``, or one
    ``grad`` level over tensors that eager autograd records as well). fastrnn's ops give exact first-order
    reverse gradients under transforms and no forward-mode rule; such calls run the pure-PyTorch reference,
    which every transform differentiates to any order (slower, never a wrong number)."""
    if forward_ad._current_level >= 0:
        return True
    if not torch._C._are_functorch_transforms_active():
        return False
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    reverse = 0
    for interpreter in retrieve_all_functorch_interpreters():
        kind = interpreter.key()
        if kind == TransformType.Jvp:
            return True
        reverse += kind == TransformType.Grad
    if reverse == 1 and torch.is_grad_enabled():
        reverse += any(t is not None and _base_tensor(t).requires_grad for t in tensors)
    return reverse >= 2


def traced(x: Tensor) -> bool:
    """Dynamo, export, torch.jit.trace or fake tensors look at this call: the ops' custom-op entry (a tracer
    records an op, never a Python autograd.Function). One predicate for every family."""
    return torch.compiler.is_compiling() or type(x) is not Tensor or torch._C._get_tracing_state() is not None


# Bound once: each costs an attribute walk per call otherwise, and a plain eager call asks all of them. The same
# function objects, so dynamo still recognises them.
_is_compiling = torch.compiler.is_compiling
_tracing_state = torch._C._get_tracing_state
_transforms_active = torch._C._are_functorch_transforms_active
_any_autocast = torch._C._is_any_autocast_enabled
_dispatch_modes = torch._C._len_torch_dispatch_stack


def _eager_cpp_call(input: Tensor) -> bool:
    """Whether this is a plain eager call the C++ library can take whole: a plain tensor, no tracer, transform,
    forward-mode AD (the C++ nodes have no forward-mode rule), autocast or dispatch mode (FlopCounterMode sees
    ops only), no other backend forced, the library loaded. Per call: every check is a cheap one."""
    forced = forced_backend()
    if (forced and forced != "cpp") or type(input) is not Tensor or forward_ad._current_level >= 0:
        return False
    if _is_compiling():  # first of the tracers' checks: dynamo folds it, and never reaches the C calls below
        return False
    if _tracing_state() is not None or _transforms_active() or _any_autocast() or _dispatch_modes() > 0:
        return False
    return _BACKENDS["cpp"].unavailable_reason() is None


def differentiated(*tensors: Optional[Tensor]) -> bool:
    """Whether autograd will record this call: otherwise the op need not save anything for a backward."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def stack_forward_takes(input: Tensor, states: list[Tensor], weights: list[Tensor]) -> bool:
    """Whether a module runs its whole stack in one C++ call with no autograd: eager CPU float32/float64 calls
    that record no gradient (inference). Dropout is the caller's to rule out."""
    cpu = input.device.type == "cpu" and input.dtype in CppBackend.dtypes
    return cpu and _eager_cpp_call(input) and not differentiated(input, *states, *weights)


def select_backend(x: Tensor, family: str = "RNN") -> Backend:
    """The backend that runs ``family``'s op (``"RNN"``, ``"GRU/LSTM"``) on ``x``'s device and dtype: the
    forced one (an error where it has no kernels for the family or cannot run ``x``), else the fastest that can,
    with one warning per family, device and backend when a faster one is missing."""
    forced = forced_backend()
    if forced:
        if forced not in _BACKENDS:
            raise ValueError(f"{BACKEND_ENV}={forced!r} is not a fastrnn backend; choose from {sorted(_BACKENDS)}")
        if forced not in _KERNELS[family]:
            raise RuntimeError(f"{BACKEND_ENV}={forced}: fastrnn has no {forced} kernels for {family} yet")
        backend = _BACKENDS[forced]
        reason = backend.unavailable_reason() or backend.cannot_run(x)
        if reason is not None:
            raise RuntimeError(f"{BACKEND_ENV}={forced} cannot run here: {reason}")
        return backend
    skipped = []
    for name in _PREFERENCE[family].get(x.device.type, ("reference",)):
        backend = _BACKENDS[name]
        missing = backend.unavailable_reason()
        if missing is not None:
            skipped.append(f"{name}: {missing}")
        elif backend.cannot_run(x) is None:
            if skipped:
                _warn_once(f"{family}:{x.device.type}:{name}", f"fastrnn ({family}): using the {name} backend on "
                           f"{x.device.type} because " + "; ".join(skipped))
            return backend
    return _BACKENDS["reference"]
