"""A plain eager GRU / LSTM inference call runs as one C++ call (``fastrnn._C.gated_forward_if_plain``,
csrc/gated_stack.cpp), as the RNN's does: outputs equal torch's on every layout it takes, and every call it
must not take (recording gradients, dropout in training, malformed arguments) is declined and runs the usual
path, with torch's result or torch's error."""

import pytest
import torch

import fastrnn
from fastrnn import gated_modules
from tests.test_errors import _outcome


@pytest.fixture
def plain_calls(entry_calls):
    """Per call of the C++ entry, whether it took the call."""
    return entry_calls("_gated_forward_if_plain", gated_modules)


CONFIGS = {
    "L1": {}, "L2-bi": dict(num_layers=2, bidirectional=True), "batch_first": dict(batch_first=True),
    "no_bias-L3": dict(bias=False, num_layers=3), "proj": dict(proj_size=3, bidirectional=True),
}
CASES = [
    pytest.param(name, config, layout, with_state, dtype,
                 id=f"{name}-{cid}-{layout}-{'hx' if with_state else 'no_hx'}-{str(dtype)[6:]}")
    for name in ("GRU", "LSTM")
    for cid, config in CONFIGS.items()
    if not (name == "GRU" and "proj_size" in config)
    for layout in ("batched", "unbatched")
    for with_state in (False, True)
    for dtype in (torch.float32, torch.float64)
]


def _state(name, module, batch, dtype, layout):
    layers = module.num_layers * (2 if module.bidirectional else 1)
    out_size = module.proj_size or module.hidden_size if name == "LSTM" else module.hidden_size
    lead = (layers, batch) if layout == "batched" else (layers,)
    h = torch.randn(*lead, out_size, dtype=dtype)
    return (h, torch.randn(*lead, module.hidden_size, dtype=dtype)) if name == "LSTM" else h


@pytest.mark.parametrize("name,config,layout,with_state,dtype", CASES)
def test_plain_inference_call_is_one_cpp_call_and_equals_torch(plain_calls, name, config, layout, with_state,
                                                               dtype):
    torch.manual_seed(0)
    theirs = getattr(torch.nn, name)(4, 6, dtype=dtype, **config)
    ours = getattr(fastrnn, name).from_torch(theirs)
    if layout == "batched":
        x = torch.randn(*((3, 5) if ours.batch_first else (5, 3)), 4, dtype=dtype)
    else:
        x = torch.randn(5, 4, dtype=dtype)
    args = (x, _state(name, ours, 3, dtype, layout)) if with_state else (x,)
    with torch.no_grad():
        got, want = ours(*args), theirs(*args)
    assert plain_calls == [True]
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else {}
    torch.testing.assert_close(got, want, **tol)


def test_recording_and_dropout_calls_are_declined(plain_calls):
    gru = fastrnn.GRU(4, 6, num_layers=2, dropout=0.5).eval()
    x = torch.randn(5, 3, 4)
    gru(x)[0].sum().backward()  # parameters require grad: the training path
    assert plain_calls == [False]
    with torch.no_grad():
        gru.train()(x)  # dropout in training: not even asked
        gru.eval()(x)
    assert plain_calls == [False, True]


@pytest.mark.parametrize("name", ["GRU", "LSTM"])
@pytest.mark.parametrize("bad", ["feature_size", "hx_batch", "hx_layers", "hx_dtype", "input_4d", "empty_batch"])
def test_malformed_calls_are_declined_with_torchs_error(plain_calls, name, bad):
    def call(module_type):
        torch.manual_seed(0)
        module = getattr(module_type, name)(4, 6)
        x = torch.randn(5, 3, 5 if bad == "feature_size" else 4)
        if bad == "input_4d":
            x = x.unsqueeze(0)
        if bad == "empty_batch":
            x = x[:, :0]
        h = torch.randn(2 if bad == "hx_layers" else 1, 2 if bad == "hx_batch" else 3, 6,
                        dtype=torch.float64 if bad == "hx_dtype" else torch.float32)
        with torch.no_grad():
            module(x, (h, h.clone()) if name == "LSTM" else h)

    expected = _outcome(lambda: call(torch.nn))
    assert expected[0] is not None
    assert _outcome(lambda: call(fastrnn)) == expected
    assert True not in plain_calls


@pytest.mark.parametrize("name", ["GRU", "LSTM"])
@pytest.mark.parametrize("batch", [4, 64], ids=["streamed-W_ih-projected-first", "fused-per-step"])
def test_both_sides_of_the_fused_projection_switch_equal_torch(name, batch):
    """At H = 1024 W_ih (16 MB) leaves the cache: with few rows a thread the layer ops project all steps in
    one GEMM first, with many they project each step in the step kernel (csrc/gated_cpu.cpp, layer_input)."""
    torch.manual_seed(0)
    theirs = getattr(torch.nn, name)(1024, 1024, dtype=torch.float64)
    ours = getattr(fastrnn, name).from_torch(theirs)
    x = torch.randn(2, batch, 1024, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-10)
