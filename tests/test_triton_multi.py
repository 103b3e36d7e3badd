"""The multi-program tier's geometries and launch modes under TRITON_INTERPRET=1 (CUDA tensors on a GPU):
W on chip and streamed, several column slices, batch groups and tiles per group, batch tiles of one row,
the per-step form, the persistent form (one column program per group, so its barrier never waits in the
interpreter's one-program-at-a-time order), and the escape of a persistent launch whose barrier times out.
Outputs are poisoned with NaN, so an element a kernel forgets to write fails."""

import warnings

import pytest
import torch
from fastrnn.kernels.plan import MultiPlan

from fastrnn.backends import _BACKENDS
from fastrnn.reference import rnn_recurrence_bwd_ref, rnn_recurrence_ref
from tests.cases import recurrence_inputs

triton_backend = _BACKENDS["triton"]
pytestmark = pytest.mark.skipif(
    triton_backend.unavailable_reason() is not None, reason=str(triton_backend.unavailable_reason())
)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HIDDEN = 40  # block_h 64: a partial column slice and, streamed, a partial K chunk


@pytest.fixture(autouse=True)
def multi_tier(monkeypatch):
    from fastrnn.kernels import launch

    monkeypatch.setattr(launch, "_alloc_like", lambda t: torch.full_like(t, float("nan")))
    monkeypatch.setattr(launch, "tier", lambda hidden, dtype: "multi")
    return launch


PLANS = {
    # block_n, block_b, block_h, block_k, rows_per_group, col_programs, groups, num_warps, w_on_chip
    "onchip-3cols-2groups-2tiles": lambda b: MultiPlan(16, 1, 64, 64, 2, 3, -(-b // 2), 4, True),
    "streamed-3cols-2groups-kchunks": lambda b: MultiPlan(16, 2, 64, 16, 4, 3, -(-b // 4), 4, False),
    "onchip-1col-persistent": lambda b: MultiPlan(64, 2, 64, 64, 2, 1, -(-b // 2), 4, True),
    "streamed-1col-persistent": lambda b: MultiPlan(64, 2, 64, 16, 3, 1, -(-b // 3), 4, False),
    # tiles of 8+ rows: the streamed slice goes through tl.dot (TF32, 16-bit) rather than multiply-and-reduce
    "dot-3cols-2groups-kchunks": lambda b: MultiPlan(16, 8, 64, 16, 8, 3, -(-b // 8), 4, False),
    "dot-1col-persistent": lambda b: MultiPlan(64, 8, 64, 16, 8, 1, -(-b // 8), 4, False),
}


def _inputs(steps, batch, packed, seed):
    return recurrence_inputs(steps, batch, HIDDEN, packed, torch.float32, seed, DEVICE)


def _check(steps, batch, packed, reverse, activation):
    xw, h0, w, batch_sizes = _inputs(steps, batch, packed, seed=batch + steps)
    y, h_n = triton_backend.fwd(xw, h0, w, batch_sizes, reverse, activation)
    ref = [t.double() for t in (xw, h0, w)]
    y_ref, h_ref = rnn_recurrence_ref(*ref, batch_sizes, reverse, activation)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_n.double(), h_ref, rtol=1e-5, atol=1e-5)
    dy, dh_n = torch.randn_like(y), torch.randn_like(h_n)
    dz, dh0 = triton_backend.bwd(dy, dh_n, y_ref.float(), w, batch_sizes, reverse, activation)
    dz_ref, dh0_ref = rnn_recurrence_bwd_ref(dy.double(), dh_n.double(), y_ref, ref[2], batch_sizes, reverse,
                                             activation)
    torch.testing.assert_close(dz.double(), dz_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dh0.double(), dh0_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("batch", [1, 3], ids=["B1", "B3"])
@pytest.mark.parametrize("plan", sorted(p for p in PLANS if not p.startswith("dot-")))
def test_multi_tier_geometries(multi_tier, monkeypatch, plan, batch, packed, reverse):
    monkeypatch.setattr(multi_tier, "plan", lambda hidden, b, dtype, device: PLANS[plan](b))
    if "persistent" in plan:
        monkeypatch.setenv(multi_tier.MODE_ENV, "persistent")
    else:
        monkeypatch.setenv(multi_tier.MODE_ENV, "per_step")
    _check(4, batch, packed, reverse, "tanh" if batch == 3 else "relu")


@pytest.mark.skipif(DEVICE.type == "cuda", reason="on a GPU the programs are co-resident; test_gpu.py forces it")
def test_timed_out_barrier_reruns_per_step(multi_tier, monkeypatch):
    """Three column programs that the interpreter runs one after another: the first waits for the others at
    its first barrier, gives up after the spin limit, and the call is re-run one launch per step."""
    monkeypatch.setattr(multi_tier, "plan", lambda hidden, b, dtype, device: PLANS["onchip-3cols-2groups-2tiles"](b))
    monkeypatch.setenv(multi_tier.MODE_ENV, "persistent")
    monkeypatch.setattr(multi_tier, "INTERPRETER_SPIN_LIMIT", 3)
    multi_tier._warned.discard("persistent_failed")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _check(3, 3, packed=True, reverse=False, activation="tanh")
    assert any("re-run one launch per step" in str(w.message) for w in caught)


def test_launch_geometry_fits_the_gpu():
    from fastrnn.kernels.plan import candidates, plan_multi

    for hidden in (65, 200, 512, 2048, 4096):
        for batch in (1, 3, 64, 256):
            for elem, ieee in ((4, True), (4, False), (2, False)):
                p = plan_multi(hidden, batch, elem, ieee, 132)
                assert p.col_programs * p.block_n >= hidden and p.groups * p.rows_per_group >= batch
                assert p.block_k >= 16 or p.w_on_chip
                if candidates(hidden, batch, elem, ieee, 132):
                    assert p.programs <= 132
                if p.w_on_chip:  # <= 64 float32 registers a thread, fewer when tiles have several rows
                    assert p.block_n * p.block_h <= p.num_warps * 32 * 64 // p.block_b


@pytest.mark.skipif(DEVICE.type == "cuda", reason="TF32 rounds on a GPU; the interpreter's tf32 dot is exact")
@pytest.mark.parametrize("plan", ["dot-3cols-2groups-kchunks", "dot-1col-persistent"])
def test_streamed_tensor_core_path(multi_tier, monkeypatch, plan):
    """W streamed through tl.dot: what TF32 and 16-bit take (IEEE float32 takes the multiply-and-reduce)."""
    monkeypatch.setattr(multi_tier, "plan", lambda hidden, b, dtype, device: PLANS[plan](b))
    monkeypatch.setenv(multi_tier.MODE_ENV, "persistent" if "persistent" in plan else "per_step")
    with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=True):
        _check(3, 10, packed=True, reverse=True, activation="tanh")
