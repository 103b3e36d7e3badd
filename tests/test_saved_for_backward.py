"""fastrnn saves for backward what torch's own backward reads, no more: a tensor edited in place between forward
and backward makes fastrnn's backward raise exactly where torch's raises, and where torch's runs, fastrnn's runs
too and gives torch's gradients. A create_graph backward (which recomputes from the inputs) raises torch's
in-place error after such an edit rather than differentiating the edited values."""

from __future__ import annotations

import pytest
import torch

import fastrnn

MODULES = [
    pytest.param("RNN", {}, id="RNN"),
    pytest.param("RNN", {"num_layers": 2, "bidirectional": True}, id="RNN-2layer-bi"),
    pytest.param("RNN", {"nonlinearity": "relu"}, id="RNN-relu"),
    pytest.param("GRU", {}, id="GRU"),
    pytest.param("GRU", {"num_layers": 2, "bidirectional": True}, id="GRU-2layer-bi"),
    pytest.param("LSTM", {}, id="LSTM"),
    pytest.param("LSTM", {"num_layers": 2, "bidirectional": True}, id="LSTM-2layer-bi"),
    pytest.param("RNNCell", {}, id="RNNCell"),
    pytest.param("GRUCell", {}, id="GRUCell"),
    pytest.param("LSTMCell", {}, id="LSTMCell"),
]


def _step(module, name: str, edited: str, x_rg: bool, h_rg: bool, create_graph: bool = False):
    """Forward, ``edited.mul_(1.5)`` under no_grad, backward. Returns the gradients, or the error's type."""
    torch.manual_seed(0)
    sequence, lstm = not name.endswith("Cell"), "LSTM" in name
    layers = module.num_layers * (2 if module.bidirectional else 1) if sequence else 1
    x = torch.randn(*((5, 2, 3) if sequence else (2, 3)), dtype=torch.float64, requires_grad=x_rg)
    shape = (layers, 2, 4) if sequence else (2, 4)
    h = torch.randn(shape, dtype=torch.float64, requires_grad=h_rg)
    c = torch.randn(shape, dtype=torch.float64)
    out = module(x, (h, c) if lstm else h)
    parts = [out[0], *out[1]] if sequence and lstm else list(out) if isinstance(out, tuple) else [out]
    loss = sum((torch.tanh(p) * (i + 1)).sum() for i, p in enumerate(parts))
    target = {"input": x, "hx": h, "cx": c}.get(edited)
    with torch.no_grad():
        (target if target is not None else getattr(module, edited)).mul_(1.5)
    wrt = [t for t in (x, h, *module.parameters()) if t.requires_grad]
    try:
        grads = torch.autograd.grad(loss, wrt, create_graph=create_graph)
    except RuntimeError as error:  # the version-counter error, or autograd's own one about edited views
        assert "inplace" in str(error)
        return RuntimeError
    if create_graph:  # and one order more
        grads = torch.autograd.grad(sum((g * g).sum() for g in grads), wrt, allow_unused=True)
    return grads


def _pair(name: str, kwargs: dict):
    ours = getattr(fastrnn, name)(3, 4, dtype=torch.float64, **kwargs)
    theirs = getattr(torch.nn, name)(3, 4, dtype=torch.float64, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("name,kwargs", MODULES)
@pytest.mark.parametrize("x_rg,h_rg", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["x-h-no-grad", "x-grad", "h-grad", "x-h-grad"])
def test_in_place_edit_between_forward_and_backward_as_torch(name, kwargs, x_rg, h_rg):
    tensors = ["input", "hx"] + (["cx"] if "LSTM" in name else [])
    tensors += [k for k, _ in getattr(torch.nn, name)(3, 4, **kwargs).named_parameters()]
    differences = []
    for edited in tensors:
        ours, theirs = _pair(name, kwargs)
        got, want = _step(ours, name, edited, x_rg, h_rg), _step(theirs, name, edited, x_rg, h_rg)
        if (got is RuntimeError) != (want is RuntimeError):
            differences.append(f"{edited}: torch {'raises' if want is RuntimeError else 'runs'}, fastrnn "
                               f"{'raises' if got is RuntimeError else 'runs'}")
        elif want is not RuntimeError:
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, msg=lambda m, e=edited: f"after editing {e}: {m}")
    assert not differences, differences


@pytest.mark.parametrize("name,kwargs", MODULES)
def test_create_graph_after_an_edit_raises_or_matches_torch(name, kwargs):
    """A second-order backward after editing a tensor torch did not save: fastrnn recomputes from its inputs, so
    it must raise torch's in-place error, or give torch's numbers; never other numbers."""
    tensors = [k for k, _ in getattr(torch.nn, name)(3, 4, **kwargs).named_parameters()]
    for edited in ["input", *tensors]:
        ours, theirs = _pair(name, kwargs)
        got = _step(ours, name, edited, True, True, create_graph=True)
        want = _step(theirs, name, edited, True, True, create_graph=True)
        if got is RuntimeError:
            continue
        assert want is not RuntimeError, f"after editing {edited}: torch raises, fastrnn runs"
        for g, w in zip(got, want):
            if w is None:
                assert g is None or not g.any()
            else:
                torch.testing.assert_close(g, w, msg=lambda m, e=edited: f"after editing {e}: {m}")


@pytest.mark.parametrize("name,kwargs", MODULES)
def test_non_reentrant_checkpoint_frees_the_inputs_activation(name, kwargs):
    """Under torch.utils.checkpoint (non-reentrant) a node keeps no activation outside its saved tensors (which
    checkpointing drops and recomputes): the input made by an earlier layer is freed after the forward, as
    with torch's module, and the gradients still equal torch's."""
    import gc
    import weakref

    from torch.utils.checkpoint import checkpoint

    sequence = not name.endswith("Cell")
    results = []
    for module in _pair(name, kwargs):
        torch.manual_seed(1)
        linear = torch.nn.Linear(3, 3, dtype=torch.float64)
        x = torch.randn(*((5, 2, 3) if sequence else (2, 3)), dtype=torch.float64, requires_grad=True)
        refs = []

        def run(x, module=module, linear=linear, refs=refs):
            a = linear(x)
            refs.append(weakref.ref(a))
            out = module(a)
            return out[0] if isinstance(out, tuple) else out

        out = checkpoint(run, x, use_reentrant=False)
        gc.collect()
        assert refs[0]() is None, f"{type(module).__name__} keeps its input alive under checkpointing"
        out.sum().backward()
        results.append([x.grad, *(p.grad for p in module.parameters())])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)
