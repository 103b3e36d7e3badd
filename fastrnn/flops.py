"""FLOP formulas of fastrnn's ops for ``torch.utils.flop_counter.FlopCounterMode``, so a model counts the
same FLOPs with fastrnn.RNN as with torch.nn.RNN (whose per-step matmuls the counter sees one by one).

The recurrence does one ``[rows, H] @ [H, H]`` per step: ``2 * N * H * H`` over the ``N`` rows of all steps.
Its backward does the same, less the last step's ``dz W_hh`` when nobody wants ``dh0`` (as torch skips the
gradient of an ``h0`` that needs none). Weight, input and bias gradients are plain ATen ops, counted as such.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula


def _rows(shape) -> int:
    rows = 1
    for size in shape[:-1]:
        rows *= size
    return rows


def recurrence_flops(xw_shape, h0_shape, w_hh_shape, *args, **kwargs) -> int:
    hidden = w_hh_shape[0]
    return 2 * _rows(xw_shape) * hidden * hidden


def recurrence_backward_flops(dy_shape, dh_n_shape, y_shape, w_hh_shape, batch_sizes, reverse, activation,
                              need_dh0=True, *args, **kwargs) -> int:
    hidden = w_hh_shape[0]
    rows = _rows(y_shape) - (0 if need_dh0 else dh_n_shape[0])
    return 2 * rows * hidden * hidden


_registered: set[str] = set()


def register_flop_formulas() -> None:
    """Registers the formulas for every fastrnn op that exists now (the C++ ops appear when they load)."""
    ops = torch.ops.fastrnn
    for forward, backward in (("recurrence", "recurrence_backward"), ("rnn_fwd", "rnn_bwd")):
        if forward in _registered or not hasattr(ops, forward):
            continue
        register_flop_formula(getattr(ops, forward))(recurrence_flops)
        register_flop_formula(getattr(ops, backward))(recurrence_backward_flops)
        _registered.add(forward)
