"""Interleaved timing: every contender of a case timed in rounds, one block each per round, so that a change in
the host's load (other processes, frequency) falls on all of them alike instead of on whoever ran last."""

from __future__ import annotations

import contextlib
import gc
import time
from typing import Callable

from benchmarks.timing import Timing, _timing

Context = Callable[[], contextlib.AbstractContextManager]


def _block(fn: Callable[[], object], calls: int) -> float:
    """Mean ms per call over ``calls`` back-to-back calls, the garbage collector paused (as timeit does)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls * 1e3
    finally:
        if enabled:
            gc.enable()


def time_interleaved(fns: dict[str, Callable[[], object]], min_run_time: float = 0.3, rounds: int = 10,
                     contexts: dict[str, Context] | None = None) -> dict[str, Timing]:
    """Times each of ``fns`` (name -> one call) for about ``min_run_time`` seconds, in ``rounds`` rounds.

    Each function is warmed up (first-call compilation, allocator growth) and calibrated to a block of calls
    lasting about ``min_run_time / rounds``; every round then times one block of each, in an order rotated by one
    each round. A repeat is one block's mean per call, as in ``timing.time_cpu``. ``contexts`` (name -> a context
    manager factory) is entered around each of that function's blocks (a forced backend, say).
    """
    if not fns or rounds < 1:
        raise ValueError("time_interleaved needs at least one function and one round")
    contexts = contexts or {}
    target_s = min_run_time / rounds
    calls: dict[str, int] = {}
    for name, fn in fns.items():
        with contexts.get(name, contextlib.nullcontext)():
            fn()
            fn()
            per_call_s = _block(fn, 1) / 1e3
            calls[name] = max(1, int(target_s / max(per_call_s, 1e-9)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):
        for name in order[r % len(order):] + order[:r % len(order)]:
            with contexts.get(name, contextlib.nullcontext)():
                times[name].append(_block(fns[name], calls[name]))
    return {name: _timing(values) for name, values in times.items()}
