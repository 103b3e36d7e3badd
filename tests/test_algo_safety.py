"""Issue 19: safe default until proven, and a finder that checks results as well as time.

Off-GPU, on CPU tensors: torch's own RNN (``torch._VF.rnn_tanh``) stands in for cuDNN, ``algo.device_arch``
is faked to name a GPU architecture, the timer is fake, and fake fastrnn candidates are wrong, NaN, raising,
wrong only in their gradients, or off by just under / over the tolerance.
"""

import warnings

import pytest
import torch

from fastrnn import algo, functional
from tests.test_algo import FakeTimer, _call

KW = dict(has_biases=True, num_layers=2, dropout=0.0, training=False, bidirectional=True, nonlinearity="tanh",
          batch_sizes=None)
ARCH = (8, 6)


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.setattr(algo, "_choices", {})
    monkeypatch.setattr(algo, "_timings", {})
    monkeypatch.setattr(algo, "_rejections", {})
    monkeypatch.setattr(algo, "_warned", set())
    monkeypatch.setattr(algo, "PROVEN_ARCHS", {})
    monkeypatch.setattr(algo, "device_arch", lambda device: ARCH)
    monkeypatch.delenv("FASTRNN_BACKEND", raising=False)
    monkeypatch.delenv(algo.ALGO_ENV, raising=False)


FAST_TRITON = dict(triton=1.0, cudnn=2.0)


def _recorded(run):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run()
    return result, [str(w.message) for w in caught if "fastrnn" in str(w.message)]


# ---- part 1: the default runs cuDNN on an architecture gpu_check.sh has not passed on ----


def test_auto_on_an_unproven_architecture_runs_cudnn_and_says_once_how_to_opt_in():
    rnn, x, hx, weights = _call()
    timer = FakeTimer(**FAST_TRITON)
    got, said = _recorded(lambda: algo.cuda_call(functional.rnn, x, hx, weights, timer=timer, **KW))
    assert got is not None and timer.calls == []  # nothing timed: torch's result straight away
    out, h_n = rnn(x, hx)
    torch.testing.assert_close(got[0], out, rtol=0, atol=0)
    torch.testing.assert_close(got[1], h_n, rtol=0, atol=0)
    assert len(said) == 1 and "sm_86" in said[0]
    assert "FASTRNN_CUDA_ALGO=finder" in said[0] and "FASTRNN_CUDA_ALGO=triton" in said[0]
    again, said = _recorded(lambda: algo.cuda_call(functional.rnn, x, hx, weights, timer=timer, **KW))
    assert again is not None and said == [] and algo.last_choice(x) == "cudnn"


def test_auto_on_a_proven_architecture_is_the_finder(monkeypatch):
    monkeypatch.setattr(algo, "PROVEN_ARCHS", {ARCH: ("0123abc", "2026-12-01")})
    _, x, hx, weights = _call()
    timer = FakeTimer(**FAST_TRITON)
    got, said = _recorded(lambda: algo.cuda_call(functional.rnn, x, hx, weights, timer=timer, **KW))
    assert got is None and timer.calls == ["cudnn", "triton"] and said == []
    monkeypatch.setattr(algo, "device_arch", lambda device: (9, 0))  # another GPU in the same process
    got, said = _recorded(lambda: algo.cuda_call(functional.rnn, x, hx, weights, timer=timer, **KW))
    assert got is not None and len(said) == 1 and "sm_90" in said[0] and "sm_86 (0123abc, 2026-12-01)" in said[0]


@pytest.mark.parametrize("explicit,timed", [("finder", True), ("triton", False)])
def test_explicit_opt_in_runs_the_kernels_on_any_architecture(monkeypatch, explicit, timed):
    monkeypatch.setenv(algo.ALGO_ENV, explicit)
    _, x, hx, weights = _call()
    timer = FakeTimer(**FAST_TRITON)
    got, said = _recorded(lambda: algo.cuda_call(functional.rnn, x, hx, weights, timer=timer, **KW))
    assert got is None and said == [] and bool(timer.calls) == timed


@pytest.mark.parametrize("value", ["auto", "finder"])
def test_a_forced_backend_keeps_fastrnn_s_path(monkeypatch, value):
    monkeypatch.setenv(algo.ALGO_ENV, value)
    monkeypatch.setenv("FASTRNN_BACKEND", "reference")
    _, x, hx, weights = _call()
    timer = FakeTimer(**FAST_TRITON)
    got, said = _recorded(lambda: algo.cuda_call(functional.rnn, x, hx, weights, timer=timer, **KW))
    assert got is None and said == [] and timer.calls == []


def test_auto_is_a_cudnn_constant_under_torch_compile_on_an_unproven_architecture():
    rnn, x, hx, weights = _call()

    def call(x, hx, *weights):
        return algo.cuda_call(functional.rnn, x, hx, list(weights), **KW)

    compiled = torch.compile(call, fullgraph=True, backend="eager")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = compiled(x, hx, *weights)
        out, _ = rnn(x, hx)
    assert got is not None
    torch.testing.assert_close(got[0], out)


# ---- part 2: the finder checks fastrnn's results against cuDNN's on the runs it times ----


def _shifted(delta, where=(0, 0, 0)):
    """fastrnn's path with ``delta`` added to one output element."""

    def impl(input, hx, weights, **kwargs):
        out, h_n = functional.rnn(input, hx, weights, **kwargs)
        out = out.clone()
        out[where] += delta
        return out, h_n

    return impl


def _nan_output(input, hx, weights, **kwargs):
    out, h_n = functional.rnn(input, hx, weights, **kwargs)
    return out.index_fill(0, torch.tensor([2]), float("nan")), h_n


def _raising(input, hx, weights, **kwargs):
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


class _DoubledGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


def _wrong_gradients(input, hx, weights, **kwargs):
    out, h_n = functional.rnn(input, hx, weights, **kwargs)
    return _DoubledGradient.apply(out), h_n


@pytest.mark.parametrize("impl,grad,found", [
    pytest.param(_shifted(0.1), False, "output is off by 0.1", id="wrong-output"),
    pytest.param(_nan_output, False, "output has 36 non-finite values where cuDNN's are finite", id="nan"),
    pytest.param(_raising, False, "it raised RuntimeError: CUDA error: an illegal memory access", id="raising"),
    pytest.param(_wrong_gradients, True, "grad_input is off by", id="wrong-gradients"),
])
def test_a_bad_candidate_loses_to_cudnn_with_one_warning(monkeypatch, impl, grad, found):
    monkeypatch.setenv(algo.ALGO_ENV, "finder")
    rnn, x, hx, weights = _call(requires_grad=grad)
    got, said = _recorded(lambda: algo.cuda_call(impl, x, hx, weights, timer=FakeTimer(**FAST_TRITON), **KW))
    assert got is not None  # cuDNN ran although fastrnn's path was timed as the faster
    out, _ = rnn(x, hx)
    torch.testing.assert_close(got[0], out, rtol=0, atol=0)
    assert len(said) == 1 and found in said[0], said
    assert "H=6, B<=4, T<=8, float32, 2 layers, bidirectional, tanh" in said[0]  # names the shape class
    (key, problem), = algo.rejections().items()
    assert found in problem and algo.choices()[key][0] == "cudnn"
    again, said = _recorded(lambda: algo.cuda_call(impl, x, hx, weights, timer=FakeTimer(**FAST_TRITON), **KW))
    assert again is not None and said == []  # decided once for the class


def test_gradients_are_not_checked_for_inference_calls(monkeypatch):
    monkeypatch.setenv(algo.ALGO_ENV, "finder")
    _, x, hx, weights = _call()
    with torch.no_grad():
        got, said = _recorded(lambda: algo.cuda_call(_wrong_gradients, x, hx, weights,
                                                     timer=FakeTimer(**FAST_TRITON), **KW))
    assert got is None and said == []


def test_the_tolerance_is_what_decides(monkeypatch):
    """Off by half the tolerance passes, by twice fails (tanh outputs: the scale max(1, max|y|) is 1)."""
    monkeypatch.setenv(algo.ALGO_ENV, "finder")
    tol = algo.tolerance(torch.float32, 5, KW["num_layers"])
    _, x, hx, weights = _call()
    assert algo.cuda_call(_shifted(0.5 * tol), x, hx, weights, timer=FakeTimer(**FAST_TRITON), **KW) is None
    _, x9, hx9, weights = _call(batch=9)  # another shape class
    got, said = _recorded(lambda: algo.cuda_call(_shifted(2 * tol), x9, hx9, weights,
                                                 timer=FakeTimer(**FAST_TRITON), **KW))
    assert got is not None and len(said) == 1 and "output is off by" in said[0]


def test_nan_where_cudnn_has_nan_too_is_no_mismatch(monkeypatch):
    monkeypatch.setenv(algo.ALGO_ENV, "finder")
    _, x, hx, weights = _call()
    x[1, 0, 2] = float("nan")  # row 0 is NaN from step 1 on, in both implementations
    got, said = _recorded(lambda: algo.cuda_call(functional.rnn, x, hx, weights, timer=FakeTimer(**FAST_TRITON),
                                                 **KW))
    assert got is None and said == []


def test_dropout_classes_are_checked_on_runs_without_dropout(monkeypatch):
    """cuDNN's dropout masks are not torch's, so with dropout the timed runs cannot be compared: the check
    runs both once more without it. This candidate is right without dropout and off with it."""
    monkeypatch.setenv(algo.ALGO_ENV, "finder")

    def masks_differ(input, hx, weights, **kwargs):
        out, h_n = functional.rnn(input, hx, weights, **kwargs)
        return (out + 1.0 if kwargs["dropout"] > 0 else out), h_n

    kw = dict(KW, training=True, dropout=0.5)
    _, x, hx, weights = _call(requires_grad=True)
    got, said = _recorded(lambda: algo.cuda_call(masks_differ, x, hx, weights, timer=FakeTimer(**FAST_TRITON), **kw))
    assert got is None and said == []
    _, x9, hx9, weights = _call(batch=9, requires_grad=True)
    got, said = _recorded(lambda: algo.cuda_call(_shifted(0.1), x9, hx9, weights, timer=FakeTimer(**FAST_TRITON),
                                                 **kw))
    assert got is not None and len(said) == 1 and "output is off by 0.1" in said[0]


def test_a_raising_cudnn_leaves_fastrnn_unchecked_and_silent(monkeypatch):
    monkeypatch.setenv(algo.ALGO_ENV, "finder")
    _, x, hx, weights = _call()

    def timer(fn):
        if fn.algo == "cudnn":
            raise RuntimeError("cuDNN refused")
        return 5.0

    got, said = _recorded(lambda: algo.cuda_call(functional.rnn, x, hx, weights, timer=timer, **KW))
    assert got is None and said == []


def test_tolerance_follows_dtype_tf32_steps_and_layers():
    eps32 = torch.finfo(torch.float32).eps
    with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
        old = torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            assert algo.tolerance(torch.float32, 1000, 1) == 16 * eps32 * (10 + 1)
            assert algo.tolerance(torch.float32, 1, 2) == 16 * eps32 * 2
            assert algo.tolerance(torch.float16, 1000, 1) == 16 * 2.0**-10 * 11
            assert algo.tolerance(torch.bfloat16, 1000, 1) == 0.25  # capped
            torch.backends.cuda.matmul.allow_tf32 = True  # fastrnn's input projection in TF32
            assert algo.tolerance(torch.float32, 1000, 1) == 16 * 2.0**-10 * 11
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=True):
        assert algo.tolerance(torch.float32, 1000, 1) == 16 * 2.0**-10 * 11


def test_mismatch_reports_each_tensor_by_name():
    ones = torch.ones(3, 2)
    assert algo.mismatch({"output": ones.clone(), "grad_hx": None}, {"output": ones, "grad_hx": None}, 1e-6) is None
    inf = torch.tensor([1.0, float("inf")])
    assert "non-finite" in algo.mismatch({"h_n": inf}, {"h_n": torch.ones(2)}, 1e-6)
    assert algo.mismatch({"h_n": torch.tensor([1.0, 5.0])}, {"h_n": inf}, 1e-6) is None  # cuDNN's inf: skipped
    assert algo.mismatch({"grad_bias_hh_l0": None}, {"grad_bias_hh_l0": torch.zeros(2)}, 1e-6) is None
    found = algo.mismatch({"grad_bias_hh_l0": None, "output": 2 * ones}, {"grad_bias_hh_l0": ones, "output": ones},
                          0.1)
    assert found.startswith("grad_bias_hh_l0 is off by 1") and "; output is off by 1" in found
    assert "shape (2,)" in algo.mismatch({"h_n": torch.ones(2)}, {"h_n": torch.ones(3)}, 1.0)
    near, far = {"g": torch.tensor([100.5])}, {"g": torch.tensor([100.0])}
    assert algo.mismatch(near, far, 0.006) is None  # 0.5 <= 0.006 x max(1, 100)
    assert "off by 0.5" in algo.mismatch(near, far, 0.004)


def test_weight_names_follow_torch():
    rnn = torch.nn.RNN(2, 3, num_layers=2, bidirectional=True)
    assert algo.weight_names(2, True, True) == [name for name, _ in rnn.named_parameters()]
    assert algo.weight_names(1, False, False) == ["weight_ih_l0", "weight_hh_l0"]
