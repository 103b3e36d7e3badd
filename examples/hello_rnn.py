"""(b) "hello" -> "ohlol" with fastrnn.RNN over the whole one-hot sequence at once.

    python examples/hello_rnn.py [--epochs 30]
"""

from __future__ import annotations

import torch
from hello_data import IDX2CHAR, labels, one_hot_inputs, run_from_command_line, train

import fastrnn


class Model(torch.nn.Module):
    def __init__(self, input_size: int = 4, hidden_size: int = 4, num_layers: int = 1):
        super().__init__()
        self.num_layers, self.hidden_size = num_layers, hidden_size
        self.rnn = fastrnn.RNN(input_size, hidden_size, num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.zeros(self.num_layers, x.size(1), self.hidden_size)
        out, _ = self.rnn(x, hidden)  # [seq_len, batch, hidden]
        return out.reshape(-1, self.hidden_size)  # [seq_len * batch, hidden]


def main(epochs: int = 30, seed: int = 2, verbose: bool = True) -> tuple[str, list[float]]:
    torch.manual_seed(seed)
    inputs, targets = one_hot_inputs(), labels()
    model = Model(len(IDX2CHAR), 4)
    criterion = torch.nn.CrossEntropyLoss()

    def step():
        outputs = model(inputs)  # the whole sequence in one call
        return criterion(outputs, targets), outputs.argmax(dim=1)

    return train(model, step, epochs, lr=0.1, verbose=verbose)


if __name__ == "__main__":
    run_from_command_line(main, __doc__, epochs=30)
