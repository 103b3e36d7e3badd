"""Shared case builders for the parity tests: configurations and inputs of every kind the module takes."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pack_sequence

INPUT_SIZE = 5
HIDDEN_SIZE = 7


def make_input(kind: str, num_layers: int, bidirectional: bool, generator: torch.Generator):
    """Returns (extra constructor kwargs, input, hx) in float64 for one input kind."""
    d = 2 if bidirectional else 1

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    if kind == "padded":
        return {}, randn(6, 3, INPUT_SIZE), None
    if kind == "padded_hx_batch_first":
        return {"batch_first": True}, randn(3, 6, INPUT_SIZE), randn(num_layers * d, 3, HIDDEN_SIZE)
    if kind == "unbatched_hx":
        return {}, randn(6, INPUT_SIZE), randn(num_layers * d, HIDDEN_SIZE)
    if kind == "unbatched_batch_first":
        return {"batch_first": True}, randn(6, INPUT_SIZE), None
    if kind == "packed_unsorted":
        lengths = [3, 7, 1, 5]
        seqs = [randn(n, INPUT_SIZE) for n in lengths]
        return {}, pack_sequence(seqs, enforce_sorted=False), randn(num_layers * d, len(lengths), HIDDEN_SIZE)
    if kind == "packed_sorted_no_hx":
        seqs = [randn(n, INPUT_SIZE) for n in (6, 4, 4, 2)]
        return {}, pack_sequence(seqs), None
    if kind == "t1_b1":
        return {}, randn(1, 1, INPUT_SIZE), randn(num_layers * d, 1, HIDDEN_SIZE)
    if kind == "long_t_small_h":
        return {}, randn(300, 2, INPUT_SIZE), None
    raise ValueError(kind)


INPUT_KINDS = [
    "padded",
    "padded_hx_batch_first",
    "unbatched_hx",
    "unbatched_batch_first",
    "packed_unsorted",
    "packed_sorted_no_hx",
    "t1_b1",
    "long_t_small_h",
]


def recurrence_inputs(steps: int, batch: int, hidden: int, packed: bool, dtype: torch.dtype, seed: int,
                      device=None):
    """(xw, h0, w_hh, batch_sizes) for the recurrence op: padded [T, B, H] or packed rows with random lengths
    (the longest equal to T). Drawn in float64 for float64, else in float32 and cast."""
    gen = torch.Generator().manual_seed(seed)
    draw = torch.float64 if dtype == torch.float64 else torch.float32
    if packed:
        lengths = sorted(torch.randint(1, steps + 1, (batch,), generator=gen).tolist(), reverse=True)
        lengths[0] = steps
        batch_sizes = torch.tensor([sum(1 for n in lengths if n > t) for t in range(steps)])
        xw = torch.randn(int(batch_sizes.sum()), hidden, generator=gen, dtype=draw)
    else:
        batch_sizes = None
        xw = torch.randn(steps, batch, hidden, generator=gen, dtype=draw)
    h0 = torch.randn(batch, hidden, generator=gen, dtype=draw)
    w = torch.randn(hidden, hidden, generator=gen, dtype=draw) / hidden**0.5
    return [t.to(device=device, dtype=dtype) for t in (xw, h0, w)] + [batch_sizes]
