"""Loads the C++ CPU op: the built extension ``fastrnn._C``, or a compile on first use. Imports nothing from the
package: what must follow the load (fakes, FLOP formulas) is handed in through :func:`on_load`."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import torch

# at::parallel_for is inlined into the extension and needs OpenMP to run in parallel; on Linux the
# libgomp.so.1 that torch has already loaded serves it. Keep in step with setup.py.
OPENMP = ["-fopenmp"] if sys.platform.startswith("linux") else []
_lock = threading.Lock()
_error: str | None = None
_loaded = False
_hooks: list[Callable[[], None]] = []  # what on_load was given before the ops registered


def _sources() -> list[str]:
    here = Path(__file__).resolve().parent
    for folder in (here / "csrc", here.parent / "csrc"):
        found = sorted(str(p) for p in folder.glob("*.cpp"))
        if found:
            return found
    return []


def _registered() -> bool:
    try:
        torch.ops.fastrnn.rnn_fwd  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


def _compile_now() -> None:
    from torch.utils.cpp_extension import load

    sources = _sources()
    if not sources:
        raise RuntimeError("the C++ sources (csrc/*.cpp) are not shipped with this installation")
    load(
        name="fastrnn_cpu_jit",
        sources=sources,
        extra_cflags=["-O3", "-std=c++17", *OPENMP],
        extra_ldflags=OPENMP,
        is_python_module=False,
        verbose=os.environ.get("FASTRNN_VERBOSE_BUILD") == "1",
    )


def load_built_ops() -> None:
    """Registers the ops of an installed build at import time (a library load, never a compile), so that
    TorchScript finds ``torch.ops.fastrnn.*`` when it compiles a module. A missing build waits for
    :func:`load_cpp_ops` on first use."""
    global _loaded
    if os.environ.get("FASTRNN_NO_EAGER_LOAD") == "1":
        return
    try:
        import fastrnn._C  # noqa: F401
    except ImportError:
        return
    with _lock:
        if not _loaded and _registered():
            _loaded = True
            _run_load_hooks()


def load_cpp_ops() -> str | None:
    """Registers ``torch.ops.fastrnn.*``; returns ``None`` on success or why it cannot."""
    global _error, _loaded
    if _loaded:  # the per-call path: no lock once the ops are registered
        return None
    with _lock:
        if _loaded or _error is not None:
            return _error
        try:
            import fastrnn._C  # noqa: F401
        except ImportError as built_error:
            if os.environ.get("FASTRNN_NO_JIT") == "1":
                _error = f"fastrnn._C is not built ({built_error}) and FASTRNN_NO_JIT=1 forbids compiling it"
            else:
                try:
                    _compile_now()
                except Exception as jit_error:  # a missing compiler shows up as many exception types
                    _error = (
                        f"fastrnn._C is not built ({built_error}) and compiling it on first use failed: "
                        f"{type(jit_error).__name__}: {jit_error}"
                    )
        if _error is None and not _registered():
            _error = "the C++ extension loaded but did not register torch.ops.fastrnn"
        _loaded = _error is None
        if _loaded:
            _run_load_hooks()
        return _error


def empty_cache() -> int:
    """Frees the memory blocks that fastrnn's CPU ops keep for reuse; returns how many bytes that was.

    The C++ ops allocate their large tensors (1 MiB and up: outputs, the workspace a layer saves for its
    backward, the gradients its backward returns) from a cache of freed blocks, so that a training loop does not
    fault their pages in afresh every step (csrc/step_buffers.h). The cache holds at most 32 blocks and 1 GiB and
    frees a block that 256 later allocations did not take. The analogue of ``torch.cuda.empty_cache``.
    """
    if not _loaded:
        return 0
    return int(torch.ops.fastrnn._release_step_buffers())


def on_load(hook: Callable[[], None]) -> None:
    """Runs ``hook`` once the C++ ops are registered: now if they are, else when they load. The modules that
    define the ops' fakes and FLOP formulas register them this way, so this module imports nothing from the
    package (no import cycle)."""
    with _lock:
        if not _loaded:
            _hooks.append(hook)
            return
    hook()


def _run_load_hooks() -> None:
    """Called with ``_lock`` held, once, right after the ops registered."""
    for hook in _hooks:
        hook()
    _hooks.clear()
