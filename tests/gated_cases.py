"""Case builders for the GRU / LSTM tests: the module pairs and their states, on top of tests/cases.py."""

from __future__ import annotations

import torch
from torch import nn

import fastrnn
from tests.cases import HIDDEN_SIZE, INPUT_SIZE, make_input

PROJ_SIZE = 4

# name -> (torch class, fastrnn class, extra constructor kwargs)
FAMILY = {
    "gru": (nn.GRU, fastrnn.GRU, {}),
    "lstm": (nn.LSTM, fastrnn.LSTM, {}),
    "lstm_proj": (nn.LSTM, fastrnn.LSTM, {"proj_size": PROJ_SIZE}),
}


def make_family_input(name: str, kind: str, num_layers: int, bidirectional: bool, generator: torch.Generator):
    """Returns (constructor kwargs, input, hx) in float64: tests/cases.py's input kinds, with an LSTM state
    ``(h, c)`` (h with proj_size features when set) wherever the RNN case passes hx."""
    extra, x, hx = make_input(kind, num_layers, bidirectional, generator)
    extra = {**FAMILY[name][2], **extra}
    if hx is None or not name.startswith("lstm"):
        return extra, x, hx
    h_features = extra.get("proj_size", 0) or HIDDEN_SIZE
    h = torch.randn(*hx.shape[:-1], h_features, generator=generator, dtype=torch.float64)
    return extra, x, (h, hx)


def module_pair(name: str, config: dict, extra: dict) -> tuple[nn.Module, nn.Module]:
    torch_cls, ours_cls, _ = FAMILY[name]
    theirs = torch_cls(INPUT_SIZE, HIDDEN_SIZE, dtype=torch.float64, **config, **extra)
    return theirs, ours_cls.from_torch(theirs)
