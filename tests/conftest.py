import pytest
import torch

import fastrnn


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
