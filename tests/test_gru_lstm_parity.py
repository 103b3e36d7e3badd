"""fastrnn.GRU / LSTM / GRUCell / LSTMCell against torch's on the CPU, over the RNN's configuration matrix.

float64: equal to torch within a few roundings. float32: err(fastrnn) <= 2 * err(torch) + floor, both
measured against float64 torch (the float64 reference is checked against torch in test_gru_lstm_op.py).
"""

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn.testing import max_error, outputs_and_grads, parity_failures
from tests.cases import INPUT_KINDS
from tests.family import GATED, make_family_input, module_pair

FAMILY = {s.id: s for s in GATED}

CONFIGS = [
    pytest.param(
        dict(num_layers=layers, bidirectional=bi, bias=bias),
        id=f"L{layers}-{'bi' if bi else 'uni'}-{'bias' if bias else 'nobias'}",
    )
    for layers, bi, bias in [(1, False, True), (1, True, False), (2, True, True), (3, False, False)]
]


def _assert_float64_equal(got, oracle):
    assert got.keys() == oracle.keys()
    for key in oracle:
        scale = max(1.0, oracle[key].abs().max().item())
        assert max_error(got[key], oracle[key]) < 1e-10 * scale, key


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", sorted(FAMILY))
def test_module_matches_torch(use_backend, name, config, kind):
    use_backend("cpp")
    gen = torch.Generator().manual_seed(hash((name, kind, str(config))) % 2**31)
    extra, x, hx = make_family_input(FAMILY[name], kind, config["num_layers"], config["bidirectional"], gen)
    theirs, ours = module_pair(FAMILY[name], config, extra)
    oracle = outputs_and_grads(theirs, x, hx)
    _assert_float64_equal(outputs_and_grads(ours, x, hx), oracle)
    torch32 = outputs_and_grads(theirs, x, hx, dtype=torch.float32)
    got32 = outputs_and_grads(ours, x, hx, dtype=torch.float32)
    assert got32["output"].dtype == torch.float32
    assert parity_failures(got32, torch32, oracle) == []


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_reference_backend_matches_torch(use_backend, name):
    use_backend("reference")
    gen = torch.Generator().manual_seed(1)
    extra, x, hx = make_family_input(FAMILY[name], "packed_unsorted", 2, True, gen)
    theirs, ours = module_pair(FAMILY[name], dict(num_layers=2, bidirectional=True), extra)
    _assert_float64_equal(outputs_and_grads(ours, x, hx), outputs_and_grads(theirs, x, hx))


@pytest.mark.parametrize("name", sorted(FAMILY))
@pytest.mark.parametrize("hidden", [1, 33, 130])
@pytest.mark.parametrize("batch", [1, 5, 48])
def test_cpp_across_kernel_paths(use_backend, name, hidden, batch):
    """Hidden sizes and batches on both sides of the register-loop / BLAS switch and the vector blocks."""
    use_backend("cpp")
    gen = torch.Generator().manual_seed(hidden * 1000 + batch)
    extra = {"proj_size": hidden // 2} if name == "lstm_proj" and hidden > 1 else {}
    theirs = FAMILY[name].theirs(8, hidden, bidirectional=True, dtype=torch.float64, **extra)
    ours = FAMILY[name].ours.from_torch(theirs)
    x = torch.randn(4, batch, 8, generator=gen, dtype=torch.float64)
    oracle = outputs_and_grads(theirs, x)
    _assert_float64_equal(outputs_and_grads(ours, x), oracle)
    torch32 = outputs_and_grads(theirs, x, dtype=torch.float32)
    assert parity_failures(outputs_and_grads(ours, x, dtype=torch.float32), torch32, oracle) == []


CELLS = {"gru_cell": (nn.GRUCell, fastrnn.GRUCell), "lstm_cell": (nn.LSTMCell, fastrnn.LSTMCell)}


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_cell_matches_torch(use_backend, cell, backend, batched, with_hx, bias):
    use_backend(backend)
    gen = torch.Generator().manual_seed(3)
    torch_cls, ours_cls = CELLS[cell]
    theirs = torch_cls(5, 7, bias, dtype=torch.float64)
    ours = ours_cls.from_torch(theirs)
    shape = (4, 5) if batched else (5,)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    hx = None
    if with_hx:
        hx = torch.randn(*shape[:-1], 7, generator=gen, dtype=torch.float64)
        if cell == "lstm_cell":
            hx = (hx, torch.randn(*shape[:-1], 7, generator=gen, dtype=torch.float64))
    oracle = outputs_and_grads(theirs, x, hx)
    got = outputs_and_grads(ours, x, hx)
    assert got.keys() == oracle.keys()
    for key in oracle:
        assert max_error(got[key], oracle[key]) < 1e-12, key
    torch32 = outputs_and_grads(theirs, x, hx, dtype=torch.float32)
    assert parity_failures(outputs_and_grads(ours, x, hx, dtype=torch.float32), torch32, oracle) == []


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_dropout_between_layers_matches_torch_with_the_same_seed(name):
    extra = FAMILY[name].extra
    theirs = FAMILY[name].theirs(5, 7, 3, dropout=0.5, dtype=torch.float64, **extra)
    ours = FAMILY[name].ours.from_torch(theirs)
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    torch.manual_seed(11)
    want = theirs(x)[0]
    torch.manual_seed(11)
    got = ours(x)[0]
    torch.testing.assert_close(got, want)
    assert not torch.equal(ours.eval()(x)[0], got)


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_state_dict_init_and_round_trip(name):
    spec = FAMILY[name]
    torch_cls, ours_cls, extra = spec.theirs, spec.ours, spec.extra
    torch.manual_seed(5)
    ours = ours_cls(5, 7, 2, bidirectional=True, **extra)
    torch.manual_seed(5)
    theirs = torch_cls(5, 7, 2, bidirectional=True, **extra)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    back = ours.to_torch()
    assert type(back) is torch_cls
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ours.state_dict().values()))
    assert repr(ours).split("(", 1)[1] == repr(theirs).split("(", 1)[1]
    assert isinstance(ours, nn.RNNBase)


@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_weights_in_use_are_the_modules_own(name):
    """A parametrized weight and functional_call's weights are the ones the call uses, as in torch."""
    from torch.func import functional_call
    from torch.nn.utils import parametrize

    class Halved(nn.Module):
        def forward(self, w):
            return 0.5 * w

    torch.manual_seed(0)
    ref = getattr(nn, name)(3, 5, 2, dtype=torch.float64)
    ours = getattr(fastrnn, name).from_torch(ref)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    zeros = {n: torch.zeros_like(p) for n, p in ours.named_parameters()}
    assert torch.equal(functional_call(ours, zeros, (x,))[0], torch.zeros(4, 2, 5, dtype=torch.float64))
    for module in (ref, ours):
        parametrize.register_parametrization(module, "weight_hh_l1", Halved())
    got, want = outputs_and_grads(ours, x), outputs_and_grads(ref, x)
    _assert_float64_equal(got, want)
