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
