"""A recording RNN / GRU / LSTM call as one C++ autograd node for the whole stack (csrc/stack.cpp:
``StackFunction``): the gradients equal torch's in every configuration the whole call takes (layers, directions,
batch_first, unbatched, biases, ``proj_size``, which inputs need a gradient, which outputs get one), create_graph
and batched gradients differentiate torch's recomputed stack, checkpointing and saved-tensor hooks see its saved
tensors, and an edited saved tensor raises."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import fastrnn

pytest.importorskip("fastrnn._C")

T, B, IN, H = 4, 3, 5, 6

CONFIGS = [
    pytest.param({}, id="1layer"),
    pytest.param({"num_layers": 2}, id="2layer"),
    pytest.param({"bidirectional": True}, id="bi"),
    pytest.param({"num_layers": 2, "bidirectional": True, "batch_first": True}, id="2layer-bi-batch_first"),
    pytest.param({"bias": False, "num_layers": 2}, id="no-bias-2layer"),
    pytest.param({"unbatched": True, "num_layers": 2, "bidirectional": True}, id="unbatched-2layer-bi"),
    pytest.param({"proj_size": 4, "num_layers": 2, "bidirectional": True}, id="proj-2layer-bi"),
]
NAMES = ["RNN", "GRU", "LSTM"]


def _for_each_module(configs) -> list:
    """(name, kwargs) for every module and config that module has (proj_size is LSTM's only)."""
    return [pytest.param(name, c.values[0], id=f"{name}-{c.id}") for name in NAMES for c in configs
            if name == "LSTM" or "proj_size" not in c.values[0]]


def _pair(name: str, kwargs: dict, dtype=torch.float64):
    kwargs = {k: v for k, v in kwargs.items() if k != "unbatched"}
    torch.manual_seed(0)
    ours = getattr(fastrnn, name)(IN, H, dtype=dtype, **kwargs)
    theirs = getattr(torch.nn, name)(IN, H, dtype=dtype, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _inputs(module, kwargs: dict, dtype, with_state: bool):
    unbatched = kwargs.get("unbatched", False)
    shape = (T, IN) if unbatched else (B, T, IN) if module.batch_first else (T, B, IN)
    x = torch.randn(shape, dtype=dtype)
    if not with_state:
        return x, None
    layers = module.num_layers * (2 if module.bidirectional else 1)
    lead = (layers,) if unbatched else (layers, B)
    h = torch.randn(*lead, module.proj_size or H, dtype=dtype)
    if module.mode == "LSTM":
        return x, (h, torch.randn(*lead, H, dtype=dtype))
    return x, h


def _nodes(t) -> str:
    """The names of the autograd nodes behind ``t`` (its view nodes, then what they lead to), joined."""
    names, todo = [], [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and len(names) < 50:
            names.append(node.name())
            todo.extend(next_node for next_node, _ in node.next_functions)
    return " ".join(names)


def _run(module, x, state, rg: str, outputs: str, create_graph: bool = False):
    """Forward with ``rg`` ("all", "x", "weights", "state") needing gradients, a loss on ``outputs`` ("both",
    "output", "state"), and the gradients of everything that needs one (and the output's grad_fn name)."""
    x = x.clone().requires_grad_(rg in ("all", "x"))
    states = [] if state is None else [s.clone().requires_grad_(rg in ("all", "state"))
                                       for s in (state if isinstance(state, tuple) else (state,))]
    for p in module.parameters():
        p.requires_grad_(rg in ("all", "weights"))
    hx = None if state is None else tuple(states) if len(states) == 2 else states[0]
    out, final = module(x, hx)
    finals = list(final) if isinstance(final, tuple) else [final]
    parts = ([out] if outputs != "state" else []) + (finals if outputs != "output" else [])
    loss = sum((torch.tanh(p) * (i + 1)).sum() for i, p in enumerate(parts))
    wrt = [t for t in (x, *states, *module.parameters()) if t.requires_grad]
    grads = torch.autograd.grad(loss, wrt, create_graph=create_graph, allow_unused=True)
    if create_graph:
        grads = torch.autograd.grad(sum((g * g).sum() for g in grads if g is not None), wrt, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt)], _nodes(out)


@pytest.mark.parametrize(("name", "kwargs"), _for_each_module(CONFIGS))
@pytest.mark.parametrize("with_state", [False, True], ids=["no-state", "state"])
def test_gradients_equal_torch_float64(name, kwargs, with_state):
    ours, theirs = _pair(name, kwargs)
    x, state = _inputs(ours, kwargs, torch.float64, with_state)
    got, node = _run(ours, x, state, "all", "both")
    want, _ = _run(theirs, x, state, "all", "both")
    assert "StackFunction" in node, node
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=lambda m, i=i: f"gradient {i}: {m}")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rg", ["x", "weights", "state"])
@pytest.mark.parametrize("outputs", ["output", "state"])
def test_partial_requires_grad_and_one_output(name, rg, outputs):
    kwargs = {"num_layers": 2, "bidirectional": True, **({"proj_size": 4} if name == "LSTM" else {})}
    ours, theirs = _pair(name, kwargs)
    x, state = _inputs(ours, kwargs, torch.float64, True)
    got, node = _run(ours, x, state, rg, outputs)
    want, _ = _run(theirs, x, state, rg, outputs)
    assert "StackFunction" in node, node
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_float32_gradients_close_to_torch(name):
    kwargs = {"num_layers": 2, "bidirectional": True}
    ours, theirs = _pair(name, kwargs, torch.float32)
    x, state = _inputs(ours, kwargs, torch.float32, True)
    got, node = _run(ours, x, state, "all", "both")
    want, _ = _run(theirs, x, state, "all", "both")
    assert "StackFunction" in node, node
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_large_float32_gradients_close_to_float64_torch(name):
    """Sizes where the gated dX takes the microkernel GEMM (rows x in x G >= 2^23, both directions adding into
    one dX): the gradients against torch's float64 stack."""
    torch.manual_seed(0)
    ours = getattr(fastrnn, name)(64, 64, num_layers=2, bidirectional=True)
    theirs = getattr(torch.nn, name)(64, 64, num_layers=2, bidirectional=True, dtype=torch.float64)
    theirs.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    x = torch.randn(32, 16, 64)
    got, node = _run(ours, x, None, "all", "both")
    want, _ = _run(theirs, x.double(), None, "all", "both")
    assert "StackFunction" in node, node
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(("name", "kwargs"), _for_each_module([CONFIGS[3], CONFIGS[6]]))
def test_create_graph_double_backward_equals_torch(name, kwargs):
    ours, theirs = _pair(name, kwargs)
    x, state = _inputs(ours, kwargs, torch.float64, True)
    got, node = _run(ours, x, state, "all", "both", create_graph=True)
    want, _ = _run(theirs, x, state, "all", "both", create_graph=True)
    assert "StackFunction" in node, node
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", NAMES)
def test_batched_gradients_equal_torch(name):
    results = []
    for module in _pair(name, {"num_layers": 2}):
        x = torch.randn(T, B, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
        out = module(x)[0]
        basis = torch.eye(out.numel(), dtype=torch.float64)[:5].view(5, *out.shape)
        results.append(torch.autograd.grad(out, [x, *module.parameters()], basis, is_grads_batched=True))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_non_reentrant_checkpoint_equals_torch(name):
    results = []
    for module in _pair(name, {"num_layers": 2, "bidirectional": True}):
        x = torch.randn(T, B, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
        out = checkpoint(lambda x, module=module: module(x)[0], x, use_reentrant=False)
        out.pow(2).sum().backward()
        results.append([x.grad, *(p.grad for p in module.parameters())])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_saved_tensor_hooks_see_the_saved_tensors(name):
    ours, theirs = _pair(name, {"num_layers": 2})
    x = torch.randn(T, B, IN, dtype=torch.float64, requires_grad=True)
    packed, unpacked = [], []

    def pack(t):
        packed.append(t)
        return t.clone()

    def unpack(t):
        unpacked.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = ours(x)[0]
    assert "StackFunction" in _nodes(out)
    assert any(t is ours.weight_hh_l0 for t in packed)
    got = torch.autograd.grad(out.sum(), [x, *ours.parameters()])
    assert len(unpacked) == len(packed)
    want = torch.autograd.grad(theirs(x)[0].sum(), [x, *theirs.parameters()])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("name", NAMES)
def test_editing_an_unsaved_tensor_works_and_a_saved_one_raises(name):
    ours, theirs = _pair(name, {})
    x = torch.randn(T, B, IN, dtype=torch.float64)  # needs no gradient: torch keeps no W_ih for it
    out = ours(x)[0]
    with torch.no_grad():
        ours.weight_ih_l0.mul_(2)  # not saved
        ours.bias_hh_l0.mul_(2)  # biases never are
    out.sum().backward()
    want = theirs(x)[0]
    want.sum().backward()
    for (n, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m, n=n: f"{n}: {m}")
    out = ours(x)[0]
    with torch.no_grad():
        ours.weight_hh_l0.mul_(2)
    with pytest.raises(RuntimeError, match="inplace"):
        out.sum().backward()


@pytest.mark.parametrize("name", NAMES)
def test_output_may_be_edited_in_place_before_backward(name):
    ours, theirs = _pair(name, {})
    x = torch.randn(T, B, IN, dtype=torch.float64, requires_grad=True)
    grads = []
    for module in (ours, theirs):
        out = module(x)[0]
        loss = (out * torch.linspace(-1, 1, out.size(-1), dtype=out.dtype)).sum()  # keeps no reference to out
        with torch.no_grad():
            out.zero_()
        grads.append(torch.autograd.grad(loss, [x, *module.parameters()]))
    for g, w in zip(*grads):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_forward_mode_ad_is_not_taken_and_equals_torch(name):
    import torch.autograd.forward_ad as fwAD

    results = []
    for module in _pair(name, {"num_layers": 2}):
        x = torch.randn(T, B, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        tangent = torch.randn(T, B, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        with fwAD.dual_level():
            out = module(fwAD.make_dual(x, tangent))[0]
            results.append(fwAD.unpack_dual(out).tangent)
    torch.testing.assert_close(*results)
