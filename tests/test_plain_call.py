"""The one-C++-call entry of the layer classes (csrc/stack.cpp, ``fastrnn._C.stack_if_plain``): fastrnn.RNN's
(kinds 0 and 1) and GRU / LSTM's (3 and 4).

A plain eager call of ``fastrnn.RNN`` on CPU tensors (padded, batch-first or unbatched input, no dropout
to draw) runs whole in C++ (issue 12): without gradients as a plain stack, with gradients as one C++
autograd node for the whole stack whose backward runs on raw pointers (or, under ``create_graph``,
differentiates a recorded recomputation through the per-layer op). These tests check that it is taken where
it should be, equals torch.nn.RNN there in float64 (outputs and every gradient, across both projection
paths: the dot loop and the BLAS GEMM), and declines (returns None) every call that torch's checks must see.

GRU / LSTM's entry takes plain inference calls only (recording gradients and dropout in training run the
per-layer path); the tests that do not depend on that run for every layer class (tests/family.py).
"""

import re

import pytest
import torch
from torch.func import functional_call
from torch.nn.utils import parametrize

import fastrnn
from tests.family import GRU, LAYER_CLASSES, Spec, params
from tests.test_errors import _outcome

_stack_if_plain = pytest.importorskip("fastrnn._C").stack_if_plain


def plain(x, hx, weights, has_biases, num_layers, bidirectional, activation, batch_first, input_size, hidden_size):
    """fastrnn.RNN's call of the entry in torch.nn.RNN's argument order (kind = activation, no cx, no
    projection): ``(output, h_n)`` or None."""
    out = _stack_if_plain(activation, x, hx, None, weights, has_biases, num_layers, bidirectional, batch_first,
                          input_size, hidden_size, 0)
    return None if out is None else out[:2]

# Where each family's modules get their C++ entry (the name of its cached getter, the getter's module).
ENTRIES = {"rnn": ("_stack_if_plain",), "gru": ("_stack_if_plain",), "lstm": ("_stack_if_plain",)}


@pytest.fixture
def plain_calls(entry_calls):
    """Whether each of fastrnn.RNN's calls of the C++ entry returned a result."""
    return entry_calls("_stack_if_plain")


@pytest.fixture
def calls_of(entry_calls):
    """``calls_of(spec)``: whether each of the spec's module calls of its C++ entry returned a result."""
    return lambda spec: entry_calls(*ENTRIES[spec.recurrence])


def _state(spec: Spec, module, lead: tuple, dtype=torch.float64, generator=None):
    """A random state for ``module``: ``h`` ``[*lead, H_out]``, and ``c`` ``[*lead, H]`` for state arity 2."""
    h = torch.randn(*lead, module.proj_size or module.hidden_size, generator=generator, dtype=dtype)
    if spec.state_arity == 1:
        return h
    return h, torch.randn(*lead, module.hidden_size, generator=generator, dtype=dtype)


def _tensors(result):
    """The output and every final state of a layer call, flattened."""
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]


def _args(rnn, x, hx):
    return (x, hx, rnn._weights(), rnn.bias, rnn.num_layers, rnn.bidirectional,
            0 if rnn.nonlinearity == "tanh" else 1, rnn.batch_first, rnn.input_size, rnn.hidden_size)


# The RNN's entry switches from a dot loop to the BLAS at 32K multiply-adds: its grid crosses that; the gated
# entries' own switch is crossed by test_both_sides_of_the_fused_projection_switch_equal_torch, so they run the
# grid's smallest and largest hidden sizes only.
PROJECTION_SHAPES = [(5, 1, 8), (3, 2, 33), (50, 4, 64), (20, 64, 96), (7, 3, 300)]
PROJECTION_CASES = [
    pytest.param(spec, steps, batch, hidden, id=f"{spec.name}-{steps}-{batch}-{hidden}")
    for spec in LAYER_CLASSES
    for steps, batch, hidden in (PROJECTION_SHAPES if spec.name == "RNN" else PROJECTION_SHAPES[::4])
]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
@pytest.mark.parametrize("spec,steps,batch,hidden", PROJECTION_CASES)
def test_plain_call_equals_torch_across_projection_paths(calls_of, spec, steps, batch, hidden, bias, layout):
    """Projections of up to 32K multiply-adds run a dot loop, larger ones the BLAS (both with and without
    biases); the recurrence then runs in place in the output buffer."""
    taken = calls_of(spec)
    gen = torch.Generator().manual_seed(steps * 1000 + hidden)
    ref = spec.theirs(6, hidden, num_layers=2, bias=bias, batch_first=layout == "batch_first", dtype=torch.float64)
    ours = spec.ours.from_torch(ref)
    shape = {"time_major": (steps, batch, 6), "batch_first": (batch, steps, 6), "unbatched": (steps, 6)}[layout]
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    hx = _state(spec, ours, (2,) if layout == "unbatched" else (2, batch), generator=gen)
    with torch.no_grad():
        for args in ((x,), (x, hx)):
            got, want = _tensors(ours(*args)), _tensors(ref(*args))
            for g, w in zip(got, want):
                assert g.shape == w.shape
                torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    assert taken == [True, True]


@pytest.mark.parametrize("config", [dict(bidirectional=True), dict(nonlinearity="relu"),
                                    dict(num_layers=3, bidirectional=True, nonlinearity="relu")],
                         ids=["bi", "relu", "L3-bi-relu"])
def test_plain_call_equals_torch_for_each_configuration(plain_calls, config):
    gen = torch.Generator().manual_seed(5)
    ref = torch.nn.RNN(4, 9, dtype=torch.float64, **config)
    ours = fastrnn.RNN.from_torch(ref)
    x = torch.randn(6, 3, 4, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        for g, w in zip(ours(x), ref(x)):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    assert plain_calls == [True]


@pytest.mark.parametrize("spec", params(LAYER_CLASSES, by="name"))
def test_plain_call_takes_non_contiguous_tensors_and_float32(calls_of, spec):
    taken = calls_of(spec)
    ref = spec.theirs(3, 5, 2, bidirectional=True)
    ours = spec.ours.from_torch(ref)
    x = torch.randn(6, 8, 3)[:, ::2]
    hx = torch.randn(4, 5, 4).transpose(1, 2)
    if spec.state_arity == 2:
        hx = (hx, torch.randn(4, 5, 4).transpose(1, 2))
    with torch.no_grad():
        got, want = _tensors(ours(x, hx)), _tensors(ref(x, hx))
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert taken == [True]


@pytest.mark.parametrize("spec", params(LAYER_CLASSES, by="name"))
def test_weights_in_use_are_the_modules_own(calls_of, spec):
    """The call reads the weights the module would use: parametrized ones and functional_call's."""
    taken = calls_of(spec)

    class Halved(torch.nn.Module):
        def forward(self, w):
            return 0.5 * w

    ref = spec.theirs(3, 5, dtype=torch.float64)
    ours = spec.ours.from_torch(ref)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    params = {name: torch.zeros_like(p) for name, p in ours.named_parameters()}
    with torch.no_grad():
        assert torch.equal(functional_call(ours, params, (x,))[0], torch.zeros(4, 2, 5, dtype=torch.float64))
    parametrize.register_parametrization(ref, "weight_hh_l0", Halved())
    parametrize.register_parametrization(ours, "weight_hh_l0", Halved())
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-12, atol=1e-12)
    assert taken == [True, True]


def _declined_calls():
    rnn = fastrnn.RNN(3, 5, 2, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    hx = torch.zeros(2, 2, 5, dtype=torch.float64)
    weights = rnn._weights()
    base = _args(rnn, x, hx)

    def replace(i, value):
        return base[:i] + (value,) + base[i + 1:]

    return {
        "input_size": replace(0, torch.randn(4, 2, 4, dtype=torch.float64)),
        "4-D input": replace(0, x[None]),
        "empty sequence": replace(0, x[:0]),
        "empty batch": replace(0, x[:, :0]),
        "hx dims": replace(1, hx[0]),
        "hx layers": replace(1, hx[:1]),
        "hx batch": replace(1, hx[:, :1]),
        "hx dtype": replace(1, hx.float()),
        "input dtype": replace(0, x.float()),
        "integer input": replace(0, x.long()),
        "half input": replace(0, x.half()),
        "meta input": replace(0, x.to("meta")),
        "weight count": replace(2, weights[:-1]),
        "weight shape": replace(2, [weights[0][:, :2]] + weights[1:]),
        "weight dtype": replace(2, [weights[0].float()] + weights[1:]),
        "hidden_size": base[:9] + (6,),
        "activation": replace(6, 2),
    }


@pytest.mark.parametrize("name", list(_declined_calls()))
def test_entry_declines_what_torch_must_check(name):
    with torch.no_grad():
        assert plain(*_declined_calls()[name]) is None


def test_entry_records_gradients_only_when_something_needs_them():
    rnn = fastrnn.RNN(3, 5, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    output, h_n = plain(*_args(rnn, x, None))
    assert output.grad_fn is not None and h_n.grad_fn is not None
    with torch.no_grad():
        assert plain(*_args(rnn, x, None))[0].grad_fn is None
    rnn.requires_grad_(False)
    assert plain(*_args(rnn, x, None))[0].grad_fn is None
    x.requires_grad_(True)
    assert plain(*_args(rnn, x, None))[0].grad_fn is not None


@pytest.mark.parametrize("spec", params(LAYER_CLASSES, by="name"))
def test_module_errors_stay_torchs_on_declined_calls(calls_of, spec):
    taken = calls_of(spec)
    ours, ref = spec.ours(3, 5), spec.theirs(3, 5)
    with torch.no_grad():
        for bad in (torch.randn(4, 2, 4), torch.randn(4, 2, 3, 1)):
            with pytest.raises(Exception) as want:
                ref(bad)
            with pytest.raises(type(want.value), match=re.escape(str(want.value))):
                ours(bad)
    assert taken == [False, False]


def test_dropout_in_training_does_not_take_the_entry(plain_calls):
    ours = fastrnn.RNN(3, 5, 2, dropout=0.5)
    x = torch.randn(4, 2, 3)
    ours(x)[0].sum().backward()  # training-mode dropout: the per-layer path draws the masks
    ours.eval()
    ours(x)[0].sum().backward()
    assert plain_calls == [True]


WANTED = ["all", "input", "hx", "weights", "bias_hh_l0"]


def _training_results(module, x, hx, wanted):
    """Outputs and the gradients of a weighted sum of both outputs with respect to ``wanted``."""
    x = x.clone().requires_grad_(wanted in ("all", "input"))
    if hx is not None:
        hx = hx.clone().requires_grad_(wanted in ("all", "hx"))
    params = dict(module.named_parameters())
    for name, p in params.items():
        p.requires_grad_(wanted in ("all", "weights") or name == wanted)
    output, h_n = module(x, hx) if hx is not None else module(x)
    loss = (output * torch.linspace(-1, 1, output.numel(), dtype=output.dtype).reshape(output.shape)).sum()
    loss = loss + (h_n * torch.linspace(1, 2, h_n.numel(), dtype=h_n.dtype).reshape(h_n.shape)).sum()
    leaves = {"input": x, "hx": hx, **params}
    names = [n for n, t in leaves.items() if t is not None and t.requires_grad]
    grads = torch.autograd.grad(loss, [leaves[n] for n in names])
    return {"output": output.detach(), "h_n": h_n.detach(), **{f"grad_{n}": g for n, g in zip(names, grads)}}


CONFIGS = {"L1": dict(), "L2-bi-relu": dict(num_layers=2, bidirectional=True, nonlinearity="relu"),
           "L3-nobias": dict(num_layers=3, bias=False), "bi-batch_first": dict(bidirectional=True, batch_first=True)}
TRAINING_CASES = [
    pytest.param(wanted, config, layout, with_hx, id=f"{wanted}-{name}-{layout}-{'hx' if with_hx else 'no_hx'}")
    for wanted in WANTED
    for name, config in CONFIGS.items()
    for layout in ("batched", "unbatched")
    for with_hx in (True, False)
    if not (wanted == "hx" and not with_hx) and not (wanted == "bias_hh_l0" and config.get("bias") is False)
]


@pytest.mark.parametrize("wanted,config,layout,with_hx", TRAINING_CASES)
def test_training_call_gradients_equal_torchs(plain_calls, wanted, config, layout, with_hx):
    gen = torch.Generator().manual_seed(11)
    ref = torch.nn.RNN(4, 6, dtype=torch.float64, **config)
    ours = fastrnn.RNN.from_torch(ref)
    layers = ref.num_layers * (2 if ref.bidirectional else 1)
    if layout == "batched":
        x = torch.randn(*((3, 5) if ref.batch_first else (5, 3)), 4, generator=gen, dtype=torch.float64)
        hx = torch.randn(layers, 3, 6, generator=gen, dtype=torch.float64)
    else:
        x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
        hx = torch.randn(layers, 6, generator=gen, dtype=torch.float64)
    hx = hx if with_hx else None
    want, got = _training_results(ref, x, hx, wanted), _training_results(ours, x, hx, wanted)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-11, atol=1e-11, msg=key)
    assert plain_calls == [True]


@pytest.mark.parametrize("steps,batch,hidden", [(5, 1, 8), (50, 4, 64), (20, 64, 96), (3, 2, 300)])
def test_training_call_across_kernel_paths_float64_and_float32(steps, batch, hidden):
    from fastrnn.testing import parity_failures

    gen = torch.Generator().manual_seed(hidden)
    ref = torch.nn.RNN(6, hidden, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours = fastrnn.RNN.from_torch(ref)
    x = torch.randn(steps, batch, 6, generator=gen, dtype=torch.float64)
    hx = torch.randn(4, batch, hidden, generator=gen, dtype=torch.float64)
    want, got = _training_results(ref, x, hx, "all"), _training_results(ours, x, hx, "all")
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-10, msg=key)
    got32 = _training_results(ours.float(), x.float(), hx.float(), "all")
    want32 = _training_results(ref.float(), x.float(), hx.float(), "all")
    assert parity_failures(got32, want32, want) == []


def test_training_call_takes_non_contiguous_weights_and_state(plain_calls):
    ref = torch.nn.RNN(3, 5, 2, dtype=torch.float64)
    ours = fastrnn.RNN.from_torch(ref)
    for module in (ref, ours):
        module.weight_hh_l1 = torch.nn.Parameter(module.weight_hh_l1.detach().t().contiguous().t())
    assert not ours.weight_hh_l1.is_contiguous()
    x = torch.randn(6, 8, 3, dtype=torch.float64)[:, ::2]
    hx = torch.randn(2, 5, 4, dtype=torch.float64).transpose(1, 2)
    want, got = _training_results(ref, x, hx, "all"), _training_results(ours, x, hx, "all")
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-11, atol=1e-11, msg=key)
    assert plain_calls == [True]


@pytest.mark.parametrize("config", [dict(), dict(num_layers=2, bidirectional=True)], ids=["L1", "L2-bi"])
def test_second_order_gradients_equal_torchs(plain_calls, config):
    """create_graph: the node differentiates a recorded recomputation, so grad-of-grad is torch's."""
    gen = torch.Generator().manual_seed(2)
    ref = torch.nn.RNN(3, 4, dtype=torch.float64, **config)
    ours = fastrnn.RNN.from_torch(ref)
    x = torch.randn(5, 2, 3, generator=gen, dtype=torch.float64)
    results = []
    for module in (ref, ours):
        xg = x.clone().requires_grad_(True)
        output, h_n = module(xg)
        params = list(module.parameters())
        first = torch.autograd.grad(output.pow(2).sum() + h_n.sum(), [xg, *params], create_graph=True)
        penalty = sum(g.pow(2).sum() for g in first)
        results.append(torch.autograd.grad(penalty, [xg, *params]))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert plain_calls == [True]


def test_output_edited_in_place_and_only_one_output_used(plain_calls):
    ref = torch.nn.RNN(3, 4, dtype=torch.float64)
    ours = fastrnn.RNN.from_torch(ref)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    grads = []
    for module in (ref, ours):
        module.zero_grad()
        output, h_n = module(x)
        output.mul_(2)  # torch's output is its own tensor: editing it before backward is fine
        output.sum().backward()
        module(x)[1].sum().backward()  # h_n alone
        grads.append([p.grad.clone() for p in module.parameters()])
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)
    assert plain_calls == [True, True]


def test_saved_tensors_are_unpacked_once_and_checkpointing_works(plain_calls):
    """Non-reentrant checkpointing allows one unpack of each saved tensor per backward."""
    ours = fastrnn.RNN(3, 4, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    unpacked, ids = [], iter(range(10**6))

    def pack(t):
        return next(ids), t

    def unpack(packed):
        unpacked.append(packed[0])
        return packed[1]

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        output, _ = ours(x)
    output.sum().backward()
    assert len(unpacked) == len(set(unpacked)) > 0
    want = x.grad.clone()
    x.grad = None
    out_ckpt = torch.utils.checkpoint.checkpoint(lambda t: ours(t)[0], x, use_reentrant=False)
    out_ckpt.sum().backward()
    torch.testing.assert_close(x.grad, want)


def test_training_through_a_parametrized_weight(plain_calls):
    class Halved(torch.nn.Module):
        def forward(self, w):
            return 0.5 * w

    ref = torch.nn.RNN(3, 5, 2, dtype=torch.float64)
    ours = fastrnn.RNN.from_torch(ref)
    for module in (ref, ours):
        parametrize.register_parametrization(module, "weight_hh_l1", Halved())
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    want, got = _training_results(ref, x, None, "all"), _training_results(ours, x, None, "all")
    assert got.keys() == want.keys() and "grad_parametrizations.weight_hh_l1.original" in got
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-11, atol=1e-11, msg=key)
    assert plain_calls == [True]


INFERENCE_CONFIGS = {
    "L1": {}, "L2-bi": dict(num_layers=2, bidirectional=True), "batch_first": dict(batch_first=True),
    "no_bias-L3": dict(bias=False, num_layers=3), "proj": dict(proj_size=3, bidirectional=True),
}
INFERENCE_CASES = [
    pytest.param(spec, config, layout, with_state, dtype,
                 id=f"{spec.name}-{cid}-{layout}-{'hx' if with_state else 'no_hx'}-{str(dtype)[6:]}")
    for spec in LAYER_CLASSES
    for cid, config in INFERENCE_CONFIGS.items()
    if not ("proj_size" in config and spec.state_arity == 1)
    for layout in ("batched", "unbatched")
    for with_state in (False, True)
    for dtype in (torch.float32, torch.float64)
]


@pytest.mark.parametrize("spec,config,layout,with_state,dtype", INFERENCE_CASES)
def test_plain_inference_call_is_one_cpp_call_and_equals_torch(calls_of, spec, config, layout, with_state, dtype):
    plain_calls = calls_of(spec)
    torch.manual_seed(0)
    theirs = spec.theirs(4, 6, dtype=dtype, **config)
    ours = spec.ours.from_torch(theirs)
    if layout == "batched":
        x = torch.randn(*((3, 5) if ours.batch_first else (5, 3)), 4, dtype=dtype)
    else:
        x = torch.randn(5, 4, dtype=dtype)
    layers = ours.num_layers * (2 if ours.bidirectional else 1)
    args = (x, _state(spec, ours, (layers, 3) if layout == "batched" else (layers,), dtype)) if with_state else (x,)
    with torch.no_grad():
        got, want = ours(*args), theirs(*args)
    assert plain_calls == [True]
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else {}
    torch.testing.assert_close(got, want, **tol)


def test_gated_dropout_training_calls_are_not_asked(calls_of):
    """GRU / LSTM's entry takes recording calls (one C++ node) and eval-mode calls of a module with dropout; a
    training-mode call with dropout never reaches it."""
    plain_calls = calls_of(GRU)
    gru = fastrnn.GRU(4, 6, num_layers=2, dropout=0.5).eval()
    x = torch.randn(5, 3, 4)
    gru(x)[0].sum().backward()  # parameters require grad: the training path
    assert plain_calls == [True]
    gru.train()(x)[0].sum().backward()  # dropout in training: not even asked
    with torch.no_grad():
        gru.train()(x)
        gru.eval()(x)
    assert plain_calls == [True, True]


@pytest.mark.parametrize("bad", ["feature_size", "hx_batch", "hx_layers", "hx_dtype", "input_4d", "empty_batch"])
@pytest.mark.parametrize("spec", params(LAYER_CLASSES, by="name"))
def test_malformed_calls_are_declined_with_torchs_error(calls_of, spec, bad):
    plain_calls = calls_of(spec)

    def call(cls):
        torch.manual_seed(0)
        module = cls(4, 6)
        x = torch.randn(5, 3, 5 if bad == "feature_size" else 4)
        if bad == "input_4d":
            x = x.unsqueeze(0)
        if bad == "empty_batch":
            x = x[:, :0]
        h = torch.randn(2 if bad == "hx_layers" else 1, 2 if bad == "hx_batch" else 3, 6,
                        dtype=torch.float64 if bad == "hx_dtype" else torch.float32)
        with torch.no_grad():
            module(x, (h, h.clone()) if spec.state_arity == 2 else h)

    expected = _outcome(lambda: call(spec.theirs))
    assert expected[0] is not None
    assert _outcome(lambda: call(spec.ours)) == expected
    assert True not in plain_calls


@pytest.mark.parametrize("hidden,batch", [(1024, 4), (1024, 64), (64, 8)],
                         ids=["large-W_ih-projected-first", "large-W_ih-many-rows-projected-first", "fused-per-step"])
@pytest.mark.parametrize("spec", params(LAYER_CLASSES, by="name"))
def test_both_sides_of_the_fused_projection_switch_equal_torch(spec, hidden, batch):
    """The gated layer ops project all steps in one GEMM first where W_ih is large (H = 1024: 16 MB, whatever the
    rows a thread), and each step in the step kernel where it is small and both threads step (B >= 4; on AVX-512
    CPUs: csrc/recurrence.cpp, fuse_projection)."""
    torch.manual_seed(0)
    theirs = spec.theirs(hidden, hidden, dtype=torch.float64)
    ours = spec.ours.from_torch(theirs)
    x = torch.randn(2, batch, hidden, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-10)
