"""The gated cells' eager training path: one autograd node per layer and direction (``LSTMLayerFunction``,
``GRULayerFunction``) whose forward projects each step's input in the step kernel (``*_layer_fwd``) and whose
``dX`` runs on ``fastrnn::mm_nn`` (csrc/brgemm_gemm.h).

The shapes here are large enough that mm_nn takes oneDNN's microkernel (>= 2^23 multiply-adds, float32)
and cross its tile edges (64 rows, 128 columns, K chunks of 256); the module parity tests elsewhere run
small shapes, where mm_nn calls the BLAS.
"""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn.gated_ops import GRULayerFunction, LSTMLayerFunction, _use_cpp
from fastrnn.testing import outputs_and_grads, parity_failures

pytestmark = pytest.mark.skipif(not _use_cpp(torch.zeros(1)), reason="the C++ extension is not available")


def _mm_nn_case(m, k, n, gen, dtype, b_layout, a_layout, with_bias):
    a = torch.randn(m, k + 3 if a_layout == "strided" else k, generator=gen, dtype=dtype)
    a = a[:, :k] if a_layout == "strided" else a
    if b_layout == "transposed":  # a weight's .t()
        b = torch.randn(n, k, generator=gen, dtype=dtype).t()
    elif b_layout == "strided":
        b = torch.randn(k, 2 * n, generator=gen, dtype=dtype)[:, ::2]
    else:
        b = torch.randn(k, n, generator=gen, dtype=dtype)
    bias = torch.randn(n, generator=gen, dtype=dtype) if with_bias else None
    return a, b, bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("b_layout", ["dense", "transposed", "strided"])
@pytest.mark.parametrize("a_layout", ["dense", "strided"])
@pytest.mark.parametrize("shape", [(333, 300, 257), (640, 64, 256), (64, 600, 128), (7, 5, 3), (40, 0, 9)])
def test_mm_nn_equals_float64_matmul(dtype, with_bias, b_layout, a_layout, shape):
    gen = torch.Generator().manual_seed(sum(shape))
    a, b, bias = _mm_nn_case(*shape, gen, dtype, b_layout, a_layout, with_bias)
    got = torch.ops.fastrnn.mm_nn(a, b, bias)
    want = a.double() @ b.double() + (bias.double() if bias is not None else 0)
    assert got.dtype == dtype and got.shape == want.shape and got.is_contiguous()
    # Each output sums K products: the float32 bound is K roundings of the largest partial sum.
    eps = torch.finfo(dtype).eps
    bound = 4 * eps * max(shape[1], 1) * (a.double().abs() @ b.double().abs()).max().item() + eps
    assert (got.double() - want).abs().max().item() <= bound


@pytest.mark.parametrize("shape", [(300, 1024, 1100), (1000, 1100, 1000)], ids=["groups-4-1", "groups-3-3-3-3-3-1"])
def test_mm_nn_groups_of_row_blocks_cover_every_tile(shape):
    """A weight over 4 MB: groups of S row blocks take each panel in turn (brgemm_gemm.h, row_blocks_a_panel), the
    last group shallower where the blocks do not fill it, and a partial last panel; every tile is computed once."""
    gen = torch.Generator().manual_seed(1)
    a, b, bias = _mm_nn_case(*shape, gen, torch.float32, "transposed", "dense", True)
    got = torch.ops.fastrnn.mm_nn(a, b, bias)
    want = a.double() @ b.double() + bias.double()
    bound = 4 * torch.finfo(torch.float32).eps * shape[1] * (a.double().abs() @ b.double().abs()).max().item()
    assert (got.double() - want).abs().max().item() <= bound


def test_mm_nn_rejects_bad_arguments():
    a, b = torch.randn(4, 3), torch.randn(3, 5)
    with pytest.raises(RuntimeError, match="is \\[4, 3\\] but b is \\[5, 3\\]"):
        torch.ops.fastrnn.mm_nn(a, b.t().contiguous())
    with pytest.raises(RuntimeError, match="share a dtype"):
        torch.ops.fastrnn.mm_nn(a, b.double())
    with pytest.raises(RuntimeError, match="bias must be"):
        torch.ops.fastrnn.mm_nn(a, b, torch.randn(4))
    with pytest.raises(RuntimeError, match="float32 and float64"):
        torch.ops.fastrnn.mm_nn(a.long(), b.long())


def test_mm_nn_opcheck():
    a, b = torch.randn(70, 40), torch.randn(50, 40).t()
    torch.library.opcheck(torch.ops.fastrnn.mm_nn.default, (a, b, torch.randn(50)))


LARGE = {
    "gru": (nn.GRU, fastrnn.GRU, {}),
    "lstm": (nn.LSTM, fastrnn.LSTM, {}),
    "lstm_proj": (nn.LSTM, fastrnn.LSTM, {"proj_size": 24}),
}


def _large_pair(name, **config):
    torch_cls, ours_cls, extra = LARGE[name]
    torch.manual_seed(0)
    theirs = torch_cls(70, 64, dtype=torch.float64, **config, **extra)
    return theirs, ours_cls.from_torch(theirs)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("name", sorted(LARGE))
def test_layer_path_matches_torch_where_the_microkernel_runs(use_backend, name, bidirectional, packed):
    use_backend("cpp")
    theirs, ours = _large_pair(name, num_layers=2, bidirectional=bidirectional)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(45, 16, 70, generator=gen, dtype=torch.float64)  # 720 x 70 x 256: ~2^23.6
    if packed:
        lengths = torch.randint(1, 46, (16,), generator=gen)
        lengths[0] = 45
        x = pack_padded_sequence(x, lengths, enforce_sorted=False)
    oracle = outputs_and_grads(theirs, x)
    got64 = outputs_and_grads(ours, x)
    for key, want in oracle.items():
        torch.testing.assert_close(got64[key], want, rtol=1e-10, atol=1e-10, msg=key)
    torch32 = outputs_and_grads(theirs, x, dtype=torch.float32)
    assert parity_failures(outputs_and_grads(ours, x, dtype=torch.float32), torch32, oracle) == []


@pytest.mark.parametrize("name", sorted(LARGE))
def test_eager_training_runs_one_node_per_layer(use_backend, name):
    use_backend("cpp")
    _, ours = _large_pair(name)
    ours = ours.float()
    # Padded input: the whole call's one node; packed (which the whole call declines): the layer nodes.
    assert "StackFunction" in ours(torch.randn(5, 3, 70))[0].grad_fn.name()
    y = ours(pack_padded_sequence(torch.randn(5, 3, 70), torch.tensor([5, 4, 2])))[0].data
    want = GRULayerFunction if name == "gru" else LSTMLayerFunction
    names, todo = set(), [y.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            todo.extend(n for n, _ in node.next_functions)
    assert f"{want.__name__}Backward" in names
    with torch.no_grad():
        assert ours(torch.randn(5, 3, 70))[0].grad_fn is None


@pytest.mark.parametrize("wrt", ["input", "weights", "state", "all"])
@pytest.mark.parametrize("name", sorted(LARGE))
def test_every_requires_grad_subset(use_backend, name, wrt):
    use_backend("cpp")
    theirs, ours = _large_pair(name)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(9, 4, 70, generator=gen, dtype=torch.float64)
    h = torch.randn(1, 4, 24 if name == "lstm_proj" else 64, generator=gen, dtype=torch.float64)
    state = (h, torch.randn(1, 4, 64, generator=gen, dtype=torch.float64)) if name != "gru" else h
    results = []
    for module in (theirs, ours):
        module.zero_grad()
        for p in module.parameters():
            p.requires_grad_(wrt in ("weights", "all"))
        xi = x.clone().requires_grad_(wrt in ("input", "all"))
        si = tuple(s.clone().requires_grad_(wrt in ("state", "all")) for s in (state if name != "gru" else (state,)))
        out, _ = module(xi, si if name != "gru" else si[0])
        out.pow(2).sum().backward()
        results.append([xi.grad, *(s.grad for s in si), *(p.grad for p in module.parameters())])
    for got, want in zip(results[1], results[0]):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non_reentrant", "reentrant"])
@pytest.mark.parametrize("name", sorted(LARGE))
def test_checkpoint_and_saved_tensor_hooks(use_backend, name, use_reentrant):
    """The layer node's saved tensors are unpacked once per backward (non-reentrant checkpointing's rule)."""
    use_backend("cpp")
    _, ours = _large_pair(name, num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, 70, dtype=torch.float64)
    grads = []
    for wrap in (False, True):
        ours.zero_grad()
        leaf = x.clone().requires_grad_()
        out = torch.utils.checkpoint.checkpoint(ours, leaf, use_reentrant=use_reentrant) if wrap else ours(leaf)
        out[0].pow(2).sum().backward()
        grads.append([leaf.grad, *(p.grad for p in ours.parameters())])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    unpacked, ids = [], iter(range(10**6))
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (next(ids), t), lambda p: unpacked.append(p[0]) or p[1]):
        out = ours(x.clone().requires_grad_())[0]
    out.sum().backward()
    assert len(unpacked) == len(set(unpacked)) > 0


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("name", sorted(LARGE))
def test_second_order_gradients_equal_torchs(use_backend, name, packed):
    """create_graph differentiates the pure-PyTorch reference layer recomputed on the saved inputs."""
    use_backend("cpp")
    torch_cls, ours_cls, extra = LARGE[name]
    extra = {"proj_size": 3} if extra else {}
    torch.manual_seed(0)
    theirs = torch_cls(3, 5, num_layers=2, bidirectional=True, dtype=torch.float64, **extra)
    ours = ours_cls.from_torch(theirs)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    results = []
    for module in (theirs, ours):
        leaf = x.clone().requires_grad_()
        run = pack_padded_sequence(leaf, torch.tensor([4, 2]), enforce_sorted=False) if packed else leaf
        out = module(run)[0]
        out = out.data if packed else out
        params = list(module.parameters())
        grads = torch.autograd.grad(out.pow(2).sum(), [leaf, *params], create_graph=True)
        penalty = sum(g.pow(2).sum() for g in grads)  # a gradient penalty, as in WGAN-GP
        results.append(torch.autograd.grad(penalty, [leaf, *params]))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
