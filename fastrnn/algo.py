"""The CUDA algorithm finder: fastrnn is never slower than the ``torch.nn.RNN`` (cuDNN) it replaces.

Like ``torch.backends.cudnn.benchmark``: on CUDA, the first call of each *shape class* (hidden size, batch
and sequence length rounded up to powers of two, dtype, packed or not, layers, directions, nonlinearity,
training or not, TF32 on or off, device) runs the whole call both ways -- fastrnn's layers (the fused
Triton kernels) and torch's own cuDNN RNN (``torch._VF.rnn_tanh`` / ``rnn_relu``, what ``torch.nn.RNN``
calls, with the same weights) -- times each (forward, plus backward when gradients are wanted, on detached
copies and with the RNG state restored, so the user's call is unchanged), and caches the winner for the
process. The choice is made per whole call, not per layer, so cuDNN's own backward is used when it wins.

``FASTRNN_CUDA_ALGO=auto|triton|cudnn`` forces one (``triton`` means fastrnn's backends as chosen by
``FASTRNN_BACKEND``). ``auto`` with ``FASTRNN_BACKEND`` set keeps fastrnn's path: a forced backend is
never second-guessed. Nothing is timed while a CUDA graph is being captured or while torch.compile /
export traces: there the cached choice is used as a constant, and fastrnn's path when none is cached.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Callable, Optional

import torch
from torch import Tensor

from fastrnn.backends import forced_backend

ALGO_ENV = "FASTRNN_CUDA_ALGO"
ALGOS = ("auto", "triton", "cudnn")
Timer = Callable[[Callable[[], object]], float]

_choices: dict[tuple, str] = {}
_timings: dict[tuple, dict[str, float]] = {}
_last: dict[str, str] = {}
_inside = threading.local()  # set while the finder times fastrnn's own path, which calls the hook again


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def shape_class(input: Tensor, hx: Tensor, weights, *, has_biases: bool, num_layers: int, dropout: float,
                training: bool, bidirectional: bool, nonlinearity: str, batch_sizes: Optional[Tensor]) -> tuple:
    """The cache key of a call: sizes bucketed to powers of two, everything else exact."""
    steps = batch_sizes.numel() if batch_sizes is not None else input.size(0)
    grad = torch.is_grad_enabled() and (input.requires_grad or hx.requires_grad
                                        or any(w.requires_grad for w in weights))
    return (str(input.device), str(input.dtype), int(hx.size(-1)), _pow2(hx.size(1)), _pow2(steps),
            batch_sizes is not None, int(num_layers), bool(bidirectional), nonlinearity, bool(has_biases),
            bool(training and dropout > 0), grad, bool(torch.backends.cudnn.allow_tf32))


def forced_algo() -> str:
    value = os.environ.get(ALGO_ENV, "auto").strip().lower() or "auto"
    if value not in ALGOS:
        raise ValueError(f"{ALGO_ENV}={value!r} is not one of {', '.join(ALGOS)}")
    return value


def cudnn_rnn(input: Tensor, hx: Tensor, weights, *, has_biases: bool, num_layers: int, dropout: float,
              training: bool, bidirectional: bool, nonlinearity: str,
              batch_sizes: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """The call as ``torch.nn.RNN`` makes it (time-major input, or packed data with ``batch_sizes``)."""
    fn = torch._VF.rnn_tanh if nonlinearity == "tanh" else torch._VF.rnn_relu
    weights = list(weights)
    if batch_sizes is None:
        args = (input, hx, weights, has_biases, num_layers, dropout, training, bidirectional, False)
    else:
        args = (input, batch_sizes, hx, weights, has_biases, num_layers, dropout, training, bidirectional)
    if torch.compiler.is_compiling():  # dynamo cannot trace catch_warnings; the graph holds the aten op
        return fn(*args)
    with warnings.catch_warnings():
        # cuDNN copies parameters that are not one flat buffer and says so; fastrnn never flattens them.
        warnings.filterwarnings("ignore", message=".*contiguous chunk of memory.*")
        return fn(*args)


cudnn_rnn.algo = "cudnn"


def cuda_event_timer(fn: Callable[[], object], repeats: int = 3) -> float:
    """Seconds per call: one untimed run (compilation, autotuning), then the best of ``repeats``."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return best


def choose(key: tuple, candidates: dict[str, Callable[[], object]], timer: Optional[Timer] = None) -> str:
    """The cached winner for ``key``, timing every candidate with ``timer`` on a miss. Ties go to triton,
    and so does a candidate that fails (its error is re-raised only when every candidate fails)."""
    if key in _choices:
        return _choices[key]
    timer = timer or cuda_event_timer
    times: dict[str, float] = {}
    errors = []
    for name, fn in candidates.items():
        try:
            times[name] = timer(fn)
        except Exception as error:  # e.g. cuDNN refusing a configuration
            errors.append(error)
    if not times:
        raise errors[0]
    winner = min(times, key=lambda name: (times[name], name != "triton"))
    _choices[key], _timings[key] = winner, times
    return winner


def choices() -> dict[tuple, tuple[str, dict[str, float]]]:
    """Every shape class decided in this process: ``key -> (winner, seconds per call of each)``."""
    return {key: (winner, dict(_timings.get(key, {}))) for key, winner in _choices.items()}


def last_choice(input: Tensor) -> Optional[str]:
    """What the most recent call on this device ran, "triton" or "cudnn" (for the benchmark table)."""
    return _last.get(str(input.device))


def _note(input: Tensor, algo: str, tracing: bool) -> None:
    if not tracing:
        _last[str(input.device)] = algo


def _cached(key: tuple) -> str:
    return _choices.get(key, "triton")


try:  # torch.compile / export: the lookup runs at trace time and its answer is a constant of the graph
    _traced_choice = torch._dynamo.assume_constant_result(_cached)
except AttributeError:  # pragma: no cover - torch without dynamo
    _traced_choice = _cached


def _timing_run(impl: Callable, args: tuple, kwargs: dict, grad: bool) -> Callable[[], object]:
    """One call of ``impl`` on detached copies (backward too when ``grad``), leaving the user's tensors,
    their gradients and the RNG untouched."""
    input, hx, weights = args
    leaves = [t.detach().requires_grad_(grad and t.is_floating_point()) for t in (input, hx, *weights)]

    def run() -> object:
        _inside.active = True
        try:
            devices = [input.device] if input.is_cuda else []
            with torch.random.fork_rng(devices=devices), torch.enable_grad() if grad else torch.no_grad():
                out, h_n = impl(leaves[0], leaves[1], leaves[2:], **kwargs)
                if grad:
                    wanted = [t for t in leaves if t.requires_grad]
                    torch.autograd.grad(out.float().sum() + h_n.float().sum(), wanted, allow_unused=True)
        finally:
            _inside.active = False
        return None

    run.algo = getattr(impl, "algo", "triton")  # lets a test's fake timer tell the candidates apart
    return run


def cuda_call(fastrnn_impl: Callable, input: Tensor, hx: Tensor, weights, timer: Optional[Timer] = None,
              **kwargs) -> Optional[tuple[Tensor, Tensor]]:
    """cuDNN's result when the finder picks cuDNN for this call, else None (run fastrnn's path).

    ``fastrnn_impl(input, hx, weights, **kwargs)`` is fastrnn's own path for the call (used to time it).
    """
    tracing = torch.compiler.is_compiling() or type(input) is not Tensor
    if not tracing and getattr(_inside, "active", False):
        return None
    forced = forced_algo()
    if forced == "triton" or (forced == "auto" and forced_backend()):
        _note(input, "triton", tracing)
        return None
    if forced == "auto":
        key = shape_class(input, hx, weights, **kwargs)
        if tracing:
            algo = _traced_choice(key)
        elif key in _choices or (input.is_cuda and torch.cuda.is_current_stream_capturing()):
            algo = _cached(key)
        else:
            grad = key[11]
            algo = choose(key, {
                "triton": _timing_run(fastrnn_impl, (input, hx, weights), kwargs, grad),
                "cudnn": _timing_run(cudnn_rnn, (input, hx, weights), kwargs, grad),
            }, timer)
        if algo != "cudnn":
            _note(input, "triton", tracing)
            return None
    _note(input, "cudnn", tracing)
    return cudnn_rnn(input, hx, weights, **kwargs)
