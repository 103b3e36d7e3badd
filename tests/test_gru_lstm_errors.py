"""Every bad call raises the same exception type with the same message as torch.nn.GRU / LSTM and their cells:
the calls of tests/test_errors.py that apply to the gated cells, and PyTorch's own error-input lists."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import fastrnn
from tests.test_errors import RNN_BAD_CALLS, _outcome, r

PAIRS = {"gru": (nn.GRU, fastrnn.GRU), "lstm": (nn.LSTM, fastrnn.LSTM)}
CELL_PAIRS = {"gru_cell": (nn.GRUCell, fastrnn.GRUCell), "lstm_cell": (nn.LSTMCell, fastrnn.LSTMCell)}

# The RNN's list without its nonlinearity cases; proj_size is an error for the GRU only.
SHARED = {k: v for k, v in RNN_BAD_CALLS.items() if "nonlinearity" not in k}
LSTM_CALLS = {
    "hx_not_tuple": lambda m: m(3, 5)(r(2, 4, 3), r(1, 4, 5)),
    "cx_wrong_hidden": lambda m: m(3, 5)(r(2, 4, 3), (r(1, 4, 5), r(1, 4, 6))),
    "hx_mixed_dims": lambda m: m(3, 5)(r(2, 4, 3), (r(1, 4, 5), r(4, 5))),
    "unbatched_hx_3d": lambda m: m(3, 5)(r(2, 3), (r(1, 1, 5), r(1, 1, 5))),
    "proj_h_wrong_size": lambda m: m(3, 5, proj_size=2)(r(2, 4, 3), (r(1, 4, 5), r(1, 4, 5))),
    "proj_too_big": lambda m: m(3, 5, proj_size=5),
    "proj_negative": lambda m: m(3, 5, proj_size=-1),
    "packed_cx_wrong_batch": lambda m: m(3, 5)(pack_sequence([r(3, 3), r(2, 3)]), (r(1, 2, 5), r(1, 3, 5))),
    "packed_cx_wrong_hidden": lambda m: m(3, 5)(pack_sequence([r(3, 3), r(2, 3)]), (r(1, 2, 5), r(1, 2, 4))),
    "dtype_mismatch_c": lambda m: m(3, 5)(r(2, 4, 3), (r(1, 4, 5), r(1, 4, 5, dtype=torch.float64))),
}
CELL_CALLS = {
    "input_3d": lambda m: m(3, 5)(r(4, 3, 1)),
    "wrong_feature_size": lambda m: m(3, 5)(r(4, 4)),
    "input_dtype_mismatch": lambda m: m(3, 5)(r(4, 3, dtype=torch.float64)),
    "hidden_float": lambda m: m(3, 5.0),
    "zero_batch": lambda m: m(3, 5)(r(0, 3)),
}
GRU_CELL_CALLS = {
    "hx_3d": lambda m: m(3, 5)(r(4, 3), r(1, 4, 5)),
    "hx_wrong_batch": lambda m: m(3, 5)(r(4, 3), r(2, 5)),
    "hx_wrong_hidden": lambda m: m(3, 5)(r(4, 3), r(4, 6)),
    "hx_dtype_mismatch": lambda m: m(3, 5)(r(4, 3), r(4, 5, dtype=torch.float64)),
}
LSTM_CELL_CALLS = {
    "hx_3d": lambda m: m(3, 5)(r(4, 3), (r(1, 4, 5), r(4, 5))),
    "cx_wrong_batch": lambda m: m(3, 5)(r(4, 3), (r(4, 5), r(2, 5))),
    "cx_wrong_hidden": lambda m: m(3, 5)(r(4, 3), (r(4, 5), r(4, 6))),
    "cx_dtype_mismatch": lambda m: m(3, 5)(r(4, 3), (r(4, 5), r(4, 5, dtype=torch.float64))),
}


def _cases():
    for name in PAIRS:
        for call in sorted(SHARED):
            yield pytest.param(name, SHARED[call], id=f"{name}-{call}")
    for call in sorted(LSTM_CALLS):
        yield pytest.param("lstm", LSTM_CALLS[call], id=f"lstm-{call}")


@pytest.mark.parametrize("name, call", list(_cases()))
def test_bad_call_matches_torch(name, call):
    theirs, ours = PAIRS[name]
    expected = _outcome(lambda: call(theirs))
    assert _outcome(lambda: call(ours)) == expected


def _cell_cases():
    for name in CELL_PAIRS:
        own = GRU_CELL_CALLS if name == "gru_cell" else LSTM_CELL_CALLS
        for call, fn in sorted({**CELL_CALLS, **own}.items()):
            yield pytest.param(name, fn, id=f"{name}-{call}")


@pytest.mark.parametrize("name, call", list(_cell_cases()))
def test_cell_bad_call_matches_torch(name, call):
    theirs, ours = CELL_PAIRS[name]
    expected = _outcome(lambda: call(theirs))
    assert _outcome(lambda: call(ours)) == expected


def _torch_error_samples():
    try:
        from torch.testing._internal import common_modules as cm
    except ImportError:  # torch's test helpers need expecttest, which the test set-up installs
        return []
    lists = [
        ("gru", cm.module_error_inputs_torch_nn_RNN_GRU),
        ("lstm", cm.module_error_inputs_torch_nn_RNN_GRU),  # torch's LSTM ModuleInfo uses the same list
        ("gru_cell", cm.module_error_inputs_torch_nn_RNN_GRU_Cell),
        ("lstm_cell", cm.module_error_inputs_torch_nn_LSTMCell),
    ]
    samples = []
    for name, make in lists:
        for i, sample in enumerate(make(None, "cpu", torch.float32, False, True)):
            ctor = sample.module_error_input.constructor_input
            if name == "gru_cell" and len(ctor.args) > 2:  # RNNCell's nonlinearity argument
                continue
            samples.append(pytest.param(name, sample, id=f"{name}-{i}"))
    return samples


TORCH_ERROR_SAMPLES = _torch_error_samples()


def test_pytorch_error_lists_are_present():
    pytest.importorskip("expecttest")
    assert len(TORCH_ERROR_SAMPLES) >= 12


@pytest.mark.parametrize("name, sample", TORCH_ERROR_SAMPLES)
def test_pytorch_listed_error_inputs(name, sample):
    """The bad calls PyTorch's own module tests list for GRU, LSTM and their cells, run against both."""
    theirs, ours = {**PAIRS, **CELL_PAIRS}[name]
    ctor = sample.module_error_input.constructor_input
    fwd = sample.module_error_input.forward_input

    def run(cls):
        module = cls(*ctor.args, **ctor.kwargs)
        if fwd is not None:
            module(*fwd.args, **fwd.kwargs)

    expected = _outcome(lambda: run(theirs))
    assert expected[0] is sample.error_type
    assert _outcome(lambda: run(ours)) == expected
