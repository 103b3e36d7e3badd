"""(a) "hello" -> "ohlol" with fastrnn.RNNCell stepped by hand over one-hot inputs (hidden size 4).

    python examples/hello_rnncell.py [--epochs 30]
"""

from __future__ import annotations

import torch
from hello_data import IDX2CHAR, labels, one_hot_inputs, run_from_command_line, train

import fastrnn


class Model(torch.nn.Module):
    def __init__(self, input_size: int = 4, hidden_size: int = 4):
        super().__init__()
        self.hidden_size = hidden_size
        self.cell = fastrnn.RNNCell(input_size, hidden_size)

    def forward(self, x_t: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self.cell(x_t, hidden)

    def init_hidden(self, batch_size: int = 1) -> torch.Tensor:
        return torch.zeros(batch_size, self.hidden_size)


def main(epochs: int = 30, seed: int = 2, verbose: bool = True) -> tuple[str, list[float]]:
    torch.manual_seed(seed)
    inputs, targets = one_hot_inputs(), labels().view(-1, 1)  # [5, 1, 4], [5, 1]
    model = Model(len(IDX2CHAR), 4)
    criterion = torch.nn.CrossEntropyLoss()

    def step():
        hidden, loss, chars = model.init_hidden(), 0, []
        for x_t, y_t in zip(inputs, targets):  # one RNNCell step per character
            hidden = model(x_t, hidden)
            loss = loss + criterion(hidden, y_t)
            chars.append(hidden.argmax(dim=1).item())
        return loss, chars

    return train(model, step, epochs, lr=0.1, verbose=verbose)


if __name__ == "__main__":
    run_from_command_line(main, __doc__, epochs=30)
