"""``from_torch`` / ``to_torch`` for every drop-in module (configuration, device, dtype and weights, both ways),
and for whole models: :func:`from_torch` and :func:`to_torch` swap every such submodule."""

from __future__ import annotations

import copy
import warnings
from typing import TypeVar

from torch import nn
from torch.nn.modules.module import _WrappedHook
from torch.nn.utils import parametrize

_M = TypeVar("_M", bound=nn.Module)

# torch class -> its fastrnn drop-in, filled as the drop-ins are defined (TorchConversion.__init_subclass__).
_DROP_INS: dict[type, type] = {}
# Every hook dictionary (and the flag saying which kind of backward hook) a module keeps in its __dict__.
_HOOK_ATTRS = tuple(name for name in vars(nn.Module()) if "hook" in name)


def copy_into(target: _M, source: nn.Module) -> _M:
    """``target`` with ``source``'s state_dict and training mode."""
    target.load_state_dict(source.state_dict())
    return target.train(source.training)


class TorchConversion:
    """Mixin for a drop-in module: it names its torch class in ``_torch_class`` and defines ``_config(self)``
    returning the constructor's ``(args, kwargs)``, written so that it also reads a torch module of that class
    (``from_torch`` calls it unbound on one)."""

    _torch_class: type

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "_torch_class" in cls.__dict__:  # not the classes torch.nn.utils.parametrize derives from a drop-in
            _DROP_INS[cls.__dict__["_torch_class"]] = cls

    @classmethod
    def from_torch(cls: type[_M], module: nn.Module) -> _M:
        """A fastrnn module with the configuration, device, dtype and weights of ``module`` (a copy; hooks and
        parametrizations are not carried: :func:`fastrnn.from_torch` carries them)."""
        args, kwargs = cls._config(module)  # type: ignore[attr-defined]
        return copy_into(cls(*args, **kwargs), module)

    def to_torch(self) -> nn.Module:
        """The torch module with this module's configuration, device, dtype and weights (a copy; see
        :func:`fastrnn.to_torch` for hooks and parametrizations)."""
        args, kwargs = self._config()  # type: ignore[attr-defined]
        return copy_into(self._torch_class(*args, **kwargs), self)  # type: ignore[arg-type]


def from_torch(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` with every ``torch.nn.RNN``, ``GRU``, ``LSTM``, ``RNNCell``, ``GRUCell`` and ``LSTMCell`` in it
    (at any depth, ``model`` itself included) replaced by fastrnn's drop-in for it.

    Each drop-in takes over the module's configuration, parameters (device, dtype and values), parametrizations
    (``torch.nn.utils.parametrize``, e.g. ``parametrizations.weight_norm`` / ``orthogonal``), buffers, hooks
    (forward, forward-pre, full backward, state_dict and load_state_dict hooks), other attributes and training
    mode, so outputs, gradients and ``state_dict`` keys are the original's. A module that appears under several
    names becomes one drop-in under all of them.

    With ``inplace=False`` (the default) ``model`` is deep-copied first and left untouched: the result shares no
    tensor with it. With ``inplace=True`` the submodules are replaced inside ``model`` and each drop-in holds the
    very Parameter objects (and hook dictionaries) of the module it replaces, so an optimizer built over
    ``model.parameters()`` and hook handles keep working. Either way the result is returned; when ``model`` is
    itself one of the six classes that is the new module (``model`` then cannot be replaced in place: it keeps
    its parameters, which the new module shares).

    Only those exact classes are converted: a user's subclass of one (extra methods, a different ``forward``)
    is left as it is, with a warning, since a plain fastrnn module would silently drop what the subclass adds;
    fastrnn's own modules are left as they are. Raises ``ValueError``, before changing anything, for a module
    whose state cannot be carried over: a non-full backward hook (``register_backward_hook``: its arguments
    are the gradients of the last autograd node inside the module, which are implementation details that
    differ between torch and fastrnn), or a weight that is not a parameter (the old-style
    ``torch.nn.utils.weight_norm`` / ``spectral_norm``, which recompute it in a forward pre-hook).
    """
    return _convert(model, inplace, {torch_cls: (fast, fast) for torch_cls, fast in _DROP_INS.items()},
                    "fastrnn.from_torch")


def to_torch(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` with every fastrnn ``RNN``, ``GRU``, ``LSTM``, ``RNNCell``, ``GRUCell`` and ``LSTMCell`` in it
    replaced by torch's class, for an artefact that loads and runs without fastrnn. The inverse of
    :func:`from_torch`, with the same rules: copy or in place, what is carried over, shared modules, subclasses
    (of fastrnn's classes here) left as they are with a warning, torch's modules left as they are, and the
    same errors."""
    return _convert(model, inplace, {fast: (fast._torch_class, fast) for fast in _DROP_INS.values()},
                    "fastrnn.to_torch")


def _base_class(module: nn.Module) -> type:
    """The module's class, seen through the subclass that ``torch.nn.utils.parametrize`` makes of it."""
    cls = type(module)
    return cls.__bases__[0] if parametrize.is_parametrized(module) else cls


def _convert(model: nn.Module, inplace: bool, targets: dict[type, tuple[type, type]], caller: str) -> nn.Module:
    """``targets`` maps a source class to (the class to build, the fastrnn class whose ``_config`` reads it)."""
    found, slots, left = _plan(model, targets, caller)
    for path, module in found.values():  # all of them before anything changes, and before a deepcopy can fail
        _check_convertible(module, targets[_base_class(module)][0], path or "the model")
    for message in left:
        warnings.warn(message, stacklevel=3)
    if not inplace:
        # A torch RNN with parametrized weights keeps its last forward's non-leaf weights in _flat_weights, which
        # deepcopy refuses; the drop-in rebuilds that list anyway.
        memo: dict = {id(m._flat_weights): [] for _, m in found.values() if isinstance(m, nn.RNNBase)}
        model = copy.deepcopy(model, memo)
        found, slots, _ = _plan(model, targets, caller)
    replaced = {key: _take_over(module, *targets[_base_class(module)]) for key, (_, module) in found.items()}
    for parent, name, child in slots:
        setattr(parent, name, replaced[id(child)])
    return replaced.get(id(model), model)


def _plan(model: nn.Module, targets: dict[type, tuple[type, type]], caller: str
          ) -> tuple[dict[int, tuple[str, nn.Module]], list[tuple[nn.Module, str, nn.Module]], list[str]]:
    """The modules to replace (by id: first name, module), every place one sits (parent, child name, module),
    and a warning for each subclass of a source class left as it is."""
    found: dict[int, tuple[str, nn.Module]] = {}
    slots: list[tuple[nn.Module, str, nn.Module]] = []
    left: list[str] = []
    seen: set[int] = set()

    def walk(module: nn.Module, path: str) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        cls = _base_class(module)
        if cls in targets:
            found[id(module)] = (path, module)
            return
        near = [source for source in targets if issubclass(cls, source)]
        if near:
            left.append(f"{caller}: {path or 'the model'} is a {cls.__module__}.{cls.__qualname__}, a subclass of "
                        f"{near[0].__module__}.{near[0].__qualname__}; only that exact class is converted, so it is "
                        "left as it is (a plain drop-in would lose what the subclass adds)")
        for name, child in module._modules.items():
            if child is None:
                continue
            if _base_class(child) in targets:
                slots.append((module, name, child))
            walk(child, f"{path}.{name}" if path else name)

    walk(model, "")
    return found, slots, left


def _check_convertible(module: nn.Module, target: type, path: str) -> None:
    cls = _base_class(module)
    what = f"cannot convert {path} ({cls.__module__}.{cls.__qualname__}) to {target.__module__}.{target.__qualname__}"
    if module._backward_hooks and not module._is_full_backward_hook:
        raise ValueError(f"{what}: it has a non-full backward hook (register_backward_hook), whose arguments are "
                         "the gradients of the last autograd node inside the module and differ between torch's "
                         "implementation and fastrnn's; use register_full_backward_hook")
    parametrized = set(module.parametrizations) if parametrize.is_parametrized(module) else set()
    weights = list(module._flat_weights_names) if isinstance(module, nn.RNNBase) else (
        ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if module.bias else []))
    plain = {n for n, p in module._parameters.items() if p is not None}
    missing = [n for n in weights if n not in plain and n not in parametrized]
    extra = sorted(plain - set(weights))
    if missing or extra:
        raise ValueError(f"{what}: {', '.join(missing + extra)} "
                         f"{'are' if len(missing + extra) > 1 else 'is'} not among its own or parametrized weights "
                         "(the old-style torch.nn.utils.weight_norm / spectral_norm replace a weight by a tensor a "
                         "forward pre-hook recomputes, which cannot be carried over); use "
                         "torch.nn.utils.parametrizations.weight_norm / spectral_norm, which are kept")


def _take_over(module: nn.Module, target: type, drop_in: type) -> nn.Module:
    """A ``target`` module built on the meta device that then takes ``module``'s own tensors, parametrizations,
    children, hooks and attributes (the same objects), so nothing is allocated or copied."""
    args, kwargs = drop_in._config(module)
    new = target(*args, **{**kwargs, "device": "meta"})
    if parametrize.is_parametrized(module):
        for name, parametrizations in module.parametrizations.items():
            # Registering a placeholder makes the parametrized class and its property; the real list replaces it.
            parametrize.register_parametrization(new, name, nn.Identity(), unsafe=True)
            new.parametrizations[name] = parametrizations
    for name, param in module._parameters.items():
        setattr(new, name, param)
    for name, child in module._modules.items():
        if name != "parametrizations":
            new._modules[name] = child
    new._buffers = module._buffers
    new._non_persistent_buffers_set = module._non_persistent_buffers_set
    for attr in _HOOK_ATTRS:
        setattr(new, attr, getattr(module, attr))
    for key, hook in new._load_state_dict_pre_hooks.items():
        if isinstance(hook, _WrappedHook) and hook.with_module:  # it holds a weak reference to the old module
            new._load_state_dict_pre_hooks[key] = _WrappedHook(hook.hook, new)
    for name, value in vars(module).items():
        if name not in vars(new):  # attributes users or tools (qconfig, ...) set on the instance
            setattr(new, name, value)
    new.training = module.training
    if isinstance(new, nn.RNNBase):
        new._init_flat_weights()
    return new
