"""What a CUDA call runs: fastrnn's Triton kernels or torch's own cuDNN RNN (``torch.nn.RNN``'s path).

Safe default until proven. ``PROVEN_ARCHS`` lists the GPU architectures (compute capability) on which
``benchmarks/gpu_check.sh`` has passed, with the commit and date. With ``FASTRNN_CUDA_ALGO=auto`` (the
default) a call on an architecture not in the list runs torch's cuDNN RNN (``torch._VF.rnn_tanh`` /
``rnn_relu`` with the same weights: torch.nn.RNN's own result) and says so once per architecture, with how
to opt in; on a proven architecture ``auto`` is ``finder``.

``finder``, like ``torch.backends.cudnn.benchmark``: the first call of each *shape class* (hidden size, batch
and sequence length rounded up to powers of two, dtype, autocast dtype, packed or not, layers, directions,
nonlinearity, training or not, TF32 on or off, device) runs the whole call both ways on detached copies
(forward, plus backward when gradients are wanted, with the RNG state restored, so the user's call is
unchanged), times each, and checks fastrnn's results against cuDNN's from the same runs: output, h_n and,
when training, the gradients of input, hx and every weight for one fixed random upstream gradient. A
mismatch beyond ``tolerance``, a non-finite value where cuDNN's is finite, or an exception makes cuDNN the
choice for that class, with one warning naming the class and what was found; otherwise the faster wins
(ties to fastrnn). The choice is per whole call, so cuDNN's own backward is used when it wins. With dropout
in training the two draw different masks, so the check runs both once more without dropout.

``FASTRNN_CUDA_ALGO=triton`` runs fastrnn's backends (as ``FASTRNN_BACKEND`` picks them) anywhere, unchecked;
``cudnn`` runs torch's. ``auto`` or ``finder`` with ``FASTRNN_BACKEND`` set keeps fastrnn's path: a forced
backend is never second-guessed. Nothing is timed while a CUDA graph is being captured or while torch.compile / export
traces: there the cached choice is used as a constant (fastrnn's path when none is cached under ``finder``).
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from typing import Callable, Optional

import torch
from torch import Tensor

from fastrnn.backends import forced_backend

ALGO_ENV = "FASTRNN_CUDA_ALGO"
ALGOS = ("auto", "finder", "triton", "cudnn")
# (major, minor) compute capability -> (commit, date) at which benchmarks/gpu_check.sh passed on it.
# Empty: the kernels have not yet run on any GPU. gpu_check.sh prints the entry to add when it passes.
PROVEN_ARCHS: dict[tuple[int, int], tuple[str, str]] = {}
REFERENCE = "cudnn"
Timer = Callable[[Callable[[], object]], float]
Results = dict[str, Optional[Tensor]]

_choices: dict[tuple, str] = {}
_timings: dict[tuple, dict[str, float]] = {}
_rejections: dict[tuple, str] = {}
_last: dict[str, str] = {}
_warned: set[str] = set()
_inside = threading.local()  # set while the finder times fastrnn's own path, which calls the hook again


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _autocast_dtype() -> Optional[str]:
    return str(torch.get_autocast_dtype("cuda")) if torch.is_autocast_enabled("cuda") else None


def shape_class(input: Tensor, hx: Tensor, weights, *, has_biases: bool, num_layers: int, dropout: float,
                training: bool, bidirectional: bool, nonlinearity: str, batch_sizes: Optional[Tensor]) -> tuple:
    """The cache key of a call: sizes bucketed to powers of two, everything else exact."""
    steps = batch_sizes.numel() if batch_sizes is not None else input.size(0)
    grad = torch.is_grad_enabled() and (input.requires_grad or hx.requires_grad
                                        or any(w.requires_grad for w in weights))
    return (str(input.device), str(input.dtype), int(hx.size(-1)), _pow2(hx.size(1)), _pow2(steps),
            batch_sizes is not None, int(num_layers), bool(bidirectional), nonlinearity, bool(has_biases),
            bool(training and dropout > 0), grad, bool(torch.backends.cudnn.allow_tf32), _autocast_dtype())


def describe(key: tuple) -> str:
    """A shape class in words, for warnings."""
    device, dtype, hidden, batch, steps, packed, layers, bidirectional, act, bias, dropout, grad, tf32 = key[:13]
    parts = [f"H={hidden}", f"B<={batch}", f"T<={steps}", dtype.removeprefix("torch."),
             f"{layers} layer{'s' if layers > 1 else ''}", "bidirectional" if bidirectional else "unidirectional",
             act, "packed" if packed else "padded", "training" if grad else "inference"]
    parts += (["dropout"] if dropout else []) + ([] if bias else ["no bias"])
    parts += [f"autocast {key[13].removeprefix('torch.')}"] if len(key) > 13 and key[13] else []
    return ", ".join(parts + [f"TF32 {'on' if tf32 else 'off'}", device])


def forced_algo() -> str:
    value = os.environ.get(ALGO_ENV, "auto").strip().lower() or "auto"
    if value not in ALGOS:
        raise ValueError(f"{ALGO_ENV}={value!r} is not one of {', '.join(ALGOS)}")
    return value


def device_arch(device: torch.device) -> Optional[tuple[int, int]]:
    """The compute capability of a CUDA device, None for any other device."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return int(major), int(minor)


def _arch_name(arch: Optional[tuple[int, int]]) -> str:
    return f"sm_{arch[0]}{arch[1]}" if arch else "no CUDA architecture"


def _auto(device: str) -> str:
    """What ``auto`` means on this device: "finder" on a proven architecture, else "cudnn" (said once)."""
    where = torch.device(device)
    arch = device_arch(where)
    if arch in PROVEN_ARCHS:
        return "finder"
    name = _arch_name(arch)
    if name not in _warned:
        _warned.add(name)
        gpu = f"{torch.cuda.get_device_name(where)}, " if where.type == "cuda" else ""
        proven = ", ".join(f"{_arch_name(a)} ({c}, {d})" for a, (c, d) in sorted(PROVEN_ARCHS.items())) or "none yet"
        warnings.warn(
            f"fastrnn: its Triton kernels are not proven on this GPU ({gpu}{name}; benchmarks/gpu_check.sh has "
            f"passed on: {proven}), so fastrnn.RNN runs torch's cuDNN RNN here with the same weights. To run "
            f"fastrnn's kernels set {ALGO_ENV}=finder (times both per shape class, checks fastrnn's results "
            f"against cuDNN's and keeps the faster) or {ALGO_ENV}=triton (always the kernels).",
            RuntimeWarning, stacklevel=5)
    return "cudnn"


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


def compute_eps(dtype: torch.dtype) -> float:
    """The relative precision the two implementations compute in: float16 2^-10, bfloat16 2^-7; float32
    2^-23, or 2^-10 when TF32 is allowed for cuDNN or the recurrence (``torch.backends.cudnn.allow_tf32``) or
    for fastrnn's input projection (``torch.backends.cuda.matmul.allow_tf32``: TF32 keeps 10 mantissa
    bits), or 2^-7 under ``torch.set_float32_matmul_precision("medium")`` (bfloat16 products)."""
    if dtype != torch.float32:
        return torch.finfo(dtype).eps
    if torch.get_float32_matmul_precision() == "medium":
        return torch.finfo(torch.bfloat16).eps
    if torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32:
        return 2.0**-10
    return torch.finfo(torch.float32).eps


def tolerance(dtype: torch.dtype, steps: int, num_layers: int) -> float:
    """The largest error, relative to ``max(1, max |cuDNN's tensor|)``, that fastrnn's output, h_n or any
    gradient may show against cuDNN's before the finder calls it a mismatch:
    ``min(0.25, 16 * compute_eps(dtype) * (log2(T rounded up to a power of two) + num_layers))``.

    Two correct implementations differ by rounding, which grows slowly with the number of steps and layers
    it passes through: torch's float32 and float16 CPU RNNs against fastrnn's op and against float32, over
    T = 10..1000, H = 32..1024, 1-2 layers, differ by at most 10 units of their precision on this scale
    (grad_weight_hh at T = 1000 the most); the factor 16 leaves a margin above that. A wrong offset, a
    missed row or step, a wrong sign or uninitialised memory is off by the size of the values themselves,
    far above it; the 0.25 cap keeps bfloat16's check meaningful. float32 without TF32 at T = 1000, one
    layer: 2.1e-5; TF32 or float16: 0.17.
    """
    return min(0.25, 16 * compute_eps(dtype) * (math.log2(_pow2(max(steps, 1))) + num_layers))


def mismatch(got: Results, want: Results, tol: float) -> Optional[str]:
    """What differs between fastrnn's results ``got`` and cuDNN's ``want`` (same keys), or None: a shape, a
    non-finite value where cuDNN's is finite, or a largest error above ``tol * max(1, max |cuDNN's|)`` over
    the elements where cuDNN's is finite. A gradient one side did not produce counts as zeros."""
    problems = []
    for name, ref in want.items():
        out = got.get(name)
        if out is None and ref is None:
            continue
        out = torch.zeros_like(ref) if out is None else out
        ref = torch.zeros_like(out) if ref is None else ref
        if out.shape != ref.shape:
            problems.append(f"{name} has shape {tuple(out.shape)} where cuDNN's has {tuple(ref.shape)}")
            continue
        if ref.numel() == 0:
            continue
        a, b = out.detach().float(), ref.detach().float()
        finite = torch.isfinite(b)
        bad = int((finite & ~torch.isfinite(a)).sum())
        if bad:
            problems.append(f"{name} has {bad} non-finite values where cuDNN's are finite")
            continue
        err = float(torch.where(finite, (a - b).abs(), 0.0).max())
        scale = max(1.0, float(torch.where(finite, b.abs(), 0.0).max()))
        if not err <= tol * scale:
            problems.append(f"{name} is off by {err:.3g}, above the tolerance {tol:.3g} x {scale:.3g}")
    return "; ".join(problems) or None


def _result_of(name: str, candidates: dict, checks: Optional[dict]) -> Results:
    """The results a candidate's check uses: its own check run when given, else its timed run's first."""
    if checks and name in checks:
        checks[name]()
        return checks[name].result
    run = candidates[name]
    if getattr(run, "result", None) is None:
        run()
    return run.result


def _reject(key: tuple, problem: str) -> None:
    _rejections[key] = problem
    warnings.warn(
        f"fastrnn: the CUDA algorithm finder rejected fastrnn's Triton kernels for the shape class "
        f"({describe(key)}): {problem}. Calls of this class run torch's cuDNN RNN for the rest of the process; "
        "please report this with the shape class.", RuntimeWarning, stacklevel=5)


def choose(key: tuple, candidates: dict[str, Callable[[], object]], timer: Optional[Timer] = None,
           tol: Optional[float] = None, checks: Optional[dict[str, Callable[[], object]]] = None) -> str:
    """The cached winner for ``key``, timing every candidate with ``timer`` on a miss, cuDNN first.

    With ``tol``, every other candidate is checked against cuDNN (``mismatch``) on the results its timing
    runs recorded (``run.result``; ``checks[name]`` instead when given) and loses with one warning when it
    differs or raised. A cuDNN that raises loses silently (torch.nn.RNN would raise there too); when every
    candidate raised, fastrnn's error is re-raised. Ties go to triton.
    """
    if key in _choices:
        return _choices[key]
    timer = timer or cuda_event_timer
    times: dict[str, float] = {}
    errors: dict[str, Exception] = {}
    for name in sorted(candidates, key=lambda n: n != REFERENCE):
        try:
            times[name] = timer(candidates[name])
        except Exception as error:  # e.g. cuDNN refusing a configuration, or a kernel failing to launch
            errors[name] = error
    problems = {name: f"it raised {type(error).__name__}: {error}" for name, error in errors.items()
                if name != REFERENCE}
    if tol is not None and REFERENCE in times:
        want = _result_of(REFERENCE, candidates, checks)
        for name in [n for n in times if n != REFERENCE]:
            try:
                problem = mismatch(_result_of(name, candidates, checks), want, tol)
            except Exception as error:
                problem = f"its check raised {type(error).__name__}: {error}"
            if problem is not None:
                problems[name] = problem
                del times[name]
    if not times:
        raise errors.get("triton") or next(iter(errors.values()))
    if REFERENCE in times:
        for problem in problems.values():
            _reject(key, problem)
    winner = min(times, key=lambda name: (times[name], name != "triton"))
    _choices[key], _timings[key] = winner, times
    return winner


def choices() -> dict[tuple, tuple[str, dict[str, float]]]:
    """Every shape class decided in this process: ``key -> (winner, seconds per call of each timed one)``."""
    return {key: (winner, dict(_timings.get(key, {}))) for key, winner in _choices.items()}


def rejections() -> dict[tuple, str]:
    """Shape classes whose check rejected fastrnn's kernels: ``key -> what was found``."""
    return dict(_rejections)


def last_choice(input: Tensor) -> Optional[str]:
    """What the most recent call on this device ran, "triton" or "cudnn" (for the benchmark table)."""
    return _last.get(str(input.device))


def _note(input: Tensor, algo: str, tracing: bool) -> None:
    if not tracing:
        _last[str(input.device)] = algo


def _cached(key: tuple) -> str:
    return _choices.get(key, "triton")


try:  # torch.compile / export: these run at trace time and their answers are constants of the graph
    _traced_choice = torch._dynamo.assume_constant_result(_cached)
    _traced_auto = torch._dynamo.assume_constant_result(_auto)
except AttributeError:  # pragma: no cover - torch without dynamo
    _traced_choice, _traced_auto = _cached, _auto


def weight_names(num_layers: int, bidirectional: bool, has_biases: bool) -> list[str]:
    """torch.nn.RNN's parameter names, in the order of its flat weights."""
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")[: 4 if has_biases else 2]
    return [f"{kind}_l{layer}{suffix}" for layer in range(num_layers)
            for suffix in ("", "_reverse")[: 2 if bidirectional else 1] for kind in kinds]


def _upstream() -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Fixed random upstream gradients for output and h_n, the same for every candidate of a call."""
    made: dict = {}

    def get(out: Tensor, h_n: Tensor) -> tuple[Tensor, Tensor]:
        key = (out.shape, h_n.shape, out.dtype, str(out.device))
        if key not in made:
            gen = torch.Generator(device=out.device).manual_seed(0)
            made[key] = tuple(torch.randn(t.shape, generator=gen, device=t.device).to(t.dtype) for t in (out, h_n))
        return made[key]

    return get


def _timing_run(impl: Callable, args: tuple, kwargs: dict, grad: bool,
                upstream: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]) -> Callable[[], object]:
    """One call of ``impl`` on detached copies (backward too when ``grad``, from ``upstream``'s gradients),
    leaving the user's tensors, their gradients and the RNG untouched. The first run's output, h_n and
    gradients (``grad_input``, ``grad_hx``, ``grad_<weight name>``) are kept in ``run.result``."""
    input, hx, weights = args
    leaves = [t.detach().requires_grad_(grad and t.is_floating_point()) for t in (input, hx, *weights)]
    names = ["input", "hx"] + weight_names(kwargs["num_layers"], kwargs["bidirectional"], kwargs["has_biases"])

    def run() -> object:
        _inside.active = True
        try:
            devices = [input.device] if input.is_cuda else []
            with torch.random.fork_rng(devices=devices), torch.enable_grad() if grad else torch.no_grad():
                out, h_n = impl(leaves[0], leaves[1], leaves[2:], **kwargs)
                found: Results = {"output": out.detach(), "h_n": h_n.detach()}
                if grad:
                    wanted = [(n, t) for n, t in zip(names, leaves) if t.requires_grad]
                    grads = torch.autograd.grad((out, h_n), [t for _, t in wanted], upstream(out, h_n),
                                                allow_unused=True)
                    found.update({f"grad_{n}": g for (n, _), g in zip(wanted, grads)})
        finally:
            _inside.active = False
        if run.result is None:
            run.result = found
        return None

    run.algo = getattr(impl, "algo", "triton")  # lets a test's fake timer tell the candidates apart
    run.result = None
    return run


def cuda_call(fastrnn_impl: Callable, input: Tensor, hx: Tensor, weights, timer: Optional[Timer] = None,
              **kwargs) -> Optional[tuple[Tensor, Tensor]]:
    """cuDNN's result when this call runs cuDNN, else None (run fastrnn's path).

    ``fastrnn_impl(input, hx, weights, **kwargs)`` is fastrnn's own path for the call (timed and checked by
    the finder). Shapes as :func:`fastrnn.functional.rnn`.
    """
    tracing = torch.compiler.is_compiling() or type(input) is not Tensor
    if not tracing and getattr(_inside, "active", False):
        return None
    algo = forced_algo()
    if algo in ("auto", "finder") and forced_backend():
        algo = "triton"
    elif algo == "auto":
        algo = _traced_auto(str(input.device)) if tracing else _auto(str(input.device))
    if algo == "finder":
        key = shape_class(input, hx, weights, **kwargs)
        if tracing:
            algo = _traced_choice(key)
        elif key in _choices or (input.is_cuda and torch.cuda.is_current_stream_capturing()):
            algo = _cached(key)
        else:
            grad, upstream = key[11], _upstream()
            candidates = {name: _timing_run(impl, (input, hx, weights), kwargs, grad, upstream)
                          for name, impl in (("triton", fastrnn_impl), ("cudnn", cudnn_rnn))}
            checks = None
            if key[10] and kwargs["num_layers"] > 1:  # dropout: cuDNN's masks are not torch's
                plain = dict(kwargs, dropout=0.0)
                checks = {name: _timing_run(impl, (input, hx, weights), plain, grad, upstream)
                          for name, impl in (("triton", fastrnn_impl), ("cudnn", cudnn_rnn))}
            dtype = getattr(torch, key[13].removeprefix("torch.")) if key[13] else input.dtype
            tol = tolerance(dtype, key[4], kwargs["num_layers"])
            algo = choose(key, candidates, timer, tol=tol, checks=checks)
    if algo != "cudnn":
        _note(input, "triton", tracing)
        return None
    _note(input, "cudnn", tracing)
    return cudnn_rnn(input, hx, weights, **kwargs)
