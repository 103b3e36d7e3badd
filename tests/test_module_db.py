"""PyTorch's own test samples for its RNN modules (``torch.testing._internal.common_modules.module_db``: the
constructor and forward inputs its generic module tests use) run through fastrnn's drop-ins against torch's
modules on the same weights: outputs and the gradients of every input and parameter, in float32 and float64,
training and eval, and the gradcheck / gradgradcheck (with batched gradients) that torch's module tests make."""

from __future__ import annotations

import pytest
import torch
from torch.utils._pytree import tree_flatten, tree_map

import fastrnn

NAMES = ("RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell")


def _samples():
    try:
        from torch.testing._internal.common_modules import module_db
    except ImportError:  # torch's test helpers need expecttest, which the test set-up installs
        return []
    cases = []
    for info in module_db:
        name = info.module_cls.__name__
        if info.module_cls is not getattr(torch.nn, name, None) or name not in NAMES:
            continue
        for dtype in (torch.float32, torch.float64):
            for training in (True, False):
                samples = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True,
                                                  training=training)
                for i, sample in enumerate(samples):
                    mode = "train" if training else "eval"
                    cases.append(pytest.param(name, sample, training, dtype,
                                              id=f"{name}-{str(dtype)[6:]}-{mode}-{i}"))
    return cases


SAMPLES = _samples()


def test_module_db_samples_are_present():
    pytest.importorskip("expecttest")
    assert len(SAMPLES) >= 300


def _pair(name: str, sample, training: bool, dtype: torch.dtype):
    """torch's module and fastrnn's, built as torch's module tests build them (then moved to ``dtype``)."""
    ctor = sample.constructor_input
    torch.manual_seed(0)
    theirs = getattr(torch.nn, name)(*ctor.args, **ctor.kwargs).to(dtype)
    ours = getattr(fastrnn, name)(*ctor.args, **ctor.kwargs).to(dtype)
    ours.load_state_dict(theirs.state_dict())
    return theirs.train(training), ours.train(training)


def _inputs(sample):
    """Fresh leaves with the sample's values (the sample's own are shared between both runs)."""
    def fresh(t):
        return t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t

    return tree_map(fresh, (sample.forward_input.args, sample.forward_input.kwargs))


def _run(module, sample):
    args, kwargs = _inputs(sample)
    out = module(*args, **kwargs)
    outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.requires_grad]
    leaves = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.requires_grad]
    leaves += list(module.parameters())
    loss = sum((o * torch.linspace(0.5, 1.5, o.numel(), dtype=o.dtype).view(o.shape)).sum() for o in outs)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [t.detach() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)], grads


@pytest.mark.parametrize("name,sample,training,dtype", SAMPLES)
def test_module_db_sample_matches_torch(name, sample, training, dtype):
    theirs, ours = _pair(name, sample, training, dtype)
    want, got = _run(theirs, sample), _run(ours, sample)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for what, g_list, w_list in (("output", got[0], want[0]), ("gradient", got[1], want[1])):
        assert len(g_list) == len(w_list)
        for i, (g, w) in enumerate(zip(g_list, w_list)):
            if w is None:
                assert g is None or not g.any(), f"{what} {i}"
            else:
                torch.testing.assert_close(g, w, **tol, msg=lambda m, i=i, what=what: f"{what} {i}: {m}")


@pytest.mark.parametrize("name,sample,training,dtype", [p for p in SAMPLES if "float64-train" in p.id])
def test_module_db_sample_gradcheck_with_batched_grad(name, sample, training, dtype):
    _, ours = _pair(name, sample, training, dtype)
    args, kwargs = _inputs(sample)
    flat, spec = tree_flatten((args, kwargs))
    where = [i for i, t in enumerate(flat) if isinstance(t, torch.Tensor) and t.requires_grad]
    from torch.utils._pytree import tree_unflatten

    def f(*tensors):
        values = list(flat)
        for i, t in zip(where, tensors):
            values[i] = t
        a, k = tree_unflatten(values, spec)
        return tuple(t for t in tree_flatten(ours(*a, **k))[0] if isinstance(t, torch.Tensor))

    inputs = tuple(flat[i] for i in where)
    assert torch.autograd.gradcheck(f, inputs, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(f, inputs, check_batched_grad=True)
