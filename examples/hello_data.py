"""The course's toy task: learn to map "hello" to "ohlol" over the vocabulary e, h, l, o."""

from __future__ import annotations

import torch

IDX2CHAR = ["e", "h", "l", "o"]
X_DATA = [1, 0, 2, 2, 3]  # h e l l o
Y_DATA = [3, 1, 2, 3, 2]  # o h l o l


def one_hot_inputs() -> torch.Tensor:
    """``[seq_len, batch=1, input_size=4]`` one-hot vectors of "hello"."""
    return torch.eye(len(IDX2CHAR))[X_DATA].unsqueeze(1)


def labels() -> torch.Tensor:
    """``[seq_len]`` class indices of "ohlol"."""
    return torch.tensor(Y_DATA)


def decode(indices) -> str:
    return "".join(IDX2CHAR[int(i)] for i in indices)
