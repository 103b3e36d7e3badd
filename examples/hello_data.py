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


def train(model: torch.nn.Module, step, epochs: int, lr: float, verbose: bool = True) -> tuple[str, list[float]]:
    """The course's loop: Adam on ``step()``, which returns (loss, predicted class indices), printing the
    predicted string and the loss each epoch. Returns the last prediction and every loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses, predicted = [], ""
    for epoch in range(epochs):
        optimizer.zero_grad()
        loss, indices = step()
        loss.backward()
        optimizer.step()
        predicted = decode(indices)
        losses.append(loss.item())
        if verbose:
            print(f"Predicted string: {predicted}, Epoch [{epoch + 1}/{epochs}] loss={loss.item():.4f}")
    return predicted, losses


def run_from_command_line(main, doc: str, epochs: int) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--epochs", type=int, default=epochs)
    main(parser.parse_args().epochs)
