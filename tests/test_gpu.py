"""fastrnn on CUDA against torch.nn.RNN (cuDNN, TF32 off). Skipped without a GPU; run by gpu_check.sh."""

import pytest
import torch

import fastrnn
from fastrnn.testing import outputs_and_grads, parity_failures

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(autouse=True)
def no_tf32():
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        yield
        torch.backends.cuda.matmul.allow_tf32 = old


def _check(config, x, hx=None, dtype=torch.float32, floor_eps=32.0):
    torch.manual_seed(0)
    torch_rnn = torch.nn.RNN(x_size(x), config.pop("hidden"), device="cuda", dtype=torch.float64, **config)
    ours = fastrnn.RNN.from_torch(torch_rnn)
    oracle = outputs_and_grads(torch_rnn, x, hx)
    base = outputs_and_grads(torch_rnn, x, hx, dtype=dtype)
    got = outputs_and_grads(ours, x, hx, dtype=dtype)
    assert got["output"].dtype == dtype
    assert parity_failures(got, base, oracle, floor_eps=floor_eps) == []


def x_size(x):
    return (x.data if hasattr(x, "batch_sizes") else x).size(-1)


SIZES = [(h, b, 1000 if h * b <= 2**14 else 100) for h in (32, 64, 128, 256, 512, 1024, 2048, 4096)
         for b in (1, 8, 64, 256)]


@pytest.mark.parametrize("hidden,batch,steps", SIZES, ids=[f"H{h}-B{b}-T{t}" for h, b, t in SIZES])
def test_float32_parity_across_sizes(use_backend, hidden, batch, steps):
    use_backend("triton")
    x = torch.randn(steps, batch, 16, device="cuda", dtype=torch.float64)
    _check({"hidden": hidden}, x)


CONFIGS = [
    pytest.param(dict(num_layers=2, bidirectional=True), id="L2-bi"),
    pytest.param(dict(nonlinearity="relu"), id="relu"),
    pytest.param(dict(num_layers=3, bias=False, batch_first=True), id="L3-nobias-batch_first"),
]


@pytest.mark.parametrize("hidden", [48, 300])
@pytest.mark.parametrize("config", CONFIGS)
def test_module_configurations(use_backend, config, hidden):
    use_backend("triton")
    shape = (4, 50, 24) if config.get("batch_first") else (50, 4, 24)
    x = torch.randn(*shape, device="cuda", dtype=torch.float64)
    hx = torch.randn(config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1), 4, hidden,
                     device="cuda", dtype=torch.float64)
    _check({"hidden": hidden, **config}, x, hx)


@pytest.mark.parametrize("hidden", [64, 512])
def test_packed_unequal_lengths(use_backend, hidden):
    use_backend("triton")
    lengths = [100, 7, 250, 31, 250, 1]
    seqs = [torch.randn(n, 16, device="cuda", dtype=torch.float64) for n in lengths]
    x = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
    _check({"hidden": hidden, "bidirectional": True}, x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hidden", [64, 128, 512])
def test_half_precision_within_twice_torchs_error(use_backend, dtype, hidden):
    use_backend("triton")
    x = torch.randn(200, 16, 32, device="cuda", dtype=torch.float64)
    _check({"hidden": hidden}, x, dtype=dtype, floor_eps=4.0)


@pytest.mark.parametrize("hidden", [64, 1024])
def test_bitwise_deterministic(use_backend, hidden):
    use_backend("triton")
    rnn = fastrnn.RNN(32, hidden, num_layers=2, device="cuda")
    x = torch.randn(100, 16, 32, device="cuda")

    def grads():
        rnn.zero_grad()
        out, h_n = rnn(x)
        (out.square().sum() + h_n.sum()).backward()
        return [p.grad.clone() for p in rnn.parameters()]

    first, second = grads(), grads()
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_cuda_picks_triton_by_default(monkeypatch):
    monkeypatch.delenv("FASTRNN_BACKEND", raising=False)
    from fastrnn.backends import select_backend

    assert select_backend(torch.zeros(1, 1, 1, device="cuda")).name == "triton"


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda m: m(3, 5).cuda()(torch.randn(2, 4, 3)), id="input-on-cpu"),
        pytest.param(lambda m: m(3, 5)(torch.randn(2, 4, 3, device="cuda")), id="module-on-cpu"),
        pytest.param(lambda m: m(3, 5).cuda()(torch.randn(2, 4, 3, device="cuda"), torch.randn(1, 4, 5)),
                     id="hx-on-cpu"),
    ],
)
def test_device_mismatch_raises_like_torch(call):
    outcomes = []
    for cls in (torch.nn.RNN, fastrnn.RNN):
        try:
            call(cls)
            outcomes.append((None, None))
        except Exception as error:  # compare whatever each raises
            outcomes.append((type(error), str(error)))
    assert outcomes[1] == outcomes[0]
