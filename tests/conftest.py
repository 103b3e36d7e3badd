import os

import torch

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; it must be chosen before
# triton is first imported (fastrnn imports it lazily).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fastrnn  # noqa: E402


def pytest_configure(config):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.fixture
def use_backend(monkeypatch):
    """Forces a backend for one test, skipping it with the reason when that backend cannot run here."""

    def force(name: str) -> None:
        if name not in fastrnn.available_backends():
            from fastrnn.backends import _BACKENDS

            reason = _BACKENDS[name].unavailable_reason() if name in _BACKENDS else "not installed"
            pytest.skip(f"backend {name} is not available: {reason}")
        monkeypatch.setenv("FASTRNN_BACKEND", name)

    return force


@pytest.fixture
def entry_calls(monkeypatch):
    """``entry_calls(name)`` watches one of fastrnn.modules' cached getters of a C++ entry (``_stack_if_plain``,
    ``_cell_if_plain``, which every module's plain call reaches) and returns a list
    that gets, per call of the entry, whether it took the call."""
    from fastrnn import modules as default_owner

    def watch(name: str, modules=default_owner) -> list[bool]:
        entry = getattr(modules, name)()
        assert entry is not None, f"the built extension has no {name}"
        taken: list[bool] = []

        def spy(*args):
            result = entry(*args)
            taken.append(result is not None)
            return result

        monkeypatch.setattr(modules, name, lambda: spy)
        return taken

    return watch
