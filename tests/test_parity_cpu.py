"""Every member of the family (tests/family.py) against its torch twin on the CPU, over the configuration matrix.

float64: equal to torch within a few roundings. float32: err(fastrnn) <= 2 * err(torch) + floor, both
measured against float64 torch (the float64 references are checked in test_reference.py and test_op.py).
"""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from fastrnn.testing import max_error, outputs_and_grads, parity_failures
from tests.cases import INPUT_KINDS
from tests.family import CELLS, LAYER_CLASSES, LAYERS, Spec, make_family_input, module_pair, params


def _config(layers: int, bi: bool, bias: bool):
    return pytest.param(dict(num_layers=layers, bidirectional=bi, bias=bias),
                        id=f"L{layers}-{'bi' if bi else 'uni'}-{'bias' if bias else 'nobias'}")


# The RNN's steps are the cheapest: it runs the whole matrix; the other members a sample that still crosses
# layers, directions and bias.
FULL_MATRIX = [_config(layers, bi, bias) for layers in (1, 2, 3) for bi in (False, True) for bias in (True, False)]
SAMPLED = [_config(*c) for c in [(1, False, True), (1, True, False), (2, True, True), (3, False, False)]]


def _configs(spec: Spec) -> list:
    return FULL_MATRIX if spec.name == "RNN" else SAMPLED


MATRIX = [
    pytest.param(spec, config.values[0], kind, id=f"{spec.id}-{config.id}-{kind}")
    for spec in LAYERS
    for config in _configs(spec)
    for kind in INPUT_KINDS
]


def _assert_float64_equal(got, oracle):
    assert got.keys() == oracle.keys()
    for key in oracle:
        scale = max(1.0, oracle[key].abs().max().item())
        assert max_error(got[key], oracle[key]) < 1e-10 * scale, key


@pytest.mark.parametrize("spec,config,kind", MATRIX)
def test_module_matches_torch(use_backend, spec, config, kind):
    use_backend("cpp")
    gen = torch.Generator().manual_seed(hash((spec.id, kind, str(config))) % 2**31)
    extra, x, hx = make_family_input(spec, kind, config["num_layers"], config["bidirectional"], gen)
    theirs, ours = module_pair(spec, config, extra)
    oracle = outputs_and_grads(theirs, x, hx)
    _assert_float64_equal(outputs_and_grads(ours, x, hx), oracle)
    torch32 = outputs_and_grads(theirs, x, hx, dtype=torch.float32)
    got32 = outputs_and_grads(ours, x, hx, dtype=torch.float32)
    assert got32["output"].dtype == torch.float32
    assert parity_failures(got32, torch32, oracle) == []


def _to(state, dtype):
    if state is None:
        return None
    return tuple(s.to(dtype) for s in state) if isinstance(state, tuple) else state.to(dtype)


def _forward_only(module, x, hx):
    with torch.no_grad():
        out, state = module(x, hx) if hx is not None else module(x)
    finals = state if isinstance(state, tuple) else (state,)
    return {"output": out.data if isinstance(out, PackedSequence) else out, **dict(zip(("h_n", "c_n"), finals))}


@pytest.mark.parametrize("spec,config,kind", MATRIX)
def test_inference_stack_matches_torch(use_backend, spec, config, kind):
    """Calls that record no autograd run the whole stack in one C++ call (csrc/stack.cpp)."""
    use_backend("cpp")
    gen = torch.Generator().manual_seed(hash(("inference", spec.id, kind, str(config))) % 2**31)
    extra, x, hx = make_family_input(spec, kind, config["num_layers"], config["bidirectional"], gen)
    theirs, ours = module_pair(spec, config, extra)
    oracle = _forward_only(theirs, x, hx)
    got = _forward_only(ours, x, hx)
    assert got.keys() == oracle.keys()
    for key in oracle:
        assert max_error(got[key], oracle[key]) < 1e-10 * max(1.0, oracle[key].abs().max().item()), key
    to32 = (lambda t: t._replace(data=t.data.float())) if kind.startswith("packed") else (lambda t: t.float())
    torch32 = _forward_only(theirs.float(), to32(x), _to(hx, torch.float32))
    got32 = _forward_only(ours.float(), to32(x), _to(hx, torch.float32))
    assert parity_failures(got32, torch32, oracle) == []


@pytest.mark.parametrize("spec", params(LAYERS))
def test_reference_backend_matches_torch(use_backend, spec):
    use_backend("reference")
    gen = torch.Generator().manual_seed(1)
    extra, x, hx = make_family_input(spec, "packed_unsorted", 2, True, gen)
    theirs, ours = module_pair(spec, dict(num_layers=2, bidirectional=True), extra)
    _assert_float64_equal(outputs_and_grads(ours, x, hx), outputs_and_grads(theirs, x, hx))


# (hidden sizes, batches, steps) on both sides of each C++ kernel's switches: the RNN's small-loop / BLAS switch
# and vector blocks, the gated cells' register-loop / BLAS switch.
KERNEL_PATHS = {"rnn": ([1, 16, 33, 64, 96, 128, 300], [1, 3, 64], 5), "gated": ([1, 33, 130], [1, 5, 48], 4)}
KERNEL_PATH_CASES = [
    pytest.param(spec, hidden, batch, steps, id=f"{spec.id}-{batch}-{hidden}")
    for spec in LAYERS
    if spec.extra.get("nonlinearity") is None
    for hiddens, batches, steps in [KERNEL_PATHS["rnn" if spec.name == "RNN" else "gated"]]
    for hidden in hiddens
    for batch in batches
]


@pytest.mark.parametrize("spec,hidden,batch,steps", KERNEL_PATH_CASES)
def test_cpp_across_kernel_paths(use_backend, spec, hidden, batch, steps):
    """Hidden sizes and batches on both sides of the small-loop / BLAS switch and the vector blocks."""
    use_backend("cpp")
    gen = torch.Generator().manual_seed(hidden * 1000 + batch)
    extra = {"proj_size": hidden // 2} if "proj_size" in spec.extra and hidden > 1 else {}
    theirs = spec.theirs(8, hidden, bidirectional=True, dtype=torch.float64, **extra)
    ours = spec.ours.from_torch(theirs)
    x = torch.randn(steps, batch, 8, generator=gen, dtype=torch.float64)
    oracle = outputs_and_grads(theirs, x)
    _assert_float64_equal(outputs_and_grads(ours, x), oracle)
    torch32 = outputs_and_grads(theirs, x, dtype=torch.float32)
    assert parity_failures(outputs_and_grads(ours, x, dtype=torch.float32), torch32, oracle) == []


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("spec", params(CELLS))
def test_cell_matches_torch(use_backend, spec, backend, batched, with_hx, bias):
    use_backend(backend)
    gen = torch.Generator().manual_seed(3)
    theirs = spec.theirs(5, 7, bias, dtype=torch.float64, **spec.extra)
    ours = spec.ours.from_torch(theirs)
    shape = (4, 5) if batched else (5,)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    hx = None
    if with_hx:
        hx = torch.randn(*shape[:-1], 7, generator=gen, dtype=torch.float64)
        if spec.state_arity == 2:
            hx = (hx, torch.randn(*shape[:-1], 7, generator=gen, dtype=torch.float64))
    oracle = outputs_and_grads(theirs, x, hx)
    got = outputs_and_grads(ours, x, hx)
    assert got.keys() == oracle.keys()
    for key in oracle:
        assert max_error(got[key], oracle[key]) < 1e-12, key
    torch32 = outputs_and_grads(theirs, x, hx, dtype=torch.float32)
    assert parity_failures(outputs_and_grads(ours, x, hx, dtype=torch.float32), torch32, oracle) == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("spec", params(LAYER_CLASSES))
def test_half_precision_on_cpu_matches_torch(spec, dtype):
    gen = torch.Generator().manual_seed(4)
    theirs = spec.theirs(5, 7, 2, dtype=torch.float64)
    ours = spec.ours.from_torch(theirs)
    x = torch.randn(6, 3, 5, generator=gen, dtype=torch.float64)
    oracle = outputs_and_grads(theirs, x)
    torch_low = outputs_and_grads(theirs, x, dtype=dtype)
    got_low = outputs_and_grads(ours, x, dtype=dtype)
    assert got_low["output"].dtype == dtype
    assert parity_failures(got_low, torch_low, oracle, floor_eps=4.0) == []


@pytest.mark.parametrize("spec", params(LAYERS))
def test_dropout_between_layers_matches_torch_with_the_same_seed(spec):
    theirs = spec.theirs(5, 7, 3, dropout=0.5, dtype=torch.float64, **spec.extra)
    ours = spec.ours.from_torch(theirs)
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    torch.manual_seed(11)
    want = theirs(x)[0]
    torch.manual_seed(11)
    got = ours(x)[0]
    torch.testing.assert_close(got, want)
    assert not torch.equal(ours.eval()(x)[0], got)


@pytest.mark.parametrize("spec", params(LAYERS))
def test_state_dict_init_and_round_trip(spec):
    torch.manual_seed(5)
    ours = spec.ours(5, 7, 2, bidirectional=True, **spec.extra)
    torch.manual_seed(5)
    theirs = spec.theirs(5, 7, 2, bidirectional=True, **spec.extra)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    back = ours.to_torch()
    assert type(back) is spec.theirs
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ours.state_dict().values()))
    assert repr(ours).split("(", 1)[1] == repr(theirs).split("(", 1)[1]
    assert isinstance(ours, nn.RNNBase)


@pytest.mark.parametrize("spec", params(LAYER_CLASSES, by="name"))
def test_weights_in_use_are_the_modules_own(spec):
    """A parametrized weight and functional_call's weights are the ones the call uses, as in torch."""
    from torch.func import functional_call
    from torch.nn.utils import parametrize

    class Halved(nn.Module):
        def forward(self, w):
            return 0.5 * w

    torch.manual_seed(0)
    ref = spec.theirs(3, 5, 2, dtype=torch.float64)
    ours = spec.ours.from_torch(ref)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    zeros = {n: torch.zeros_like(p) for n, p in ours.named_parameters()}
    assert torch.equal(functional_call(ours, zeros, (x,))[0], torch.zeros(4, 2, 5, dtype=torch.float64))
    for module in (ref, ours):
        parametrize.register_parametrization(module, "weight_hh_l1", Halved())
    got, want = outputs_and_grads(ours, x), outputs_and_grads(ref, x)
    _assert_float64_equal(got, want)
