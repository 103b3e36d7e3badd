"""The CUDA algorithm finder's choice logic, on CPU with a fake timer (torch's own RNN stands in for cuDNN:
``torch._VF.rnn_tanh`` is what runs there on a CPU tensor). These tests run the finder explicitly
(``FASTRNN_CUDA_ALGO=finder``); what ``auto`` means per architecture and the finder's result check are in
tests/test_algo_safety.py."""

import pytest
import torch

from fastrnn import algo, functional

KW = dict(has_biases=True, num_layers=2, dropout=0.0, training=False, bidirectional=True, nonlinearity="tanh",
          batch_sizes=None)


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.setattr(algo, "_choices", {})
    monkeypatch.setattr(algo, "_timings", {})
    monkeypatch.setattr(algo, "_rejections", {})
    monkeypatch.setattr(algo, "_warned", set())
    monkeypatch.delenv("FASTRNN_BACKEND", raising=False)
    monkeypatch.setenv(algo.ALGO_ENV, "finder")


def _call(batch=3, steps=5, requires_grad=False, seed=0):
    torch.manual_seed(seed)
    rnn = torch.nn.RNN(4, 6, num_layers=2, bidirectional=True)
    x = torch.randn(steps, batch, 4, requires_grad=requires_grad)
    hx = torch.randn(4, batch, 6)
    return rnn, x, hx, list(rnn._flat_weights)


class FakeTimer:
    """Runs each candidate once (so its result is recorded and a broken one raises) and answers the seconds
    it was told."""

    def __init__(self, **seconds):
        self.seconds, self.calls = seconds, []

    def __call__(self, fn):
        fn()
        self.calls.append(fn.algo)
        return self.seconds[fn.algo]


def test_cudnn_wins_and_returns_torchs_own_result():
    rnn, x, hx, weights = _call()
    timer = FakeTimer(triton=2.0, cudnn=1.0)
    got = algo.cuda_call(functional.rnn, x, hx, weights, timer=timer, **KW)
    assert got is not None and timer.calls == ["cudnn", "triton"]  # cuDNN first: the others are checked on it
    out, h_n = rnn(x, hx)
    torch.testing.assert_close(got[0], out, rtol=0, atol=0)
    torch.testing.assert_close(got[1], h_n, rtol=0, atol=0)
    assert list(algo.choices().values())[0][0] == "cudnn"


def test_triton_wins_ties_and_the_choice_is_cached_per_shape_class():
    _, x, hx, weights = _call(batch=5, steps=5)
    timer = FakeTimer(triton=1.0, cudnn=1.0)
    assert algo.cuda_call(functional.rnn, x, hx, weights, timer=timer, **KW) is None
    _, x7, hx7, weights = _call(batch=7, steps=7)  # same class: batch and steps bucket to 8
    assert algo.cuda_call(functional.rnn, x7, hx7, weights, timer=timer, **KW) is None
    assert timer.calls == ["cudnn", "triton"]
    _, x9, hx9, weights = _call(batch=9, steps=7)  # a new class is timed again
    algo.cuda_call(functional.rnn, x9, hx9, weights, timer=FakeTimer(triton=3.0, cudnn=1.0), **KW)
    assert sorted(w for w, _ in algo.choices().values()) == ["cudnn", "triton"]


def test_failing_candidate_loses():
    _, x, hx, weights = _call()

    def timer(fn):
        if fn.algo == "cudnn":
            raise RuntimeError("cuDNN refused")
        return 5.0

    assert algo.cuda_call(functional.rnn, x, hx, weights, timer=timer, **KW) is None


@pytest.mark.parametrize("forced,expect_cudnn", [("triton", False), ("cudnn", True)])
def test_environment_forces_an_algorithm_without_timing(monkeypatch, forced, expect_cudnn):
    monkeypatch.setenv(algo.ALGO_ENV, forced)
    _, x, hx, weights = _call()
    timer = FakeTimer()
    got = algo.cuda_call(functional.rnn, x, hx, weights, timer=timer, **KW)
    assert (got is not None) == expect_cudnn and timer.calls == []


def test_forced_backend_is_not_second_guessed_and_bad_values_raise(monkeypatch):
    monkeypatch.setenv("FASTRNN_BACKEND", "reference")
    monkeypatch.setenv(algo.ALGO_ENV, "auto")
    _, x, hx, weights = _call()
    timer = FakeTimer()
    assert algo.cuda_call(functional.rnn, x, hx, weights, timer=timer, **KW) is None and timer.calls == []
    monkeypatch.setenv(algo.ALGO_ENV, "fastest")
    with pytest.raises(ValueError, match="FASTRNN_CUDA_ALGO"):
        algo.cuda_call(functional.rnn, x, hx, weights, timer=timer, **KW)


def test_timing_leaves_gradients_and_rng_untouched():
    rnn, x, hx, weights = _call(requires_grad=True)
    rnn.dropout = 0.5
    torch.manual_seed(1)
    got = algo.cuda_call(functional.rnn, x, hx, weights, timer=FakeTimer(triton=1.0, cudnn=0.5),
                         **dict(KW, training=True, dropout=0.5))
    assert x.grad is None and all(w.grad is None for w in weights)
    torch.manual_seed(1)
    out, _ = rnn(x, hx)  # the same dropout masks: the timing runs drew nothing from the user's RNG
    torch.testing.assert_close(got[0], out, rtol=0, atol=0)
    got[0].sum().backward()  # the cuDNN choice is differentiable like torch.nn.RNN
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_packed_call_matches_torch():
    rnn, _, _, weights = _call()
    seqs = [torch.randn(n, 4) for n in (5, 2, 4)]
    packed = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
    hx = torch.randn(4, 3, 6)
    kw = dict(KW, batch_sizes=packed.batch_sizes)
    got = algo.cuda_call(functional.rnn, packed.data, hx[:, packed.sorted_indices], weights,
                         timer=FakeTimer(triton=2.0, cudnn=1.0), **kw)
    out, h_n = rnn(packed, hx)  # the module sorts hx into the packed order and back, as fastrnn.RNN does
    torch.testing.assert_close(got[0], out.data)
    torch.testing.assert_close(got[1][:, packed.unsorted_indices], h_n)


def test_last_choice_reports_what_ran():
    _, x, hx, weights = _call()
    algo.cuda_call(functional.rnn, x, hx, weights, timer=FakeTimer(triton=2.0, cudnn=1.0), **KW)
    assert algo.last_choice(x) == "cudnn"
    with torch.no_grad():  # another shape class (no gradients), decided separately
        algo.cuda_call(functional.rnn, x, hx, weights, timer=FakeTimer(triton=1.0, cudnn=2.0), **KW)
    assert algo.last_choice(x) == "triton"


def test_cached_choice_is_a_constant_under_torch_compile():
    rnn, x, hx, weights = _call()
    with torch.no_grad():
        algo.cuda_call(functional.rnn, x, hx, weights, timer=FakeTimer(triton=2.0, cudnn=1.0), **KW)

    def call(x, hx, *weights):
        return algo.cuda_call(functional.rnn, x, hx, list(weights), **KW)

    compiled = torch.compile(call, fullgraph=True, backend="eager")
    with torch.no_grad():
        got = compiled(x, hx, *weights)
        out, h_n = rnn(x, hx)
    assert got is not None  # the cached cuDNN choice, traced as a constant: no timing, no graph break
    torch.testing.assert_close(got[0], out)
    torch.testing.assert_close(got[1], h_n)


def test_cached_choice_is_exported():
    rnn, x, hx, weights = _call()
    with torch.no_grad():
        algo.cuda_call(functional.rnn, x, hx, weights, timer=FakeTimer(triton=2.0, cudnn=1.0), **KW)

    class Call(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weights = torch.nn.ParameterList(weights)

        def forward(self, x, hx):
            return algo.cuda_call(functional.rnn, x, hx, list(self.weights), **KW)

    with torch.no_grad():
        exported = torch.export.export(Call(), (x, hx))
        got = exported.module()(x, hx)
        out, _ = rnn(x, hx)
    assert "rnn_tanh" in str(exported.graph)
    torch.testing.assert_close(got[0], out)
