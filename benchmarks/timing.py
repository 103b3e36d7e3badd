"""Timing and memory measurement: medians with p20/p80 and every repeat's time, warm-up excluded."""

from __future__ import annotations

import resource
import statistics
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    repeats: int
    # Every repeat (on the CPU a block's mean per call), or past MAX_KEPT repeats that many evenly spaced quantiles.
    times_ms: list[float] = field(default_factory=list)


MAX_KEPT = 200


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _timing(times: list[float]) -> Timing:
    kept = list(times) if len(times) <= MAX_KEPT else [_quantile(times, i / (MAX_KEPT - 1)) for i in range(MAX_KEPT)]
    return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), len(times), kept)


def ratio_quantiles(base_ms: list[float], ms: list[float], qs: tuple[float, ...] = (0.2, 0.8)) -> list[float]:
    """Quantiles of the speedup ``base / t`` over every pair of a baseline repeat and a repeat of the measured
    implementation (the two are timed separately, so any pairing is as likely as any other)."""
    if not base_ms or not ms:
        raise ValueError("ratio_quantiles needs at least one time on each side")
    ratios = [b / t for b in base_ms for t in ms]
    return [_quantile(ratios, q) for q in qs]


def time_cpu(fn: Callable[[], object], min_run_time: float = 0.5, min_repeats: int = 5) -> Timing:
    """``torch.utils.benchmark.Timer.blocked_autorange`` with the process's thread count (its default is 1),
    topped up with single runs until there are ``min_repeats`` samples for the median and quantiles."""
    from torch.utils.benchmark import Timer

    fn()  # warm-up: first-call compilation, allocator growth
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    times = [t * 1e3 for t in timer.blocked_autorange(min_run_time=min_run_time).times]
    while len(times) < min_repeats:
        times.append(timer.timeit(1).median * 1e3)
    return _timing(times)


def time_cuda(fn: Callable[[], object], rep_ms: int = 100) -> Timing:
    """``triton.testing.do_bench`` (CUDA events, cache flush between runs), or CUDA events by hand."""
    try:
        from triton.testing import do_bench

        try:
            return _timing(do_bench(fn, warmup=25, rep=rep_ms, return_mode="all"))
        except (TypeError, ValueError, AssertionError):  # a Triton without return_mode="all": quantiles only
            p50, p20, p80 = do_bench(fn, warmup=25, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
            return Timing(p50, p20, p80, -1)
    except ImportError:
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(20):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return _timing(times)


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory of one call: CUDA max_memory_allocated, or the growth of the process's peak RSS on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
