"""One case of the peers preset: build every contender from one torch module, gate each, time the ones that
pass in interleaved rounds, and return the rows benchmarks.run writes (one per contender and mode)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable

import torch
from torch import Tensor, nn

import fastrnn
from benchmarks.grid import Case, peer_modes
from benchmarks.interleaved import time_interleaved
from benchmarks.peers.contender import (
    Contender,
    failed_contender,
    float64_oracle,
    gate,
    module_results,
    upstream_weights,
)
from benchmarks.peers.environment import THREADS
from benchmarks.run import TORCH_NAMES, forced_backend, make_input, torch_module

FASTRNN_CLASSES = {"rnn": fastrnn.RNN, "gru": fastrnn.GRU, "lstm": fastrnn.LSTM}
TRAINING_PEERS = ("jax",)  # the ONNX runtimes run inference only


def module_contender(name: str, ran: str, module: nn.Module, x: Tensor, backend: str | None = None) -> Contender:
    """torch's module or fastrnn's: inference under no_grad; training = forward and backward of the output's sum
    with the input requiring grad (as benchmarks.run times it)."""
    x_train = x.clone().requires_grad_(True)

    def infer():
        with torch.no_grad():
            return module(x)

    def train():
        module(x_train)[0].sum().backward()

    return Contender(name, ran, infer, lambda w: module_results(module, x, w, grads=False), train,
                     lambda w: module_results(module, x, w, grads=True), context=lambda: forced_backend(backend))


def _peer_builders(case: Case, base: nn.Module, x: Tensor, peers: dict[str, str]) -> dict[str, Callable[[], Contender]]:
    """The installed peers' builders, by name; the ONNX file is exported once for both ONNX runtimes."""
    builders: dict[str, Callable[[], Contender]] = {}
    if "onnxruntime" in peers or "openvino" in peers:
        from benchmarks.peers import onnx_runtimes

        exported: list = []

        def onnx():
            if not exported:
                exported.append(onnx_runtimes.export_onnx(base, x))
            return exported[0]

        if "onnxruntime" in peers:
            builders["onnxruntime"] = lambda: onnx_runtimes.onnxruntime_contender(*onnx(), x, THREADS)
        if "openvino" in peers:
            builders["openvino"] = lambda: onnx_runtimes.openvino_contender(*onnx(), x, THREADS)
    if "jax" in peers:
        from benchmarks.peers import jax_scan

        builders["jax"] = lambda: jax_scan.jax_contender(case.cell, base, x)
    return builders


def build(case: Case, peers: dict[str, str], skip: tuple[str, ...] = ()) -> tuple[nn.Module, Tensor, list[Contender]]:
    """torch's module for ``case`` (the source of every contender's weights), the input [T, B, H_in] and the
    contenders, torch's module first; a peer that could not be built is there as a contender that fails."""
    if case.layers != 1 or case.bidirectional or case.packed or case.proj_size or case.dtype != "float32":
        raise ValueError(f"the peers preset runs one float32 layer, padded, unprojected: not {case.id}")
    torch.manual_seed(0)
    base = torch_module(case, torch.device("cpu"), torch.float32)
    x = make_input(case, torch.device("cpu"), torch.float32)
    backend = "cpp" if "cpp" in fastrnn.available_backends() else None
    ours = FASTRNN_CLASSES[case.cell].from_torch(base)
    contenders = [module_contender(TORCH_NAMES[case.cell], "torch-cpu", base, x),
                  module_contender(f"fastrnn[{backend or 'auto'}]", backend or "torch", ours, x, backend)]
    contenders = [c for c in contenders if c is contenders[0] or c.name not in skip]
    for name, make in _peer_builders(case, base, x, peers).items():
        if name in skip:
            continue
        try:
            contenders.append(make())
        except Exception as e:  # a peer that cannot take the model fails its gate, the run goes on
            contenders.append(failed_contender(name, e, trains=name in TRAINING_PEERS))
    return base, x, contenders


def measure(case: Case, base: nn.Module, x: Tensor, contenders: list[Contender], min_run_time: float) -> list[dict]:
    """Gates each contender in each of the case's modes against torch's module (``contenders[0]``) and float64,
    then times the ones that passed, interleaved; a contender that fails is a row with its failures, untimed."""
    rows = []
    weights = upstream_weights(base, x)
    for mode in peer_modes(case) or ("inference",):
        grads = mode == "training"
        reference, oracle = module_results(base, x, weights, grads), float64_oracle(base, x, weights, grads)
        present = [c for c in contenders if (c.infer if mode == "inference" else c.train) is not None]
        verdicts = {c.name: [] if c is contenders[0] else gate(c, mode, weights, reference, oracle) for c in present}
        passed = [c for c in present if not verdicts[c.name]]
        timings = time_interleaved({c.name: c.infer if mode == "inference" else c.train for c in passed},
                                   min_run_time, contexts={c.name: c.context for c in passed})
        for c in present:
            failures = verdicts[c.name]
            row = {**asdict(case), "case": case.id, "impl": c.name, "mode": mode, "ran": c.ran, "threads": THREADS,
                   "gate": "pass" if not failures else "REFUSED: " + "; ".join(failures)}
            if c.name in timings:
                t = timings[c.name]
                row.update(median_ms=t.median_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms, repeats=t.repeats,
                           times_ms=t.times_ms, speedup_vs_torch=timings[contenders[0].name].median_ms / t.median_ms)
            rows.append(row)
        base.zero_grad(set_to_none=True)
    return rows


def run_peer_case(case: Case, min_run_time: float, peers: dict[str, str], skip: tuple[str, ...] = ()) -> list[dict]:
    """The rows of one case: every contender built, gated and, when it passes, timed."""
    return measure(case, *build(case, peers, skip), min_run_time)
