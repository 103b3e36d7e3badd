"""torch.func: functional_call, vmap over a batch of inputs, and per-sample gradients (vmap of grad)."""

import pytest
import torch
from torch.func import functional_call, grad, vmap

import fastrnn


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_vmap_over_inputs_matches_a_loop(use_backend, backend):
    use_backend(backend)
    torch.manual_seed(0)
    rnn = fastrnn.RNN(4, 6, num_layers=2, bidirectional=True)
    xs = torch.randn(3, 5, 2, 4)  # 3 independent inputs [T, B, I]
    got_out, got_h = vmap(lambda x: rnn(x))(xs)
    for i in range(3):
        want_out, want_h = rnn(xs[i])
        torch.testing.assert_close(got_out[i], want_out)
        torch.testing.assert_close(got_h[i], want_h)


def test_vmap_with_batched_hidden_state():
    torch.manual_seed(0)
    rnn = fastrnn.RNN(4, 6)
    xs, hs = torch.randn(3, 5, 2, 4), torch.randn(3, 1, 2, 6)
    got, _ = vmap(lambda x, h: rnn(x, h))(xs, hs)
    for i in range(3):
        torch.testing.assert_close(got[i], rnn(xs[i], hs[i])[0])


def test_per_sample_gradients_with_vmap_of_grad():
    torch.manual_seed(0)
    ref = torch.nn.RNN(4, 6, dtype=torch.float64)
    ours = fastrnn.RNN.from_torch(ref)
    params = {k: v.detach() for k, v in ours.named_parameters()}
    xs = torch.randn(3, 5, 1, 4, dtype=torch.float64)

    def loss(p, x):
        out, _ = functional_call(ours, p, (x,))
        return out.square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, xs)
    for i in range(3):
        ref.zero_grad()
        ref(xs[i])[0].square().sum().backward()
        for name, p in ref.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, msg=name)


def test_vmap_over_packed_batch_sizes_fails_clearly():
    from fastrnn.ops import recurrence

    xw, h0, w = torch.randn(2, 3, 4), torch.randn(2, 2, 4), torch.randn(4, 4)
    sizes = torch.tensor([[2, 1], [2, 1]])
    with pytest.raises(ValueError, match="vmap over batch_sizes is not supported"):
        vmap(lambda x, h, s: recurrence(x, h, w, s, False, 0))(xw, h0, sizes)
