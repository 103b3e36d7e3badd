"""Every bad call raises the same exception type with the same message as torch.nn.RNN / RNNCell."""

import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import fastrnn


def _outcome(call):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call()
    except Exception as error:  # the point is to compare whatever is raised
        return type(error), str(error)
    return None, None


def r(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


RNN_BAD_CALLS = {
    "input_4d": lambda m: m(3, 5)(r(2, 4, 3, 5)),
    "input_1d": lambda m: m(3, 5)(r(3)),
    "wrong_feature_size": lambda m: m(3, 5)(r(2, 4, 4)),
    "wrong_feature_size_unbatched": lambda m: m(3, 5)(r(2, 4)),
    "hx_wrong_batch": lambda m: m(3, 5)(r(2, 4, 3), r(1, 3, 5)),
    "hx_wrong_hidden": lambda m: m(3, 5)(r(2, 4, 3), r(1, 4, 6)),
    "hx_wrong_layers": lambda m: m(3, 5, 2)(r(2, 4, 3), r(1, 4, 5)),
    "hx_wrong_directions": lambda m: m(3, 5, bidirectional=True)(r(2, 4, 3), r(1, 4, 5)),
    "hx_2d_for_batched": lambda m: m(3, 5)(r(2, 4, 3), r(4, 5)),
    "hx_3d_for_unbatched": lambda m: m(3, 5)(r(2, 3), r(1, 1, 5)),
    "hx_wrong_batch_first": lambda m: m(3, 5, batch_first=True)(r(4, 2, 3), r(1, 2, 5)),
    "input_dtype_mismatch": lambda m: m(3, 5)(r(2, 4, 3, dtype=torch.float64)),
    "input_int": lambda m: m(3, 5)(r(2, 4, 3).int()),
    "hx_dtype_mismatch": lambda m: m(3, 5)(r(2, 4, 3), r(1, 4, 5, dtype=torch.float64)),
    "empty_sequence": lambda m: m(3, 5)(r(0, 4, 3)),
    "empty_sequence_batch_first": lambda m: m(3, 5, batch_first=True)(r(4, 0, 3)),
    "packed_wrong_feature_size": lambda m: m(3, 5)(pack_sequence([r(3, 4), r(2, 4)])),
    "packed_hx_wrong_batch": lambda m: m(3, 5)(pack_sequence([r(3, 3), r(2, 3)]), r(1, 3, 5)),
    "bad_nonlinearity": lambda m: m(3, 5, nonlinearity="sigmoid"),
    "bad_nonlinearity_positional": lambda m: m(3, 5, 1, "gelu"),
    "proj_size": lambda m: m(3, 5, proj_size=2),
    "dropout_too_big": lambda m: m(3, 5, dropout=1.5),
    "dropout_bool": lambda m: m(3, 5, dropout=True),
    "hidden_zero": lambda m: m(3, 0),
    "input_zero": lambda m: m(0, 5),
    "layers_zero": lambda m: m(3, 5, 0),
    "hidden_float": lambda m: m(3, 5.0),
    "bias_int": lambda m: m(3, 5, bias=1),
    "batch_first_str": lambda m: m(3, 5, batch_first="yes"),
    "unknown_kwarg": lambda m: m(3, 5, foo=1),
    "ok_zero_batch": lambda m: m(3, 5)(r(2, 0, 3)),
    "ok_float16": lambda m: m(3, 5, dtype=torch.float16)(r(2, 4, 3, dtype=torch.float16)),
}

CELL_BAD_CALLS = {
    "input_3d": lambda m: m(3, 5)(r(4, 3, 1)),
    "hx_3d": lambda m: m(3, 5)(r(4, 3), r(1, 4, 5)),
    "wrong_feature_size": lambda m: m(3, 5)(r(4, 4)),
    "hx_wrong_batch": lambda m: m(3, 5)(r(4, 3), r(2, 5)),
    "hx_wrong_hidden": lambda m: m(3, 5)(r(4, 3), r(4, 6)),
    "unbatched_hx_wrong_hidden": lambda m: m(3, 5)(r(3), r(2, 5)),
    "input_dtype_mismatch": lambda m: m(3, 5)(r(4, 3, dtype=torch.float64)),
    "hx_dtype_mismatch": lambda m: m(3, 5)(r(4, 3), r(4, 5, dtype=torch.float64)),
    "bad_nonlinearity": lambda m: m(3, 5, nonlinearity="foo")(r(4, 3)),
    "hidden_float": lambda m: m(3, 5.0),
}


@pytest.mark.parametrize("name", sorted(RNN_BAD_CALLS))
def test_rnn_bad_call_matches_torch(name):
    call = RNN_BAD_CALLS[name]
    expected = _outcome(lambda: call(torch.nn.RNN))
    assert _outcome(lambda: call(fastrnn.RNN)) == expected


@pytest.mark.parametrize("name", sorted(CELL_BAD_CALLS))
def test_cell_bad_call_matches_torch(name):
    call = CELL_BAD_CALLS[name]
    expected = _outcome(lambda: call(torch.nn.RNNCell))
    assert _outcome(lambda: call(fastrnn.RNNCell)) == expected


def _torch_error_samples():
    try:
        from torch.testing._internal.common_modules import module_error_inputs_torch_nn_RNN_GRU
    except ImportError:  # torch's test helpers need expecttest, which the test set-up installs
        return []
    return module_error_inputs_torch_nn_RNN_GRU(None, "cpu", torch.float32, False, True)


TORCH_ERROR_SAMPLES = _torch_error_samples()


def test_pytorch_error_list_is_present():
    pytest.importorskip("expecttest")
    assert len(TORCH_ERROR_SAMPLES) >= 10


@pytest.mark.parametrize("index", range(len(TORCH_ERROR_SAMPLES)))
def test_pytorch_listed_error_inputs(index):
    """The bad calls PyTorch's own module tests list for RNN, run against both modules."""
    sample = TORCH_ERROR_SAMPLES[index]
    ctor = sample.module_error_input.constructor_input
    fwd = sample.module_error_input.forward_input

    def run(cls):
        module = cls(*ctor.args, **ctor.kwargs)
        if fwd is not None:
            module(*fwd.args, **fwd.kwargs)

    expected = _outcome(lambda: run(torch.nn.RNN))
    assert expected[0] is sample.error_type
    assert _outcome(lambda: run(fastrnn.RNN)) == expected
