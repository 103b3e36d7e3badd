"""Every bad call raises the same exception type with the same message as torch.nn.RNN / RNNCell."""

import warnings

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_sequence

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
    "hx_long": lambda m: m(3, 5)(r(2, 4, 3), r(1, 4, 5).long()),
    "hx_bool": lambda m: m(3, 5)(r(2, 4, 3), r(1, 4, 5).bool()),
    "hx_half": lambda m: m(3, 5)(r(2, 4, 3), r(1, 4, 5).half()),
    "hx_long_relu_no_bias": lambda m: m(3, 5, nonlinearity="relu", bias=False)(r(2, 4, 3), r(1, 4, 5).long()),
    "meta_input_cpu_weights": lambda m: m(3, 5)(torch.empty(2, 4, 3, device="meta")),
    "meta_hx_cpu_input": lambda m: m(3, 5)(r(2, 4, 3), torch.empty(1, 4, 5, device="meta")),
    "packed_increasing_batch_sizes": lambda m: m(3, 5)(PackedSequence(r(5, 3), torch.tensor([1, 2, 2]))),
    "packed_increasing_float16": lambda m: m(3, 5, dtype=torch.float16)(
        PackedSequence(r(5, 3).half(), torch.tensor([1, 2, 2]))
    ),
    "packed_negative_batch_size": lambda m: m(3, 5)(PackedSequence(r(4, 3), torch.tensor([3, 2, -1]))),
    "packed_2d_batch_sizes": lambda m: m(3, 5)(PackedSequence(r(4, 3), torch.tensor([[2, 2]]))),
    "packed_int32_batch_sizes": lambda m: m(3, 5)(PackedSequence(r(4, 3), torch.tensor([2, 2], dtype=torch.int32))),
    "packed_float_batch_sizes": lambda m: m(3, 5)(PackedSequence(r(4, 3), torch.tensor([2.0, 2.0]))),
    "packed_empty_batch_sizes": lambda m: m(3, 5)(PackedSequence(r(0, 3), torch.tensor([], dtype=torch.long))),
    "packed_overflowing_batch_sizes": lambda m: m(3, 5)(
        PackedSequence(r(4, 3), torch.tensor([2**62] * 4 + [4]))
    ),
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
    "input_long": lambda m: m(3, 5)(r(4, 3).long()),
    "hx_long": lambda m: m(3, 5)(r(4, 3), r(4, 5).long()),
    "hx_bool": lambda m: m(3, 5)(r(4, 3), r(4, 5).bool()),
    "input_long_relu_no_bias": lambda m: m(3, 5, bias=False, nonlinearity="relu")(r(4, 3).long()),
    "hx_meta": lambda m: m(3, 5)(r(4, 3), torch.empty(4, 5, device="meta")),
    "input_meta": lambda m: m(3, 5)(torch.empty(4, 3, device="meta"), r(4, 5)),
    "ok_all_meta": lambda m: m(3, 5, device="meta")(torch.empty(4, 3, device="meta")),
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


# Hand-made PackedSequences that torch runs: fastrnn returns torch's result (and gradients).
ODD_PACKED_THAT_RUN = {
    "trailing_zero": (torch.tensor([2, 2, 0]), 4),
    "zero_inside": (torch.tensor([2, 0, 1]), 3),
    "sum_short_of_rows": (torch.tensor([2, 2]), 5),
}


@pytest.mark.parametrize("name", sorted(ODD_PACKED_THAT_RUN))
def test_odd_packed_input_that_torch_runs_gives_torchs_result(name):
    batch_sizes, rows = ODD_PACKED_THAT_RUN[name]
    ref = torch.nn.RNN(3, 5)
    ours = fastrnn.RNN.from_torch(ref)
    x = r(rows, 3)
    results = []
    for module in (ref, ours):
        leaf = x.clone().requires_grad_()
        out, h_n = module(PackedSequence(leaf, batch_sizes))
        (out.data.sum() + h_n.sum()).backward()
        results.append((out.data, h_n, leaf.grad))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want)


def test_all_meta_module_infers_shapes_like_torch():
    for cls in (torch.nn.RNN, fastrnn.RNN):
        out, h_n = cls(4, 6, num_layers=2, bidirectional=True, device="meta")(torch.empty(5, 3, 4, device="meta"))
        assert out.device.type == "meta" and out.shape == (5, 3, 12) and h_n.shape == (4, 3, 6)


@pytest.mark.parametrize("argument", ["xw", "h0", "w_hh"])
def test_op_given_none_names_the_argument(use_backend, argument):
    use_backend("cpp")
    args = {"xw": r(2, 1, 3), "h0": r(1, 3), "w_hh": r(3, 3)}
    args[argument] = None
    with pytest.raises(RuntimeError, match=f"argument '{argument}' must be a Tensor"):
        torch.ops.fastrnn.rnn_fwd(args["xw"], args["h0"], args["w_hh"], None, False, 0)
    with pytest.raises(TypeError, match=f"argument '{argument}' must be Tensor"):
        fastrnn.rnn_recurrence(args["xw"], args["h0"], args["w_hh"])


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize(
    "batch_sizes,message",
    [
        ([2**62] * 4 + [4], "sum to more than|sum to"),  # int64 sum wraps around to 4
        ([1, 2, 2], "non-increasing"),
        ([2, 2, 0], "positive"),
        ([2, 2], "sum to"),
    ],
)
def test_op_rejects_bad_batch_sizes_at_once(use_backend, backend, batch_sizes, message):
    use_backend(backend)
    dtype = torch.float32 if backend == "cpp" else torch.float16  # float16 runs on the reference backend
    rows = 5 if batch_sizes != [2, 2] else 5
    with pytest.raises(RuntimeError, match=message):
        fastrnn.rnn_recurrence(r(rows, 3).to(dtype), r(batch_sizes[0] if batch_sizes[0] < 100 else 2, 3).to(dtype),
                               r(3, 3).to(dtype), torch.tensor(batch_sizes))


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("where", ["xw", "h0", "w_hh"])
def test_op_with_one_meta_tensor_raises_torchs_device_error(use_backend, backend, where):
    use_backend(backend)
    args = {"xw": r(2, 1, 3), "h0": r(1, 3), "w_hh": r(3, 3)}
    args[where] = torch.empty_like(args[where], device="meta")
    with pytest.raises(RuntimeError, match="Tensor on device cpu is not on the expected device meta!"):
        fastrnn.rnn_recurrence(args["xw"], args["h0"], args["w_hh"])
    if backend == "cpp":
        with pytest.raises(RuntimeError, match="Tensor on device cpu is not on the expected device meta!"):
            torch.ops.fastrnn.rnn_fwd(args["xw"], args["h0"], args["w_hh"], None, False, 0)
