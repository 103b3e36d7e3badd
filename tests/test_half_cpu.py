"""16-bit calls on the CPU, where fastrnn has no kernel, run torch's own implementation (never the step-by-step
reference, which ran at 0.26x torch): outputs and gradients bit for bit torch's, for all six modules."""

import pytest
import torch

import fastrnn

NAMES = ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", NAMES)
def test_16_bit_cpu_call_is_torchs(name, dtype, monkeypatch):
    from fastrnn import reference

    def no_reference(*args, **kwargs):
        raise AssertionError("the reference ran")

    monkeypatch.setattr(reference, "rnn_recurrence_ref", no_reference)
    torch.manual_seed(0)
    theirs = getattr(torch.nn, name)(8, 16, dtype=dtype)
    ours = getattr(fastrnn, name)(8, 16, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(*((20, 4, 8) if not name.endswith("Cell") else (4, 8)), dtype=dtype)

    def run(module):
        xr = x.clone().requires_grad_()
        out = module(xr)
        first = out[0] if isinstance(out, tuple) else out
        first.float().sum().backward()
        return first.detach(), xr.grad, [p.grad for p in module.parameters()]

    got, want = run(ours), run(theirs)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for g, w in zip(got[2], want[2]):
        assert torch.equal(g, w)
