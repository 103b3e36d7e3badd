"""``from_torch`` / ``to_torch`` for every drop-in module: configuration, device, dtype and weights, both ways."""

from typing import TypeVar

from torch import nn

_M = TypeVar("_M", bound=nn.Module)


def copy_into(target: _M, source: nn.Module) -> _M:
    """``target`` with ``source``'s state_dict and training mode."""
    target.load_state_dict(source.state_dict())
    return target.train(source.training)


class TorchConversion:
    """Mixin for a drop-in module: it names its torch class in ``_torch_class`` and defines ``_config(self)``
    returning the constructor's ``(args, kwargs)``, written so that it also reads a torch module of that class
    (``from_torch`` calls it unbound on one)."""

    _torch_class: type

    @classmethod
    def from_torch(cls: type[_M], module: nn.Module) -> _M:
        """A fastrnn module with the configuration, device, dtype and weights of ``module``."""
        args, kwargs = cls._config(module)  # type: ignore[attr-defined]
        return copy_into(cls(*args, **kwargs), module)

    def to_torch(self) -> nn.Module:
        """The torch module with this module's configuration, device, dtype and weights."""
        args, kwargs = self._config()  # type: ignore[attr-defined]
        return copy_into(self._torch_class(*args, **kwargs), self)  # type: ignore[arg-type]
