"""Triton helpers both tiers share: the activations, the packed-step rows, the dot, the grid barrier.

Activation modes (constexpr ``TANH``), chosen by the launcher:
  TANH_LIBDEVICE  float32 on a GPU: libdevice tanh (<= 2 ulp, exact sign and saturation).
  TANH_APPROX     float16 / bfloat16 on a GPU: ``tanh.approx.f32`` (max relative error ~2^-11, below one
                  bfloat16 / about one float16 rounding of the stored output; the state stays float32).
  TANH_PORTABLE   the interpreter (no libdevice or inline asm there): odd Taylor series below |z| = 1/16,
                  ``(1 - e) / (1 + e)`` with ``e = exp(-2|z|)`` above; <= ~3 ulp, never outside [-1, 1].
relu is ``where(z < 0, 0, z)`` so that NaN stays NaN as in ``torch.relu``; its backward is torch's
``threshold_backward``, ``where(y <= 0, 0, g)``.
"""

from __future__ import annotations

import triton
import triton.language as tl

TANH_LIBDEVICE = 0
TANH_APPROX = 1
TANH_PORTABLE = 2

# Added to a barrier counter by a program whose wait timed out: every later wait of its group passes at
# once, so the launch finishes (with garbage, which the launcher throws away) instead of hanging.
BARRIER_ABORT = 1 << 30
CLOCK_GLOBALTIMER = 0
CLOCK_SPINS = 1

try:  # Triton >= 3.3
    from triton.language.extra.cuda import libdevice as _libdevice
except ImportError:  # pragma: no cover - older Triton
    from triton.language.math import libdevice as _libdevice  # type: ignore[no-redef]


@triton.jit
def _tanh(z, TANH: tl.constexpr):
    if TANH == 0:
        return _libdevice.tanh(z)
    elif TANH == 1:
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [z], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:
        a = tl.abs(z)
        e = tl.exp(-2.0 * a)
        big = (1.0 - e) / (1.0 + e)
        z2 = z * z
        small = z * (1.0 + z2 * (-1.0 / 3.0 + z2 * (2.0 / 15.0 + z2 * (-17.0 / 315.0))))
        # where(z < 0, -big, big) keeps NaN (a comparison with NaN is false and big is NaN).
        return tl.where(a < 0.0625, small, tl.where(z < 0.0, -big, big))


@triton.jit
def _activation(z, ACTIVATION: tl.constexpr, TANH: tl.constexpr):
    if ACTIVATION == 0:
        return _tanh(z, TANH)
    else:
        return tl.where(z < 0.0, 0.0, z)


@triton.jit
def _activation_backward(g, y, ACTIVATION: tl.constexpr):
    """dz = g * act'(z) written with the output y. relu is torch's threshold_backward, a select and not a
    product: 0 where y <= 0 even if g is inf or NaN, and g where y is NaN."""
    if ACTIVATION == 0:
        return g * (1.0 - y * y)
    else:
        return tl.where(y <= 0.0, 0.0, g)


@triton.jit
def _step_index(s, T, REVERSE: tl.constexpr):
    if REVERSE:
        return T - 1 - s
    else:
        return s


@triton.jit
def _step_rows(p_batch_sizes, p_offsets, t, B, PACKED: tl.constexpr):
    """Rows active at step t and the first packed row of step t."""
    if PACKED:
        n_t = tl.load(p_batch_sizes + t).to(tl.int32)
        row0 = tl.load(p_offsets + t).to(tl.int64)
    else:
        n_t = B
        row0 = tl.cast(t, tl.int64) * B
    return n_t, row0


@triton.jit
def _matmul(a, b, FP32_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b with float32 accumulation; 16-bit operands go to the tensor cores as they are."""
    if FP32_DOT:
        return tl.dot(a, b, input_precision=PRECISION)
    else:
        return tl.dot(a, b, out_dtype=tl.float32)


@triton.jit
def _clock(spins, CLOCK: tl.constexpr):
    if CLOCK == 0:
        return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False,
                                         pack=1)
    else:
        return tl.cast(spins, tl.int64)


@triton.jit
def _grid_barrier(p_counter, target, p_error, spin_limit, CLOCK: tl.constexpr):
    """Waits until ``target`` arrivals are counted, at most ``spin_limit`` (ns, or spins under CLOCK=1).

    Scalar atomics run on one thread and broadcast their result, so the loop condition is the same in every
    thread; the timeout is thread 0's decision, carried by the atomic it adds (BARRIER_ABORT), never by a
    per-thread clock. On a timeout the program sets ``*p_error`` and the whole group stops waiting.
    """
    tl.debug_barrier()  # this program's stores happen before its arrival
    arrived = tl.atomic_add(p_counter, 1, sem="acq_rel", scope="gpu") + 1
    start = _clock(0, CLOCK)
    spins = 0
    while arrived < target:
        spins += 1
        late = (_clock(spins, CLOCK) - start) > spin_limit
        arrived = tl.atomic_add(p_counter, tl.where(late, 1 << 30, 0), sem="acquire", scope="gpu")
    tl.store(p_error, 1, mask=arrived >= (1 << 30))
    tl.debug_barrier()
