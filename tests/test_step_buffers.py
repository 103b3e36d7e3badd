"""The C++ ops' cache of large freed blocks (csrc/step_buffers.h; the gated ops, mm_nn and the RNN's ops allocate
their large tensors from it): repeated training steps reuse the blocks and
stay equal to torch; blocks still in use (a retained graph, another thread's step, a tensor the user kept) are
never handed out again; outputs stay ordinary resizable tensors; fastrnn.empty_cache frees the cache."""

import threading

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn.gated_ops import _use_cpp
from fastrnn.testing import outputs_and_grads

pytestmark = pytest.mark.skipif(not _use_cpp(torch.zeros(1)), reason="the C++ extension is not available")

# Workspaces of T * B * 4H (GRU) and 5H (LSTM) floats, 1.3 and 1.6 MB: above the cache's 1 MiB floor.
T, B, H = 40, 8, 256


def _cached() -> int:
    return int(torch.ops.fastrnn._cached_step_buffer_bytes())


def _pair(cls_fast, cls_torch, seed=0):
    torch.manual_seed(seed)
    theirs = cls_torch(H, H)
    return cls_fast.from_torch(theirs), theirs


def _assert_equal(got: dict, want: dict) -> None:
    """outputs_and_grads of fastrnn's module against torch's: values within float32 rounding."""
    assert got.keys() == want.keys()
    for key in want:
        tol = (1e-4, 1e-4) if key.startswith("grad") else (1e-4, 1e-5)
        torch.testing.assert_close(got[key], want[key], rtol=tol[0], atol=tol[1], msg=key)


# The RNN's largest tensors are [T, B, H] (output, dz): 1.3 MB at 32 rows.
@pytest.mark.parametrize(
    "cls_fast,cls_torch,batch",
    [(fastrnn.LSTM, nn.LSTM, B), (fastrnn.GRU, nn.GRU, B), (fastrnn.RNN, nn.RNN, 32)],
    ids=["lstm", "gru", "rnn"],
)
def test_repeated_steps_reuse_blocks_and_stay_equal_to_torch(cls_fast, cls_torch, batch):
    ours, theirs = _pair(cls_fast, cls_torch)
    fastrnn.empty_cache()
    assert _cached() == 0
    for step in range(4):
        x = torch.randn(T, batch, H, generator=torch.Generator().manual_seed(step))
        got = outputs_and_grads(ours, x, seed=step)
        _assert_equal(got, outputs_and_grads(theirs, x, seed=step))
        del got  # the step's tensors go back to the cache before it is measured
        if step == 0:
            after_first = _cached()
            assert after_first > 0  # the workspace and gradients went back to the cache
        else:
            assert _cached() == after_first  # later steps took the same blocks again instead of new ones
    assert fastrnn.empty_cache() == after_first
    assert _cached() == 0


def test_a_retained_graph_keeps_its_workspace():
    """A second backward through a retained graph reads the workspace again: no later step may have taken it."""
    ours, _ = _pair(fastrnn.LSTM, nn.LSTM)
    x = torch.randn(T, B, H)
    out, _ = ours(x)
    loss = out.square().sum()
    loss.backward(retain_graph=True)
    once = [p.grad.clone() for p in ours.parameters()]
    outputs_and_grads(ours, torch.randn(T, B, H))  # allocates and frees blocks of the same sizes meanwhile
    ours.zero_grad(set_to_none=True)
    loss.backward()
    for g, w in zip((p.grad for p in ours.parameters()), once):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_outputs_are_ordinary_resizable_tensors():
    ours, _ = _pair(fastrnn.LSTM, nn.LSTM)
    with torch.no_grad():
        out, _ = ours(torch.randn(T, B, H))
    kept = out.clone()
    out.resize_(2 * T, B, H)  # a storage that could not grow would raise here
    assert torch.equal(out[:T], kept)
    out.resize_(1)
    assert out.numel() == 1


def test_kept_outputs_are_not_handed_out_again():
    ours, _ = _pair(fastrnn.GRU, nn.GRU)
    x = torch.randn(T, B, H)
    with torch.no_grad():
        outs = [ours(x * (i + 1))[0] for i in range(5)]
        want = [ours(x * (i + 1))[0].clone() for i in range(5)]
    assert len({o.data_ptr() for o in outs}) == len(outs)
    for o, w in zip(outs, want):
        assert torch.equal(o, w)


def test_concurrent_training_in_two_threads():
    """The cache is shared by threads: two threads training at once each get their own blocks."""
    results, errors = {}, []

    def work(seed):
        try:
            ours, theirs = _pair(fastrnn.LSTM, nn.LSTM, seed)
            x = torch.randn(T, B, H, generator=torch.Generator().manual_seed(seed))
            for _ in range(3):
                got = outputs_and_grads(ours, x, seed=seed)
            results[seed] = (got, outputs_and_grads(theirs, x, seed=seed))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in results.values():
        _assert_equal(got, want)


def test_the_cache_is_bounded():
    """At most 32 freed blocks are kept; small tensors never enter the cache."""
    fastrnn.empty_cache()
    a = torch.randn(512, 64)
    b = torch.randn(64, 1024)  # mm_nn's output: 2 MiB
    outs = [torch.ops.fastrnn.mm_nn(a, b) for _ in range(40)]
    block = outs[0].numel() * outs[0].element_size()
    del outs
    assert _cached() == 32 * block
    small = torch.ops.fastrnn.mm_nn(torch.randn(8, 8), torch.randn(8, 8))
    del small
    assert _cached() == 32 * block
    assert fastrnn.empty_cache() == 32 * block


def test_a_block_larger_than_the_cache_is_freed_at_once():
    """A freed block above the 1 GiB bound goes straight back to the system and evicts nothing."""
    fastrnn.empty_cache()
    kept = torch.ops.fastrnn.mm_nn(torch.randn(512, 64), torch.randn(64, 1024))
    del kept
    small = _cached()
    assert small > 0
    huge = torch.ops.fastrnn.mm_nn(torch.ones(270_000, 1), torch.ones(1, 1024))  # 1.03 GiB
    assert huge.numel() * huge.element_size() > 1 << 30
    del huge
    assert _cached() == small
    fastrnn.empty_cache()


def test_a_size_no_longer_asked_for_is_freed():
    """A cached block that 256 later allocations did not take (e.g. a sequence length no longer seen) is freed."""
    fastrnn.empty_cache()
    a = torch.randn(512, 64)
    old = torch.ops.fastrnn.mm_nn(a, torch.randn(64, 2048))  # 4 MiB
    del old
    four_mib = _cached()
    for i in range(250):
        del_me = torch.ops.fastrnn.mm_nn(a, torch.randn(64, 512))  # 1 MiB: the 4 MiB block does not fit it
        del del_me
        if i == 0:
            one_mib = _cached() - four_mib
    assert _cached() == four_mib + one_mib  # not yet: 250 allocations since it was freed
    for _ in range(10):
        del_me = torch.ops.fastrnn.mm_nn(a, torch.randn(64, 512))
        del del_me
    assert _cached() == one_mib
    fastrnn.empty_cache()
