"""Every bad call raises the same exception type with the same message as torch's twin, for every class of the
family (tests/family.py): hand-made calls, PyTorch's own error-input lists, and the recurrence op's checks."""

import warnings

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import fastrnn
from tests.family import CELL_CLASSES, LAYER_CLASSES, Spec, params


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


# Every layer class; proj_size is an error for all but the LSTM.
LAYER_CALLS = {
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

# For the classes that take a nonlinearity.
NONLINEARITY_CALLS = {
    "bad_nonlinearity": lambda m: m(3, 5, nonlinearity="sigmoid"),
    "bad_nonlinearity_positional": lambda m: m(3, 5, 1, "gelu"),
}
PAIRED_STATE_CALLS = {
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
    "hx_3d": lambda m: m(3, 5)(r(4, 3), r(1, 4, 5)),
    "wrong_feature_size": lambda m: m(3, 5)(r(4, 4)),
    "hx_wrong_batch": lambda m: m(3, 5)(r(4, 3), r(2, 5)),
    "hx_wrong_hidden": lambda m: m(3, 5)(r(4, 3), r(4, 6)),
    "unbatched_hx_wrong_hidden": lambda m: m(3, 5)(r(3), r(2, 5)),
    "input_dtype_mismatch": lambda m: m(3, 5)(r(4, 3, dtype=torch.float64)),
    "hx_dtype_mismatch": lambda m: m(3, 5)(r(4, 3), r(4, 5, dtype=torch.float64)),
    "input_long": lambda m: m(3, 5)(r(4, 3).long()),
    "hx_long": lambda m: m(3, 5)(r(4, 3), r(4, 5).long()),
    "hx_bool": lambda m: m(3, 5)(r(4, 3), r(4, 5).bool()),
    "hx_meta": lambda m: m(3, 5)(r(4, 3), torch.empty(4, 5, device="meta")),
    "input_meta": lambda m: m(3, 5)(torch.empty(4, 3, device="meta"), r(4, 5)),
    "ok_all_meta": lambda m: m(3, 5, device="meta")(torch.empty(4, 3, device="meta")),
    "hidden_float": lambda m: m(3, 5.0),
    "zero_batch": lambda m: m(3, 5)(r(0, 3)),
}
CELL_NONLINEARITY_CALLS = {
    "bad_nonlinearity": lambda m: m(3, 5, nonlinearity="foo")(r(4, 3)),
    "input_long_relu_no_bias": lambda m: m(3, 5, bias=False, nonlinearity="relu")(r(4, 3).long()),
}
CELL_PAIRED_STATE_CALLS = {
    "hx_3d_in_state": lambda m: m(3, 5)(r(4, 3), (r(1, 4, 5), r(4, 5))),
    "cx_wrong_batch": lambda m: m(3, 5)(r(4, 3), (r(4, 5), r(2, 5))),
    "cx_wrong_hidden": lambda m: m(3, 5)(r(4, 3), (r(4, 5), r(4, 6))),
    "cx_dtype_mismatch": lambda m: m(3, 5)(r(4, 3), (r(4, 5), r(4, 5, dtype=torch.float64))),
}


def _takes_nonlinearity(spec: Spec) -> bool:
    return spec.recurrence == "rnn"


def _bad_calls(specs, shared: dict, nonlinearity: dict, paired_state: dict) -> list:
    """(spec, call) params: the shared calls for every spec, the others where they apply."""
    cases = []
    for spec in specs:
        calls = {**shared}
        calls.update(nonlinearity if _takes_nonlinearity(spec) else {})
        calls.update(paired_state if spec.state_arity == 2 else {})
        cases += [pytest.param(spec, calls[name], id=f"{spec.name}-{name}") for name in sorted(calls)]
    return cases


@pytest.mark.parametrize("spec,call", _bad_calls(LAYER_CLASSES, LAYER_CALLS, NONLINEARITY_CALLS, PAIRED_STATE_CALLS))
def test_bad_call_matches_torch(spec, call):
    expected = _outcome(lambda: call(spec.theirs))
    assert _outcome(lambda: call(spec.ours)) == expected


@pytest.mark.parametrize("spec,call", _bad_calls(CELL_CLASSES, CELL_CALLS, CELL_NONLINEARITY_CALLS,
                                                 CELL_PAIRED_STATE_CALLS))
def test_cell_bad_call_matches_torch(spec, call):
    expected = _outcome(lambda: call(spec.theirs))
    assert _outcome(lambda: call(spec.ours)) == expected


# torch's ModuleInfo error lists per class (torch's LSTM uses the RNN / GRU list).
TORCH_ERROR_LISTS = {
    "RNN": "module_error_inputs_torch_nn_RNN_GRU",
    "GRU": "module_error_inputs_torch_nn_RNN_GRU",
    "LSTM": "module_error_inputs_torch_nn_RNN_GRU",
    "RNNCell": "module_error_inputs_torch_nn_RNN_GRU_Cell",
    "GRUCell": "module_error_inputs_torch_nn_RNN_GRU_Cell",
    "LSTMCell": "module_error_inputs_torch_nn_LSTMCell",
}


def _torch_error_samples():
    try:
        from torch.testing._internal import common_modules as cm
    except ImportError:  # torch's test helpers need expecttest, which the test set-up installs
        return []
    samples = []
    for spec in LAYER_CLASSES + CELL_CLASSES:
        make = getattr(cm, TORCH_ERROR_LISTS[spec.name])
        for i, sample in enumerate(make(None, "cpu", torch.float32, False, True)):
            ctor = sample.module_error_input.constructor_input
            if spec.name == "GRUCell" and len(ctor.args) > 2:  # RNNCell's nonlinearity argument
                continue
            samples.append(pytest.param(spec, sample, id=f"{spec.name}-{i}"))
    return samples


TORCH_ERROR_SAMPLES = _torch_error_samples()


def test_pytorch_error_lists_are_present():
    pytest.importorskip("expecttest")
    per_class = {spec.name: 0 for spec in LAYER_CLASSES + CELL_CLASSES}
    for param in TORCH_ERROR_SAMPLES:
        per_class[param.values[0].name] += 1
    assert per_class["RNN"] >= 10
    assert sum(n for name, n in per_class.items() if name not in ("RNN", "RNNCell")) >= 12
    assert all(per_class.values()), per_class


@pytest.mark.parametrize("spec,sample", TORCH_ERROR_SAMPLES)
def test_pytorch_listed_error_inputs(spec, sample):
    """The bad calls PyTorch's own module tests list for each class, run against both."""
    ctor = sample.module_error_input.constructor_input
    fwd = sample.module_error_input.forward_input

    def run(cls):
        module = cls(*ctor.args, **ctor.kwargs)
        if fwd is not None:
            module(*fwd.args, **fwd.kwargs)

    expected = _outcome(lambda: run(spec.theirs))
    assert expected[0] is sample.error_type
    assert _outcome(lambda: run(spec.ours)) == expected


# Hand-made PackedSequences that torch's RNN runs: fastrnn returns torch's result (and gradients), or torch's error
# where torch's class raises.
ODD_PACKED_THAT_RUN = {
    "trailing_zero": (torch.tensor([2, 2, 0]), 4),
    "zero_inside": (torch.tensor([2, 0, 1]), 3),
    "sum_short_of_rows": (torch.tensor([2, 2]), 5),
}


@pytest.mark.parametrize("name", sorted(ODD_PACKED_THAT_RUN))
@pytest.mark.parametrize("spec", params(LAYER_CLASSES, by="name"))
def test_odd_packed_input_gives_torchs_result_or_error(spec, name):
    batch_sizes, rows = ODD_PACKED_THAT_RUN[name]
    ref = spec.theirs(3, 5)
    ours = spec.ours.from_torch(ref)
    x = r(rows, 3)

    def run(module):
        leaf = x.clone().requires_grad_()
        out, state = module(PackedSequence(leaf, batch_sizes))
        finals = state if isinstance(state, tuple) else (state,)
        (out.data.sum() + sum(s.sum() for s in finals)).backward()
        return out.data, *finals, leaf.grad

    expected = _outcome(lambda: run(ref))
    if expected[0] is not None:  # torch's LSTM reshapes its state and rejects rows short of the batch sizes' sum
        assert _outcome(lambda: run(ours)) == expected
        return
    results = [run(module) for module in (ref, ours)]
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("spec", params(LAYER_CLASSES, by="name"))
def test_all_meta_module_infers_shapes_like_torch(spec):
    for cls in (spec.theirs, spec.ours):
        out, state = cls(4, 6, num_layers=2, bidirectional=True, device="meta")(torch.empty(5, 3, 4, device="meta"))
        finals = state if isinstance(state, tuple) else (state,)
        assert out.device.type == "meta" and out.shape == (5, 3, 12)
        assert all(s.device.type == "meta" and s.shape == (4, 3, 6) for s in finals)


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
