"""Parity helpers shared by the tests and the benchmark's correctness gate.

One run returns every output and gradient as a dict (``output``, ``h_n``, ``grad_input``, ``grad_hx`` and
``grad_<parameter>``), with gradients flowing from both ``output`` and ``h_n``; comparisons go key by key
so a failure names the tensor.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

Input = Union[Tensor, PackedSequence]
State = Union[Tensor, tuple[Tensor, Tensor]]


def _to(x: Input, dtype: torch.dtype) -> Input:
    if isinstance(x, PackedSequence):
        return x._replace(data=x.data.to(dtype))
    return x.to(dtype)


def _data(x: Input) -> Tensor:
    return x.data if isinstance(x, PackedSequence) else x


def outputs_and_grads(
    module: nn.Module,
    input: Input,
    hx: Optional[State] = None,
    dtype: Optional[torch.dtype] = None,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Runs ``module(input, hx)`` forward and backward and returns every result by name.

    ``dtype`` casts the module, input and hx first (float64 for the oracle). The upstream gradients are
    drawn from ``seed``, so two modules run with the same seed receive the same ones. An LSTM's state
    ``(h, c)`` gives ``h_n``/``c_n`` and ``grad_hx``/``grad_cx``.
    """
    if dtype is not None:
        module = module.to(dtype)
        input = _to(input, dtype)
    states = [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]
    states = [s.to(dtype) if dtype is not None else s for s in states]
    leaf = _data(input).detach().clone().requires_grad_(True)
    run_input = input._replace(data=leaf) if isinstance(input, PackedSequence) else leaf
    state_leaves = [s.detach().clone().requires_grad_(True) for s in states]
    if not state_leaves:
        result = module(run_input)
    else:
        result = module(run_input, tuple(state_leaves) if isinstance(hx, tuple) else state_leaves[0])
    out, finals = result if isinstance(result, tuple) else (result, None)
    if isinstance(out, tuple) and not isinstance(out, PackedSequence):  # an LSTMCell returns (h', c')
        out, finals = out[0], (out[1],)
    finals = [] if finals is None else list(finals) if isinstance(finals, tuple) else [finals]
    out = _data(out)
    generator = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out)).sum()
    for final in finals:
        loss = loss + (final * torch.randn(final.shape, generator=generator, dtype=torch.float64).to(final)).sum()
    names = [name for name, _ in module.named_parameters()]
    wrt = [leaf] + state_leaves + [p for _, p in module.named_parameters()]
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    results = {"output": out.detach()}
    for name, final in zip(("h_n", "c_n"), finals):
        results[name] = final.detach()
    results["grad_input"] = grads[0]
    for name, grad in zip(("grad_hx", "grad_cx"), grads[1 : 1 + len(state_leaves)]):
        results[name] = grad
    for name, grad in zip(names, grads[len(grads) - len(names) :]):
        results[f"grad_{name}"] = grad
    return results


def max_error(a: Tensor, b: Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def parity_failures(
    candidate: dict[str, Tensor],
    baseline: dict[str, Tensor],
    oracle: dict[str, Tensor],
    factor: float = 2.0,
    floor_eps: float = 32.0,
) -> list[str]:
    """Keys where ``err(candidate) > factor * err(baseline) + floor`` against the float64 ``oracle``.

    ``floor = floor_eps * eps(candidate dtype) * max(1, max|oracle|)``: the error a handful of roundings in
    the candidate's dtype may make at that magnitude, for tensors where the baseline happens to be exact.
    """
    failures = []
    if candidate.keys() != oracle.keys():
        return [f"keys differ: {sorted(candidate)} vs {sorted(oracle)}"]
    for key, ref in oracle.items():
        got = candidate[key]
        if got is None or ref is None:
            if (got is None) != (ref is None):
                failures.append(f"{key}: one side has no gradient")
            continue
        if got.shape != ref.shape:
            failures.append(f"{key}: shape {tuple(got.shape)} vs {tuple(ref.shape)}")
            continue
        scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
        floor = floor_eps * torch.finfo(got.dtype).eps * scale
        err, base = max_error(got, ref), max_error(baseline[key], ref)
        if not err <= factor * base + floor:
            failures.append(f"{key}: err {err:.3g} > {factor} * torch err {base:.3g} + {floor:.3g}")
    return failures
