"""Benchmark configurations: the presets and ``--filter`` in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Case:
    """One benchmark configuration."""

    T: int
    B: int
    H: int
    I: int = 0  # input size; 0 means I = H  # noqa: E741
    layers: int = 1
    bidirectional: bool = False
    nonlinearity: str = "tanh"
    dtype: str = "float32"
    packed: bool = False
    cell: str = "rnn"  # rnn | gru | lstm
    proj_size: int = 0  # LSTM only

    @property
    def input_size(self) -> int:
        return self.I or self.H

    @property
    def id(self) -> str:
        parts = [f"T={self.T}", f"B={self.B}", f"I={self.input_size}", f"H={self.H}", f"L={self.layers}"]
        if self.proj_size:
            parts.append(f"P={self.proj_size}")
        # The RNN's ids stay as they were; a GRU or LSTM case opens with its cell.
        parts += ["bi" if self.bidirectional else "uni", self.nonlinearity if self.cell == "rnn" else self.cell]
        parts += [self.dtype, "packed" if self.packed else "padded"]
        return ",".join(parts)


# Plots draw speedup against one of T, H, B with the other two at these values.
SWEEP_BASE = {"T": 200, "B": 16, "H": 64}


def _sweeps(T: list[int], H: list[int], B: list[int]) -> list[Case]:
    cases = [Case(T=t, B=SWEEP_BASE["B"], H=SWEEP_BASE["H"]) for t in T]
    cases += [Case(T=SWEEP_BASE["T"], B=SWEEP_BASE["B"], H=h) for h in H]
    cases += [Case(T=SWEEP_BASE["T"], B=b, H=SWEEP_BASE["H"]) for b in B]
    return cases


# The CPU targets, then enough variety to show every code path.
CPU_TARGETS = [
    Case(T=1000, B=1, H=32),
    Case(T=1000, B=4, H=64),
    Case(T=100, B=32, H=128),
    Case(T=100, B=64, H=1024),
]

# One row through a large layer (a 4-16 MB W_hh): the threads split its units, where rows would leave one idle.
LARGE_ONE_ROW = Case(T=100, B=1, H=1024)


def _family(cases: list[Case]) -> list[Case]:
    """The RNN grid's shape for GRU and LSTM (no nonlinearity variants), plus an LSTM with proj_size."""
    out = []
    for cell in ("gru", "lstm"):
        out += [replace(c, cell=cell) for c in cases if c.nonlinearity == "tanh"]
    projected = [Case(T=1000, B=4, H=64, cell="lstm", proj_size=32),
                 Case(T=100, B=32, H=128, cell="lstm", proj_size=64),
                 Case(T=200, B=8, H=64, cell="gru", dtype="bfloat16")]
    return out + projected


PRESETS: dict[str, list[Case]] = {
    "tiny": [Case(T=5, B=2, H=8), Case(T=5, B=2, H=8, packed=True, bidirectional=True)],
    "quick": CPU_TARGETS
    + [
        LARGE_ONE_ROW,
        Case(T=200, B=16, H=64, layers=2, bidirectional=True),
        Case(T=200, B=16, H=64, packed=True),
        Case(T=200, B=16, H=64, nonlinearity="relu"),
        Case(T=5, B=1, H=8),  # a tiny call: per-call overhead, not arithmetic
        Case(T=200, B=8, H=64, dtype="bfloat16"),  # 16-bit on the CPU: torch's own implementation runs it
    ],
    # H crosses the CPU op's small-loop / BLAS switch (rows * H^2 = 64^3) and, on GPU, the Triton tiers.
    "full": CPU_TARGETS
    + _sweeps(
        T=[10, 30, 100, 300, 1000],
        H=[16, 32, 64, 128, 256, 512, 1024],
        B=[1, 4, 16, 64, 256],
    )
    + [
        Case(T=200, B=16, H=64, layers=3),
        Case(T=200, B=16, H=64, layers=2, bidirectional=True),
        Case(T=200, B=16, H=64, nonlinearity="relu"),
        Case(T=200, B=16, H=64, packed=True),
        Case(T=200, B=16, H=64, packed=True, bidirectional=True),
        Case(T=200, B=16, H=64, dtype="float64"),
        Case(T=200, B=16, I=8, H=64),
    ],
}


# GRU and LSTM: the CPU targets for each (and a projected LSTM) in "family", the whole grid's shape in
# "family-full".
PRESETS["family"] = _family(CPU_TARGETS + [LARGE_ONE_ROW])
PRESETS["family-full"] = _family(PRESETS["full"])


# The GPU grid of benchmarks/gpu_check.sh: T = 1000 across B and H in float32, bfloat16 across H at B = 64,
# and a packed batch of 64 with lengths spread over 100..1000.
PRESETS["gpu"] = (
    [Case(T=1000, B=b, H=h) for b in (1, 16, 64, 256) for h in (128, 256, 512, 1024, 2048)]
    + [Case(T=1000, B=64, H=h, dtype="bfloat16") for h in (128, 256, 512, 1024, 2048)]
    + [Case(T=1000, B=64, H=512, packed=True), Case(T=1000, B=64, H=512, packed=True, dtype="bfloat16")]
)

# The peers preset (benchmarks/peers): issue 21's comparison with onnxruntime, OpenVINO and JAX, one layer,
# float32. Inference cases time every contender; training cases time torch, fastrnn and JAX (the ONNX runtimes
# do not train); a case in both lists runs both modes.
PEERS_INFERENCE = [
    Case(T=100, B=64, H=512),
    Case(T=100, B=64, H=1024),
    Case(T=1000, B=1, H=32, cell="lstm"),
    Case(T=1000, B=4, H=64, cell="lstm"),
    Case(T=100, B=64, H=1024, cell="lstm"),
    Case(T=5, B=1, H=8, cell="gru"),  # tiny calls: per-call overhead, not arithmetic
    Case(T=5, B=1, H=8, cell="lstm"),
]
PEERS_TRAINING = [Case(T=t, B=b, H=h, cell=cell) for cell in ("rnn", "gru", "lstm")
                  for t, b, h in ((1000, 1, 32), (1000, 4, 64), (100, 64, 1024))]
PRESETS["peers"] = PEERS_INFERENCE + PEERS_TRAINING


def peer_modes(case: Case) -> tuple[str, ...]:
    """The modes the peers preset times for ``case``: "inference", "training" or both."""
    return tuple(mode for mode, cases in (("inference", PEERS_INFERENCE), ("training", PEERS_TRAINING))
                 if case.id in {c.id for c in cases})


def select(preset: str, filter_expr: str | None = None) -> list[Case]:
    """The preset's cases (duplicates dropped) that match ``filter_expr``.

    A filter is comma-separated ``key=value`` terms (``T=1000,H=32,packed``) or bare words that must appear
    in the case id; all terms must match.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    cases = list({case.id: case for case in PRESETS[preset]}.values())
    if not filter_expr:
        return cases
    terms = [t.strip() for t in filter_expr.split(",") if t.strip()]
    for term in terms:
        if "=" in term and not re.fullmatch(r"\w+=[\w.]+", term):
            raise ValueError(f"bad filter term {term!r}: use key=value or a word")
    return [c for c in cases if all(term in c.id.split(",") or ("=" not in term and term in c.id) for term in terms)]
