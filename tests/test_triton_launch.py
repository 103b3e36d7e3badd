"""The Triton launcher's host-side choices, no kernel run: TF32 rule, packed tables, batch classes and tiles."""

import pytest
import torch

from fastrnn.backends import _BACKENDS

pytestmark = pytest.mark.skipif(
    _BACKENDS["triton"].unavailable_reason() is not None, reason=str(_BACKENDS["triton"].unavailable_reason())
)


def test_tf32_follows_cudnn_like_torch_nn_rnn():
    from fastrnn.kernels import launch

    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            assert launch._dot_mode(torch.float32) == (True, "ieee")
        torch.backends.cuda.matmul.allow_tf32 = False
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=True):
            assert launch._dot_mode(torch.float32) == (True, "tf32")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    assert launch._dot_mode(torch.bfloat16) == (False, "ieee")


def test_packed_tables_are_copied_once_per_distinct_batch_sizes():
    from fastrnn.kernels import launch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    first = launch._tables(torch.tensor([3, 2, 2, 1]), device)
    again = launch._tables(torch.tensor([3, 2, 2, 1]), device)
    other = launch._tables(torch.tensor([3, 3, 1]), device)
    assert first[0] is again[0] and first[1] is again[1] and other[0] is not first[0]
    assert first[0].tolist() == [3, 2, 2, 1] and first[1].tolist() == [0, 3, 5, 7]
    assert first[0].dtype == torch.int32 and first[1].dtype == torch.int64


def test_batch_classes_and_tiles():
    from fastrnn.kernels import rnn_single

    assert [rnn_single.batch_class(b) for b in (1, 2, 3, 5, 9, 16, 17, 1000)] == [1, 2, 4, 8, 16, 16, 16, 16]
    configs = rnn_single._configs()
    assert {c.kwargs["BLOCK_B"] for c in rnn_single.tile_candidates(configs, 1)} == {1}
    assert {c.kwargs["BLOCK_B"] for c in rnn_single.tile_candidates(configs, 4)} == {4}
    assert min(c.kwargs["BLOCK_B"] for c in rnn_single.tile_candidates(configs, 16)) == 16


def test_single_tier_path_choice():
    """W_hh in registers for IEEE float32 at every batch and for batch classes up to 4 rows in 16-bit / TF32;
    tl.dot (tensor cores) for 16-bit / TF32 tiles of 8+ rows. float32 runs the single tier up to H = 128."""
    from fastrnn.kernels import launch

    for batch in (1, 2, 3, 4, 5, 16, 1000):
        assert launch.single_path(batch, torch.float32) == "regs"
        expected = "regs" if batch <= 4 else "dot"
        assert launch.single_path(batch, torch.bfloat16) == expected
        assert launch.single_path(batch, torch.float16) == expected
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=True):
            assert launch.single_path(batch, torch.float32) == expected
    assert launch.tier(128, torch.float32) == "single" and launch.tier(129, torch.float32) == "multi"


def test_register_path_tiles_on_the_gpu(monkeypatch):
    """The autotuner's register-path candidates (GPU configs): one-row and min(class, 4)-row tiles in 8 and 16
    warps at BLOCK_H = 128 (4 and 8 below), less REGS_SPILLING; the dot path never takes 16 warps."""
    from fastrnn.kernels import rnn_single

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    configs = rnn_single._configs()
    for b_class in (1, 2, 4, 8, 16):
        for block_h in (16, 32, 64, 128):
            for mode in ("fp32", "tf32", "fp16", "bf16"):
                regs = rnn_single.tile_candidates(configs, b_class, mode, block_h, regs=True)
                expected = {(b, w) for b in (1, min(b_class, 4)) for w in ((8, 16) if block_h == 128 else (4, 8))
                            if (mode, block_h, b, w) not in rnn_single.REGS_SPILLING}
                assert {(c.kwargs["BLOCK_B"], c.num_warps) for c in regs} == expected
                dot = rnn_single.tile_candidates(configs, b_class, mode, block_h, regs=False)
                assert dot and all(c.num_warps <= 8 for c in dot)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    interpreted = rnn_single._configs()
    for b_class, tile in ((1, 1), (2, 2), (4, 4), (8, 4), (16, 4)):
        chosen = rnn_single.tile_candidates(interpreted, b_class, "fp32", 64, regs=True)
        assert [c.kwargs["BLOCK_B"] for c in chosen] == [tile]
