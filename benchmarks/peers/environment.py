"""The peers' common ground: one thread count for every runtime, and which peers are installed."""

from __future__ import annotations

import importlib
import os

import torch

THREADS = 2
PEERS = ("onnxruntime", "openvino", "jax")
SETUP = "bash scripts/setup_peers.sh"


def pin_threads(threads: int = THREADS) -> dict:
    """Caps this process at ``threads`` threads for torch and, before any peer starts its thread pool, for JAX.

    XLA has no flag for the size of its CPU thread pool: it sizes the pool from the process's CPU affinity. So
    where more than ``threads`` CPUs are allowed, the process is pinned to the first ``threads`` of them
    (``taskset`` does the same), which caps every runtime in it; onnxruntime and OpenVINO are also told
    ``threads`` when their sessions are made. Returns what was set, for the results' machine record.
    """
    torch.set_num_threads(threads)
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(allowed) > threads:
        os.sched_setaffinity(0, allowed[:threads])
        allowed = allowed[:threads]
    return {"threads": threads, "cpus": allowed}


def find_peers() -> tuple[dict[str, str], list[str]]:
    """The installed peers' versions by name, and the names of those missing."""
    found, missing = {}, []
    for name in PEERS:
        try:
            found[name] = importlib.import_module(name).__version__
        except ImportError:
            missing.append(name)
    return found, missing


def numpy_version() -> str | None:
    """numpy's version: every peer takes and returns numpy arrays, and the peers' install may move it."""
    try:
        import numpy
    except ImportError:
        return None
    return numpy.__version__


def missing_message(missing: list[str]) -> str:
    """The one line the preset prints when peers are missing."""
    names = " and ".join(", ".join(missing).rsplit(", ", 1))
    verb = "is" if len(missing) == 1 else "are"
    return (f"peers preset: {names} {verb} not installed and skipped; fastrnn, torch and any peer installed still "
            f"run. Install the peers with `{SETUP}`.")
