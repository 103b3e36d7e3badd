"""The recurrent family as one table the tests parametrize over: a row per module kind and constructor variant.

Each row names the fastrnn class and its torch twin (the same class name in ``fastrnn`` and ``torch.nn``), the
state arity (1: ``h``; 2: ``(h, c)``), the gate count (rows of ``W_hh`` per hidden unit) and the constructor
extras that make the variant (``nonlinearity``, ``proj_size``). A new cell gets every family test by adding its
rows here; later the rows can point at the library's own cell specs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import fastrnn
from tests.cases import HIDDEN_SIZE, INPUT_SIZE, make_input

PROJ_SIZE = 4


@dataclass(frozen=True)
class Spec:
    """One member of the family: ``id`` names it in test ids (``"rnn_relu"``, ``"lstm_proj"``, ``"gru_cell"``)."""

    id: str
    name: str
    state_arity: int
    gates: int
    extra: dict = field(default_factory=dict)

    @property
    def ours(self) -> type[nn.Module]:
        return getattr(fastrnn, self.name)

    @property
    def theirs(self) -> type[nn.Module]:
        return getattr(nn, self.name)

    @property
    def is_cell(self) -> bool:
        return self.name.endswith("Cell")

    @property
    def recurrence(self) -> str:
        """The op family the spec runs on: ``"rnn"``, ``"gru"`` or ``"lstm"``."""
        return self.name.removesuffix("Cell").lower()


RNN_TANH = Spec("rnn_tanh", "RNN", 1, 1)
RNN_RELU = Spec("rnn_relu", "RNN", 1, 1, {"nonlinearity": "relu"})
GRU = Spec("gru", "GRU", 1, 3)
LSTM = Spec("lstm", "LSTM", 2, 4)
LSTM_PROJ = Spec("lstm_proj", "LSTM", 2, 4, {"proj_size": PROJ_SIZE})
RNN_TANH_CELL = Spec("rnn_tanh_cell", "RNNCell", 1, 1)
RNN_RELU_CELL = Spec("rnn_relu_cell", "RNNCell", 1, 1, {"nonlinearity": "relu"})
GRU_CELL = Spec("gru_cell", "GRUCell", 1, 3)
LSTM_CELL = Spec("lstm_cell", "LSTMCell", 2, 4)

LAYERS = (RNN_TANH, RNN_RELU, GRU, LSTM, LSTM_PROJ)
CELLS = (RNN_TANH_CELL, RNN_RELU_CELL, GRU_CELL, LSTM_CELL)
# One row per class, built with its defaults: for tests about a class rather than a variant of it.
LAYER_CLASSES = tuple(s for s in LAYERS if not s.extra)
CELL_CLASSES = tuple(s for s in CELLS if not s.extra)
GATED = tuple(s for s in LAYERS if s.gates > 1)


def params(specs, by: str = "id") -> list:
    """``pytest.param(spec, id=...)`` for each spec, its id read from the attribute ``by`` (``"id"``, ``"name"``)."""
    return [pytest.param(s, id=getattr(s, by)) for s in specs]


def state_like(spec: Spec, h: torch.Tensor, generator: torch.Generator, proj_size: int = 0):
    """The spec's state for a hidden state shaped like ``h`` (``[..., H]``): ``h`` itself for arity 1, else
    ``(h', c)`` with ``h`` as ``c`` and a fresh ``h'`` of ``proj_size`` features when set."""
    if spec.state_arity == 1:
        return h
    h_out = torch.randn(*h.shape[:-1], proj_size or h.size(-1), generator=generator, dtype=h.dtype)
    return h_out, h


def make_family_input(spec: Spec, kind: str, num_layers: int, bidirectional: bool, generator: torch.Generator):
    """Returns (constructor kwargs, input, hx) in float64: tests/cases.py's input kinds, with the spec's
    extras and its state ``(h, c)`` wherever the RNN case passes ``h``."""
    extra, x, hx = make_input(kind, num_layers, bidirectional, generator)
    extra = {**spec.extra, **extra}
    if hx is None:
        return extra, x, hx
    return extra, x, state_like(spec, hx, generator, extra.get("proj_size", 0))


def module_pair(spec: Spec, config: dict, extra: dict | None = None) -> tuple[nn.Module, nn.Module]:
    """(torch's float64 module, fastrnn's copy of it) for INPUT_SIZE -> HIDDEN_SIZE."""
    extra = spec.extra if extra is None else extra
    theirs = spec.theirs(INPUT_SIZE, HIDDEN_SIZE, dtype=torch.float64, **config, **extra)
    return theirs, spec.ours.from_torch(theirs)
