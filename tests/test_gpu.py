"""fastrnn on CUDA against torch.nn.RNN (cuDNN, TF32 off). Skipped without a GPU; run by gpu_check.sh."""

import warnings

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


# ---- issue 9: the second-generation multi tier, its launch modes and escape, the algorithm finder ----


def _op_inputs(steps, batch, hidden, device="cuda", packed=False):
    gen = torch.Generator().manual_seed(hidden + batch)
    if packed:
        lengths = sorted(torch.randint(1, steps + 1, (batch,), generator=gen).tolist(), reverse=True)
        lengths[0] = steps
        batch_sizes = torch.tensor([sum(1 for n in lengths if n > t) for t in range(steps)])
        xw = torch.randn(int(batch_sizes.sum()), hidden, generator=gen)
    else:
        batch_sizes, xw = None, torch.randn(steps, batch, hidden, generator=gen)
    h0 = torch.randn(batch, hidden, generator=gen)
    w = torch.randn(hidden, hidden, generator=gen) / hidden**0.5
    return [t.to(device) for t in (xw, h0, w)] + [batch_sizes]


def _op_matches_reference(xw, h0, w, batch_sizes, reverse=False):
    from fastrnn.backends import _BACKENDS
    from fastrnn.reference import rnn_recurrence_bwd_ref, rnn_recurrence_ref

    triton_backend = _BACKENDS["triton"]
    y, h_n = triton_backend.fwd(xw, h0, w, batch_sizes, reverse, "tanh")
    y_ref, h_ref = rnn_recurrence_ref(xw.double(), h0.double(), w.double(), batch_sizes, reverse)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h_n.double(), h_ref, rtol=1e-4, atol=1e-4)
    dy, dh_n = torch.randn_like(y), torch.randn_like(h_n)
    dz, dh0 = triton_backend.bwd(dy, dh_n, y_ref.to(y.dtype), w, batch_sizes, reverse, "tanh")
    dz_ref, dh0_ref = rnn_recurrence_bwd_ref(dy.double(), dh_n.double(), y_ref, w.double(), batch_sizes, reverse)
    torch.testing.assert_close(dz.double(), dz_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dh0.double(), dh0_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["persistent", "per_step"])
@pytest.mark.parametrize("hidden,batch", [(300, 1), (300, 3), (1024, 64), (2048, 1), (2048, 64)])
def test_multi_tier_modes_match_reference(monkeypatch, mode, batch, hidden):
    monkeypatch.setenv("FASTRNN_MULTI_MODE", mode)
    _op_matches_reference(*_op_inputs(50, batch, hidden, packed=batch == 3), reverse=batch == 64)


def test_persistent_launch_that_cannot_be_resident_never_hangs(monkeypatch):
    """More programs than the GPU holds, forced persistent: the cooperative launch is refused or the barrier
    times out (50 ms); either way the call is re-run per step, correct, with one warning."""
    from fastrnn.kernels import launch
    from fastrnn.kernels.plan import MultiPlan

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    batch = 8 * sms  # one-row groups of 32 column programs: 256 programs per SM, far past what is resident
    monkeypatch.setattr(launch, "plan", lambda h, b, d, dev: MultiPlan(16, 1, 512, 64, 1, 32, b, 4, True))
    monkeypatch.setenv("FASTRNN_MULTI_MODE", "persistent")
    monkeypatch.setenv("FASTRNN_SPIN_TIMEOUT_MS", "50")
    launch._warned.discard("persistent_failed")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _op_matches_reference(*_op_inputs(4, batch, 500))
    rerun = any("re-run one launch per step" in str(w.message) for w in caught)
    # A cooperative launch of a grid past what is resident is refused, so the call must have been re-run.
    # Without cooperative launches, consecutive blocks (a group's columns) may all land and finish.
    assert rerun or not launch._cooperative_supported()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_kernels_run_on_the_tensors_device_not_the_current_one():
    with torch.cuda.device(0):
        for hidden in (48, 300):
            _op_matches_reference(*_op_inputs(20, 3, hidden, device="cuda:1"))


def test_packed_call_captures_in_a_cuda_graph(use_backend):
    use_backend("triton")
    rnn = fastrnn.RNN(16, 300, device="cuda")
    seqs = [torch.randn(n, 16, device="cuda") for n in (30, 7, 19)]
    x = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
    with torch.no_grad():
        expected = rnn(x)[0].data.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            rnn(x)  # warm-up on the capture stream: compiles, caches the packed tables
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = rnn(x)[0].data
        graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("algo", ["cudnn", "auto", "finder"])
def test_algorithm_finder_on_cuda(monkeypatch, algo):
    from fastrnn import algo as finder

    monkeypatch.delenv("FASTRNN_BACKEND", raising=False)
    monkeypatch.setenv(finder.ALGO_ENV, algo)
    for state in ("_choices", "_rejections"):
        monkeypatch.setattr(finder, state, {})
    monkeypatch.setattr(finder, "_warned", set())
    torch.manual_seed(0)
    torch_rnn = torch.nn.RNN(24, 256, num_layers=2, device="cuda")
    ours = fastrnn.RNN.from_torch(torch_rnn)
    x = torch.randn(100, 8, 24, device="cuda", requires_grad=True)
    expected = outputs_and_grads(torch_rnn, x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = outputs_and_grads(ours, x)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-4, msg=key)
    proven = finder.device_arch(x.device) in finder.PROVEN_ARCHS
    if algo == "finder" or (algo == "auto" and proven):
        assert finder.choices(), "the finder decided nothing"
        assert not finder.rejections(), finder.rejections()  # the kernels passed the finder's check
    else:
        assert finder.last_choice(x) == "cudnn"
    said = [str(w.message) for w in caught if "not proven on this GPU" in str(w.message)]
    assert len(said) == (1 if algo == "auto" and not proven else 0), said


# (H, B, T, dtype, TF32) classes the finder must accept: correct kernels within its tolerance of cuDNN.
FINDER_CLASSES = [(64, 1, 1000, torch.float32, False), (128, 16, 200, torch.float32, True),
                  (512, 64, 100, torch.float32, False), (1024, 8, 100, torch.float32, True),
                  (128, 64, 200, torch.bfloat16, False), (512, 16, 100, torch.float16, False)]


@pytest.mark.parametrize("hidden,batch,steps,dtype,tf32", FINDER_CLASSES,
                         ids=[f"H{h}-B{b}-T{t}-{str(d)[6:]}-tf32{int(f)}" for h, b, t, d, f in FINDER_CLASSES])
def test_the_finder_accepts_the_kernels_and_says_how_close_they_are(monkeypatch, hidden, batch, steps, dtype, tf32):
    """The finder's check on real kernels: no rejection (a rejection would hide a kernel bug or a tolerance
    too tight behind cuDNN), and the error it measured, printed as a fraction of the tolerance."""
    from fastrnn import algo as finder

    monkeypatch.delenv("FASTRNN_BACKEND", raising=False)
    monkeypatch.setenv(finder.ALGO_ENV, "finder")
    monkeypatch.setattr(finder, "_choices", {})
    monkeypatch.setattr(finder, "_rejections", {})
    measured = {}
    real = finder.mismatch

    def spy(got, want, tol):
        measured.update({k: real({k: got.get(k)}, {k: v}, 0.0) for k, v in want.items()})
        return real(got, want, tol)

    monkeypatch.setattr(finder, "mismatch", spy)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=tf32):
        rnn = fastrnn.RNN(32, hidden, num_layers=2, device="cuda", dtype=dtype)
        x = torch.randn(steps, batch, 32, device="cuda", dtype=dtype, requires_grad=True)
        out, h_n = rnn(x)
        (out.float().sum() + h_n.float().sum()).backward()
    print(f"tolerance {finder.tolerance(dtype, steps, 2):.3g}:", "; ".join(str(v) for v in measured.values() if v))
    assert not finder.rejections(), finder.rejections()
    assert finder.choices() and measured


def test_compiled_module_uses_the_cached_choice(monkeypatch):
    from fastrnn import algo as finder

    monkeypatch.delenv("FASTRNN_BACKEND", raising=False)
    monkeypatch.setenv(finder.ALGO_ENV, "finder")
    rnn = fastrnn.RNN(24, 256, device="cuda")
    x = torch.randn(50, 4, 24, device="cuda")
    with torch.no_grad():
        eager = rnn(x)[0]  # decides and caches this shape class
        compiled = torch.compile(rnn, fullgraph=True)(x)[0]
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
