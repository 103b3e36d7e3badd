"""FLOP formulas of fastrnn's ops for ``torch.utils.flop_counter.FlopCounterMode``, so a model counts the
same FLOPs with fastrnn's modules as with torch's (whose per-step matmuls the counter sees one by one).

A recurrence does one ``[rows, P] @ [P, G]`` per step (``h W_hh^T``; ``G`` = H, 3H, 4H gate rows): ``2 N G P``
over the ``N`` rows of all steps, plus the LSTM's projection ``u W_hr^T`` (``2 N P H``). Its backward does the
same (``dh W_hr`` for the projection), less the first step's ``dg W_hh`` when nobody wants ``dh0`` (as torch skips
the gradient of an ``h0`` that needs none). The layer ops (``*_infer``, ``*_layer_fwd``) add the input projection
``x W_ih^T`` they make themselves. That is what torch counts for its RNN and GRU and for its LSTM without oneDNN
(with oneDNN torch's counter sees one opaque op and counts 0). Pointwise gate math is not counted, as torch does
not; weight, input and bias gradients are plain ATen ops, counted as such. Each formula reads the op's arguments
by their schema names.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula


def _rows(t: torch.Tensor) -> int:
    rows = 1
    for size in t.shape[:-1]:
        rows *= size
    return rows


def _state_flops(a: dict, rows: int, projected_rows: int) -> int:
    """``rows`` rows' ``h W_hh^T`` (``dg W_hh``), and ``projected_rows`` rows' LSTM ``u W_hr^T`` (``dh W_hr``)."""
    gates, width = a["w_hh"].shape
    w_hr = a.get("w_hr")
    projection = 0 if w_hr is None else 2 * projected_rows * w_hr.shape[0] * a["c0"].shape[-1]
    return 2 * rows * gates * width + projection


def _first_step_rows(a: dict) -> int:
    """Rows of the step that reads h0 first: all of them, or for a reversed packed walk the last step's (later
    steps take the rest of their rows from h0 too, but joined to rows that need a gradient, as in torch)."""
    batch_sizes = a["batch_sizes"]
    if a["reverse"] and isinstance(batch_sizes, torch.Tensor) and batch_sizes.numel() > 0:
        try:
            return int(batch_sizes[-1])
        except RuntimeError:  # fake or meta batch sizes have no value to read
            pass
    return a["dh_n"].shape[0]


def forward_flops(a: dict) -> int:
    """Every forward, inference and layer op: the state matmuls, and ``x W_ih^T`` where the op is given W_ih."""
    x = a["xw"] if "xw" in a else a["x"]
    w_ih = a.get("w_ih")
    projection = 0 if w_ih is None else 2 * _rows(x) * w_ih.shape[0] * w_ih.shape[1]
    return projection + _state_flops(a, _rows(x), _rows(x))


def backward_flops(a: dict) -> int:
    rows = _rows(a["y"] if "y" in a else a["ws"])
    skipped = 0 if a["need_dh0"] else _first_step_rows(a)
    return _state_flops(a, rows - skipped, rows)


def mm_flops(a: dict) -> int:
    return 2 * a["a"].shape[0] * a["a"].shape[1] * a["b"].shape[1]


def _by_name(op, formula):
    """``formula`` over the op's arguments as a dict by schema name (defaults filled in); tensors stay raw
    (register_flop_formula(get_raw=True)): the backward reads the values of ``batch_sizes``."""
    schema = [(arg.name, arg.default_value if arg.has_default_value() else None) for arg in op._schema.arguments]

    def wrapped(*args, out_val=None, **kwargs):
        named = dict(schema)
        named.update(zip((name for name, _ in schema), args), **kwargs)
        return formula(named)

    return wrapped


_FORMULAS = {
    **dict.fromkeys(("recurrence", "rnn_fwd", "gru_recurrence", "gru_fwd", "gru_infer", "gru_layer_fwd",
                     "lstm_recurrence", "lstm_fwd", "lstm_infer", "lstm_layer_fwd"), forward_flops),
    **dict.fromkeys(("recurrence_backward", "rnn_bwd", "gru_recurrence_backward", "gru_bwd",
                     "lstm_recurrence_backward", "lstm_bwd"), backward_flops),
    "mm_nn": mm_flops,
}
_registered: set[str] = set()


def register_flop_formulas() -> None:
    """Registers the formulas for every fastrnn op that exists now (the C++ ops appear when they load)."""
    ops = torch.ops.fastrnn
    for name, formula in _FORMULAS.items():
        if name in _registered or not hasattr(ops, name):
            continue
        op = getattr(ops, name).default
        register_flop_formula(getattr(ops, name), get_raw=True)(_by_name(op, formula))
        _registered.add(name)
