"""The cell-in-a-Python-loop cases: the course's way of driving an RNN, and every sampler's.

Each case steps torch's cell and fastrnn's (``RNNCell``, ``GRUCell`` or ``LSTMCell``, same weights) ``steps``
times over the same inputs: inference under no_grad, and training (forward of every step, backward of the
sum of the states). A correctness gate compares the last state and every gradient with torch and a float64
oracle first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

import fastrnn
from benchmarks.timing import time_cpu
from fastrnn.testing import parity_failures

CELL_CLASSES = {"rnn": "RNNCell", "gru": "GRUCell", "lstm": "LSTMCell"}


@dataclass(frozen=True)
class CellLoopCase:
    steps: int
    B: int
    H: int
    dtype: str = "float32"
    cell: str = "rnn"

    @property
    def id(self) -> str:
        return f"{CELL_CLASSES[self.cell]} loop,steps={self.steps},B={self.B},H={self.H},{self.dtype}"


# RNNCell on the quick and full presets; GRUCell and LSTMCell on the family presets.
CELL_LOOP_CASES = [CellLoopCase(100, b, h) for b in (1, 32) for h in (32, 256)]
GATED_CELL_LOOP_CASES = [CellLoopCase(100, b, h, cell=c) for c in ("gru", "lstm") for b in (1, 32) for h in (32, 256)]


class Loop(nn.Module):
    def __init__(self, cell: nn.Module):
        super().__init__()
        self.cell = cell

    def forward(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = xs.new_zeros(xs.size(1), self.cell.hidden_size)
        state = (h, h) if isinstance(self.cell, (nn.LSTMCell, fastrnn.LSTMCell)) else h
        total = xs.new_zeros(())
        for x in xs:
            state = self.cell(x, state)
            h = state[0] if isinstance(state, tuple) else state
            total = total + h.sum()
        return h, total


def _results(loop: Loop, xs: torch.Tensor) -> dict[str, torch.Tensor]:
    leaf = xs.clone().requires_grad_(True)
    h, total = loop(leaf)
    grads = torch.autograd.grad(total, [leaf, *loop.cell.parameters()])
    names = [n for n, _ in loop.cell.named_parameters()]
    return {"h": h.detach(), "grad_input": grads[0], **{f"grad_{n}": g for n, g in zip(names, grads[1:])}}


def run_cell_loop_case(case: CellLoopCase, min_run_time: float) -> list[dict]:
    dtype = getattr(torch, case.dtype)
    torch.manual_seed(0)
    name = CELL_CLASSES[case.cell]
    torch_cell = getattr(nn, name)(case.H, case.H, dtype=dtype)
    torch_impl, fast_impl = f"torch.nn.{name}", f"fastrnn.{name}"
    loops = {torch_impl: Loop(torch_cell), fast_impl: Loop(getattr(fastrnn, name).from_torch(torch_cell))}
    xs = torch.randn(case.steps, case.B, case.H, generator=torch.Generator().manual_seed(1), dtype=dtype)
    reference = _results(loops[torch_impl], xs)
    oracle = _results(Loop(torch_cell.double()), xs.double())
    torch_cell.to(dtype)
    rows = []
    for impl, loop in loops.items():
        failures = [] if impl == torch_impl else parity_failures(_results(loop, xs), reference, oracle)
        x_train = xs.clone().requires_grad_(True)

        def infer(loop=loop):
            with torch.no_grad():
                return loop(xs)

        def train(loop=loop, x_train=x_train):
            loop(x_train)[1].backward()

        for mode, fn in (("inference", infer), ("training", train)):
            row = {**asdict(case), "case": case.id, "impl": impl, "mode": mode,
                   "gate": "pass" if not failures else "REFUSED: " + "; ".join(failures)}
            if not failures:
                t = time_cpu(fn, min_run_time)
                row.update(median_ms=t.median_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms, repeats=t.repeats)
            rows.append(row)
        loop.zero_grad(set_to_none=True)
    for mode in ("inference", "training"):
        base = next(r for r in rows if r["impl"] == torch_impl and r["mode"] == mode)
        for r in rows:
            if r["mode"] == mode and "median_ms" in r:
                r["speedup_vs_torch"] = base["median_ms"] / r["median_ms"]
    return rows
