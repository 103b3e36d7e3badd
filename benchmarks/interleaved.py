"""Interleaved timing: every contender of a case timed in rounds, one block each per round, so that a change in
the host's load (other processes, frequency) falls on all of them alike instead of on whoever ran last.

Between blocks the timer waits until the process is idle: a thread pool keeps spinning after its runtime's call
returns (onnxruntime's pool for 100-250 ms after a T=1000 LSTM on this machine, at 20-60% of a core; OpenMP's
for a few ms), and on two cores that spin would be charged to the next contender's block.
"""

from __future__ import annotations

import contextlib
import gc
import os
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


def _process_cpu_s() -> float | None:
    """CPU seconds used so far by all of this process's threads (Linux's per-thread schedstat, in ns), or None
    where that cannot be read."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    total = 0
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):  # a thread that ended meanwhile
            continue
    return total / 1e9


def settle(max_s: float = 0.5, window_s: float = 0.01, busy_share: float = 0.1) -> float:
    """Sleeps until the process's threads used less than ``busy_share`` of one core over a ``window_s`` window,
    at most ``max_s``; returns the seconds waited. Without per-thread CPU times, sleeps one window."""
    start = time.perf_counter()
    while True:
        cpu_before, wall_before = _process_cpu_s(), time.perf_counter()
        time.sleep(window_s)
        cpu_after, wall_after = _process_cpu_s(), time.perf_counter()
        if cpu_before is None or cpu_after is None:
            return wall_after - start
        idle = cpu_after - cpu_before < busy_share * (wall_after - wall_before)
        if idle or wall_after - start >= max_s:
            return wall_after - start


def time_interleaved(fns: dict[str, Callable[[], object]], min_run_time: float = 0.3, rounds: int = 10,
                     contexts: dict[str, Context] | None = None, settle_s: float = 0.5) -> dict[str, Timing]:
    """Times each of ``fns`` (name -> one call) for about ``min_run_time`` seconds, in ``rounds`` rounds.

    Each function is warmed up (first-call compilation, allocator growth) and calibrated to a block of calls
    lasting about ``min_run_time / rounds``; every round then times one block of each, in an order rotated by one
    each round. A repeat is one block's mean per call, as in ``timing.time_cpu``. ``contexts`` (name -> a context
    manager factory) is entered around each of that function's blocks (a forced backend, say). Before each
    block the process is let go idle (``settle``, at most ``settle_s``; 0 skips it).
    """
    if not fns or rounds < 1:
        raise ValueError("time_interleaved needs at least one function and one round")
    contexts = contexts or {}
    target_s = min_run_time / rounds
    calls: dict[str, int] = {}
    for name, fn in fns.items():
        if settle_s:
            settle(settle_s)
        with contexts.get(name, contextlib.nullcontext)():
            fn()
            fn()
            per_call_s = _block(fn, 1) / 1e3
            calls[name] = max(1, int(target_s / max(per_call_s, 1e-9)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):
        for name in order[r % len(order):] + order[:r % len(order)]:
            if settle_s:
                settle(settle_s)
            with contexts.get(name, contextlib.nullcontext)():
                times[name].append(_block(fns[name], calls[name]))
    return {name: _timing(values) for name, values in times.items()}
