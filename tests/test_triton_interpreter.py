"""The Triton kernels, every tier and mode, against the reference under TRITON_INTERPRET=1 (CPU tensors).

On a GPU machine the same tests run on CUDA tensors. Outputs are poisoned with NaN before each run, so an
element a kernel forgets to write fails the comparison.
"""

import pytest
import torch

import fastrnn
from fastrnn.backends import _BACKENDS
from fastrnn.reference import rnn_recurrence_bwd_ref, rnn_recurrence_ref
from fastrnn.testing import outputs_and_grads, parity_failures

triton_backend = _BACKENDS["triton"]
pytestmark = pytest.mark.skipif(
    triton_backend.unavailable_reason() is not None, reason=str(triton_backend.unavailable_reason())
)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    from fastrnn.kernels import launch

    monkeypatch.setattr(launch, "_alloc_like", lambda t: torch.full_like(t, float("nan")))


def _inputs(steps, batch, hidden, packed, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    if packed:
        lengths = sorted(torch.randint(1, steps + 1, (batch,), generator=gen).tolist(), reverse=True)
        lengths[0] = steps
        batch_sizes = torch.tensor([sum(1 for n in lengths if n > t) for t in range(steps)])
        xw = torch.randn(int(batch_sizes.sum()), hidden, generator=gen)
    else:
        batch_sizes = None
        xw = torch.randn(steps, batch, hidden, generator=gen)
    h0 = torch.randn(batch, hidden, generator=gen)
    w = torch.randn(hidden, hidden, generator=gen) / hidden**0.5
    return [t.to(device=DEVICE, dtype=dtype) for t in (xw, h0, w)] + [batch_sizes]


TIER_SHAPES = [
    pytest.param(4, 3, 8, id="single-H8"),
    pytest.param(5, 20, 40, id="single-H40-two-batch-tiles"),
    pytest.param(3, 2, 64, id="single-H64-fp32-limit"),
    pytest.param(3, 3, 65, id="multi-H65-per-step"),
    pytest.param(3, 18, 96 + 64, id="multi-H160-two-batch-tiles"),
]


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("steps,batch,hidden", TIER_SHAPES)
def test_kernels_match_reference(steps, batch, hidden, packed, reverse, activation):
    xw, h0, w, batch_sizes = _inputs(steps, batch, hidden, packed, torch.float32, seed=hidden + batch)
    y, h_n = triton_backend.fwd(xw, h0, w, batch_sizes, reverse, activation)
    ref = [t.double() for t in (xw, h0, w)]
    y_ref, h_ref = rnn_recurrence_ref(*ref, batch_sizes, reverse, activation)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_n.double(), h_ref, rtol=1e-5, atol=1e-5)
    dy, dh_n = torch.randn_like(y), torch.randn_like(h_n)
    dz, dh0 = triton_backend.bwd(dy, dh_n, y_ref.float(), w, batch_sizes, reverse, activation)
    dz_ref, dh0_ref = rnn_recurrence_bwd_ref(dy.double(), dh_n.double(), y_ref, ref[2], batch_sizes, reverse,
                                             activation)
    torch.testing.assert_close(dz.double(), dz_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dh0.double(), dh0_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hidden", [16, 128, 130])
def test_half_precision_kernels_within_rounding(dtype, hidden):
    if DEVICE.type == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter computes bfloat16 tl.dot wrongly; checked on GPU in gpu_check.sh")
    xw, h0, w, batch_sizes = _inputs(4, 3, hidden, False, dtype, seed=7)
    y, h_n = triton_backend.fwd(xw, h0, w, None, False, "tanh")
    assert y.dtype == dtype and h_n.dtype == dtype
    y_ref, _ = rnn_recurrence_ref(xw.double(), h0.double(), w.double())
    y_low, _ = rnn_recurrence_ref(xw, h0, w)  # torch's own ops in the same dtype
    err, base = (y.double() - y_ref).abs().max(), (y_low.double() - y_ref).abs().max()
    assert err <= 2 * base + 4 * torch.finfo(dtype).eps


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(dict(num_layers=2, bidirectional=True), id="L2-bi-tanh"),
        pytest.param(dict(nonlinearity="relu", bias=False), id="L1-relu-nobias"),
    ],
)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("hidden", [12, 136], ids=["single", "multi"])
def test_module_on_triton_matches_torch(use_backend, config, packed, hidden):
    use_backend("triton")
    gen = torch.Generator().manual_seed(3)
    torch_rnn = torch.nn.RNN(5, hidden, dtype=torch.float64, device=DEVICE, **config)
    ours = fastrnn.RNN.from_torch(torch_rnn)
    if packed:
        seqs = [torch.randn(n, 5, generator=gen, dtype=torch.float64).to(DEVICE) for n in (2, 4, 1)]
        x = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
    else:
        x = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64).to(DEVICE)
    oracle = outputs_and_grads(torch_rnn, x)
    torch32 = outputs_and_grads(torch_rnn, x, dtype=torch.float32)
    got32 = outputs_and_grads(ours, x, dtype=torch.float32)
    assert parity_failures(got32, torch32, oracle) == []


def test_triton_is_bitwise_deterministic(use_backend):
    use_backend("triton")
    xw, h0, w, _ = _inputs(4, 5, 24, False, torch.float32, seed=1)
    first = triton_backend.bwd(xw, h0, torch.tanh(xw), w, None, False, "tanh")
    second = triton_backend.bwd(xw, h0, torch.tanh(xw), w, None, False, "tanh")
    assert all(torch.equal(a, b) for a, b in zip(first, second))
