"""Backend choice: forcing one, listing them, and degrading to the next with one warning."""

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import fastrnn
from fastrnn import backends


def test_available_backends_lists_the_reference_and_the_built_cpp_op():
    names = fastrnn.available_backends()
    assert "reference" in names
    assert "cpp" in names, backends._BACKENDS["cpp"].unavailable_reason()


def test_cpu_float32_picks_cpp_and_float16_the_reference(monkeypatch):
    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    assert backends.select_backend(torch.zeros(1, 1, 1)).name == "cpp"
    assert backends.select_backend(torch.zeros(1, 1, 1, dtype=torch.float16)).name == "reference"


def test_forcing_an_unknown_backend_is_a_value_error(monkeypatch):
    monkeypatch.setenv(backends.BACKEND_ENV, "cuda_magic")
    with pytest.raises(ValueError, match="not a fastrnn backend"):
        fastrnn.RNN(2, 3)(torch.randn(2, 1, 2))


def test_forcing_a_backend_that_cannot_run_the_tensors_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(backends.BACKEND_ENV, "cpp")
    rnn = fastrnn.RNN(2, 3, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="FASTRNN_BACKEND=cpp cannot run here: it supports float32"):
        rnn(torch.randn(2, 1, 2, dtype=torch.float16))


def test_forced_reference_runs_the_reference(monkeypatch):
    monkeypatch.setenv(backends.BACKEND_ENV, "reference")
    assert backends.select_backend(torch.zeros(1, 1, 1)).name == "reference"


def test_missing_cpp_op_falls_back_with_one_warning(monkeypatch):
    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    monkeypatch.setattr(backends.CppBackend, "unavailable_reason", lambda self: "no compiler here")
    monkeypatch.setattr(backends, "_warned", set())
    rnn = fastrnn.RNN(2, 3, dtype=torch.float64)
    x = torch.randn(4, 2, 2, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="using the reference backend on cpu because cpp: no compiler"):
        out, _ = rnn(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, _ = rnn(x)
    torch.testing.assert_close(out, rnn.to_torch()(x)[0])
    torch.testing.assert_close(again, out)


def test_import_never_fails_without_the_built_op_or_a_compiler(tmp_path):
    script = textwrap.dedent(
        """
        import sys, warnings
        sys.modules["fastrnn._C"] = None  # as if the extension was never built
        import torch, fastrnn
        assert fastrnn.available_backends() == ["reference"], fastrnn.available_backends()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out, _ = fastrnn.RNN(3, 4)(torch.randn(5, 2, 3))
        assert out.shape == (5, 2, 4)
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1 and "compiling it on first use failed" in messages[0], messages
        print("ok")
        """
    )
    env = dict(os.environ, CXX="/bin/false", CC="/bin/false", TORCH_EXTENSIONS_DIR=str(tmp_path),
               TRITON_INTERPRET="0", CUDA_VISIBLE_DEVICES="")
    env.pop(backends.BACKEND_ENV, None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_missing_built_op_is_compiled_on_first_use(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        sys.modules["fastrnn._C"] = None  # as if the extension was never built
        import torch, fastrnn
        assert "cpp" in fastrnn.available_backends()
        ref = torch.nn.RNN(3, 4, dtype=torch.float64)
        x = torch.randn(5, 2, 3, dtype=torch.float64)
        torch.testing.assert_close(fastrnn.RNN.from_torch(ref)(x)[0], ref(x)[0])
        print("ok")
        """
    )
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path))
    env.pop(backends.BACKEND_ENV, None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_gru_lstm_backend_choice_follows_the_same_rules(monkeypatch):
    """GRU / LSTM ops choose cpp or the reference with the RNN's chooser's environment read and warning."""
    x = torch.zeros(2, 1, 3)
    monkeypatch.setenv(backends.BACKEND_ENV, "triton")
    with pytest.raises(RuntimeError, match="FASTRNN_BACKEND=triton: fastrnn has no triton kernels for GRU/LSTM"):
        fastrnn.GRU(3, 4)(x)
    monkeypatch.setenv(backends.BACKEND_ENV, "cpp")
    with pytest.raises(RuntimeError, match="FASTRNN_BACKEND=cpp cannot run here: it supports float32"):
        backends.select_backend(x.half(), "GRU/LSTM")
    monkeypatch.setenv(backends.BACKEND_ENV, "nonsense")
    with pytest.raises(ValueError, match="is not a fastrnn backend"):
        fastrnn.GRU(3, 4)(x)
    monkeypatch.delenv(backends.BACKEND_ENV)
    monkeypatch.setattr(backends.CppBackend, "unavailable_reason", lambda self: "no compiler here")
    monkeypatch.setattr(backends, "_warned", set())
    with pytest.warns(RuntimeWarning, match=r"\(GRU/LSTM\): using the reference backend on cpu because cpp: no"):
        out = fastrnn.GRU(3, 4)(x)[0]
    assert out.shape == (2, 1, 4)
