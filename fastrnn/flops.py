"""FLOP formulas of fastrnn's ops for ``torch.utils.flop_counter.FlopCounterMode``, so a model counts the
same FLOPs with fastrnn.RNN as with torch.nn.RNN (whose per-step matmuls the counter sees one by one).

The recurrence does one ``[rows, H] @ [H, H]`` per step: ``2 * N * H * H`` over the ``N`` rows of all steps.
Its backward does the same, less the last step's ``dz W_hh`` when nobody wants ``dh0`` (as torch skips the
gradient of an ``h0`` that needs none). Weight, input and bias gradients are plain ATen ops, counted as such.
The GRU and LSTM ops count their state matmuls the same way with ``G = 3H`` / ``4H`` gate rows, the LSTM's
projection ``u W_hr^T`` (and ``dh W_hr`` backward), and the input projection where an op makes it itself
(``*_infer``, ``*_layer_fwd``): what torch counts for its GRU and for its LSTM without oneDNN (with oneDNN
torch's counter sees one opaque op and counts 0). Pointwise gate math is not counted, as torch does not.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula


def _rows(shape) -> int:
    rows = 1
    for size in shape[:-1]:
        rows *= size
    return rows


def _state_matmul_flops(rows: int, w_hh_shape, w_hr_shape=None, c_width: int = 0) -> int:
    """``rows`` steps' state matmuls: ``h W_hh^T`` (``[G, P]``: ``[H, H]`` for the Elman cell, ``[3H, H]`` /
    ``[4H, P]`` for GRU / LSTM), and the LSTM's projection ``u W_hr^T`` (``[P, H]``)."""
    gates, width = w_hh_shape
    return 2 * rows * gates * width + (2 * rows * w_hr_shape[0] * c_width if w_hr_shape is not None else 0)


def recurrence_flops(xw_shape, h0_shape, w_hh_shape, *args, **kwargs) -> int:
    """The Elman and the GRU recurrence (``xw``, ``h0``, ``w_hh`` first in both)."""
    return _state_matmul_flops(_rows(xw_shape), w_hh_shape)


def _first_step_rows(dh_n_shape, batch_sizes, reverse: bool) -> int:
    """Rows of the step that reads h0 first: all of them, or for a reversed packed walk the last step's (later
    steps take the rest of their rows from h0 too, but joined to rows that need a gradient, as in torch)."""
    if reverse and isinstance(batch_sizes, torch.Tensor) and batch_sizes.numel() > 0:
        try:
            return int(batch_sizes[-1])
        except RuntimeError:  # fake or meta batch sizes have no value to read
            pass
    return dh_n_shape[0]


def _shapes(formula):
    """``formula`` called with tensor shapes, except ``batch_sizes`` (the argument at
    ``formula.batch_sizes_at``), whose values it reads: register_flop_formula(get_raw=True) hands it the raw
    arguments."""

    def wrapped(*args, out_val=None, **kwargs):
        shaped = [a.shape if isinstance(a, torch.Tensor) and i != formula.batch_sizes_at else a
                  for i, a in enumerate(args)]
        return formula(*shaped, **kwargs)

    return wrapped


def recurrence_backward_flops(dy_shape, dh_n_shape, y_shape, w_hh_shape, batch_sizes, reverse, activation,
                              need_dh0=True, *args, **kwargs) -> int:
    skipped = 0 if need_dh0 else _first_step_rows(dh_n_shape, batch_sizes, reverse)
    return _state_matmul_flops(_rows(y_shape) - skipped, w_hh_shape)


recurrence_backward_flops.batch_sizes_at = 4


def _projection_flops(x_shape, w_ih_shape) -> int:
    """The input projection ``x W_ih^T`` the layer ops make themselves when given ``W_ih``."""
    return 0 if w_ih_shape is None else 2 * _rows(x_shape) * w_ih_shape[0] * w_ih_shape[1]


def gru_backward_flops(dy_shape, dh_n_shape, y_shape, ws_shape, h0_shape, w_hh_shape, batch_sizes, reverse,
                       need_dh0=True, *args, **kwargs) -> int:
    skipped = 0 if need_dh0 else _first_step_rows(dh_n_shape, batch_sizes, reverse)
    return _state_matmul_flops(_rows(y_shape) - skipped, w_hh_shape)


gru_backward_flops.batch_sizes_at = 6


def gru_layer_flops(x_shape, w_ih_shape, bias_shape, h0_shape, w_hh_shape, *args, **kwargs) -> int:
    return _projection_flops(x_shape, w_ih_shape) + _state_matmul_flops(_rows(x_shape), w_hh_shape)


def lstm_flops(xw_shape, h0_shape, c0_shape, w_hh_shape, w_hr_shape, *args, **kwargs) -> int:
    return _state_matmul_flops(_rows(xw_shape), w_hh_shape, w_hr_shape, c0_shape[-1])


def lstm_backward_flops(dy_shape, dh_n_shape, dc_n_shape, ws_shape, c0_shape, w_hh_shape, w_hr_shape, batch_sizes,
                        reverse, need_dh0=True, *args, **kwargs) -> int:
    rows = _rows(ws_shape)
    skipped = 0 if need_dh0 else _first_step_rows(dh_n_shape, batch_sizes, reverse)
    recurrent = _state_matmul_flops(rows - skipped, w_hh_shape)
    return recurrent + _state_matmul_flops(rows, (0, 0), w_hr_shape, c0_shape[-1])  # du = dh W_hr


lstm_backward_flops.batch_sizes_at = 7


def lstm_layer_flops(x_shape, w_ih_shape, bias_shape, h0_shape, c0_shape, w_hh_shape, w_hr_shape, *args,
                     **kwargs) -> int:
    return _projection_flops(x_shape, w_ih_shape) + lstm_flops(x_shape, h0_shape, c0_shape, w_hh_shape, w_hr_shape)


def mm_flops(a_shape, b_shape, *args, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


_FORMULAS = {
    "recurrence": recurrence_flops, "recurrence_backward": recurrence_backward_flops,
    "rnn_fwd": recurrence_flops, "rnn_bwd": recurrence_backward_flops,
    "gru_recurrence": recurrence_flops, "gru_recurrence_backward": gru_backward_flops,
    "gru_fwd": recurrence_flops, "gru_bwd": gru_backward_flops,
    "gru_infer": gru_layer_flops, "gru_layer_fwd": gru_layer_flops,
    "lstm_recurrence": lstm_flops, "lstm_recurrence_backward": lstm_backward_flops,
    "lstm_fwd": lstm_flops, "lstm_bwd": lstm_backward_flops, "lstm_infer": lstm_layer_flops,
    "lstm_layer_fwd": lstm_layer_flops, "mm_nn": mm_flops,
}
_registered: set[str] = set()


def register_flop_formulas() -> None:
    """Registers the formulas for every fastrnn op that exists now (the C++ ops appear when they load)."""
    ops = torch.ops.fastrnn
    for name, formula in _FORMULAS.items():
        if name in _registered or not hasattr(ops, name):
            continue
        if hasattr(formula, "batch_sizes_at"):
            register_flop_formula(getattr(ops, name), get_raw=True)(_shapes(formula))
        else:
            register_flop_formula(getattr(ops, name))(formula)
        _registered.add(name)
