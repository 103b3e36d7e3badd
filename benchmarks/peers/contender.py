"""What one implementation of a case offers the gate and the timer, and the gate itself.

The gate's results are a dict by name, as in ``fastrnn.testing``: ``output`` [T, B, H], ``h_n`` [1, B, H], an
LSTM's ``c_n`` [1, B, H], and for training ``grad_input`` [T, B, H_in] and ``grad_<parameter>`` (torch's names
and layouts), the gradients of ``sum(result * weight)`` over the outputs with the same random ``weights`` for
every contender. A contender is judged against torch's module in float32 and float64 by
``fastrnn.testing.parity_failures``: its error may be at most twice torch's plus a few roundings.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from fastrnn.testing import parity_failures

OUTPUTS = ("output", "h_n", "c_n")


@dataclass
class Contender:
    """One implementation of a case, built from torch's module's weights.

    ``infer`` / ``train``: one call as timed (a forward; a forward and the gradients of the sum of the output).
    ``results`` / ``train_results``: the gate's dict for that mode, given the upstream ``weights`` (see the module
    docstring); ``None`` where the contender has no such mode. ``context`` is entered around the contender's
    gate and timed blocks; ``ran`` says what ran, for the table.
    """

    name: str
    ran: str
    infer: Callable[[], object]
    results: Callable[[dict[str, Tensor]], dict[str, Tensor]]
    train: Optional[Callable[[], object]] = None
    train_results: Optional[Callable[[dict[str, Tensor]], dict[str, Tensor]]] = None
    context: Callable[[], contextlib.AbstractContextManager] = field(default=contextlib.nullcontext)


def failed_contender(name: str, error: Exception, trains: bool) -> Contender:
    """A peer that could not be built: its gate fails with the builder's error, so it is reported, not timed."""

    def results(weights):
        raise error

    return Contender(name, "-", infer=lambda: None, results=results, train=(lambda: None) if trains else None,
                     train_results=results if trains else None)


def upstream_weights(module: nn.Module, x: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """Random float64 weights for each output of ``module(x)``, the same for every contender."""
    with torch.no_grad():
        out, finals = module(x)
    finals = finals if isinstance(finals, tuple) else (finals,)
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(t.shape, generator=generator, dtype=torch.float64)
            for name, t in zip(OUTPUTS, (out, *finals))}


def module_results(module: nn.Module, x: Tensor, weights: dict[str, Tensor], grads: bool) -> dict[str, Tensor]:
    """A torch module's gate dict (outputs, and with ``grads`` the gradients of the weighted sum)."""
    leaf = x.detach().clone().requires_grad_(grads)
    with torch.set_grad_enabled(grads):
        out, finals = module(leaf)
    finals = finals if isinstance(finals, tuple) else (finals,)
    results = dict(zip(OUTPUTS, (out, *finals)))
    if grads:
        loss = sum((t * weights[name].to(t)).sum() for name, t in results.items())
        names = [name for name, _ in module.named_parameters()]
        found = torch.autograd.grad(loss, [leaf, *module.parameters()])
        results.update(grad_input=found[0], **{f"grad_{n}": g for n, g in zip(names, found[1:])})
    return {name: t.detach() for name, t in results.items()}


def float64_oracle(module: nn.Module, x: Tensor, weights: dict[str, Tensor], grads: bool) -> dict[str, Tensor]:
    """``module_results`` of a float64 copy of ``module``: what every contender's error is measured from."""
    return module_results(copy.deepcopy(module).double(), x.double(), weights, grads)


def gate(contender: Contender, mode: str, weights: dict[str, Tensor], reference: dict[str, Tensor],
         oracle: dict[str, Tensor]) -> list[str]:
    """[] when ``contender``'s results for ``mode`` are as close to the float64 ``oracle`` as torch's
    ``reference`` is (``parity_failures``); else what failed, naming the tensor. An error while running counts
    as a failure."""
    results = contender.results if mode == "inference" else contender.train_results
    if results is None:
        return [f"no {mode} mode"]
    keys = [k for k in oracle if mode == "training" or k in OUTPUTS]
    try:
        with contender.context():
            got = results(weights)
    except Exception as e:  # a peer that cannot run the case fails its gate, with its own message
        return [f"raised {type(e).__name__}: {str(e)[:200]}"]
    return parity_failures(got, {k: reference[k] for k in keys}, {k: oracle[k] for k in keys})
