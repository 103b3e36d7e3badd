"""(d) "hello" -> "ohlol" with fastrnn.GRU or fastrnn.LSTM over the whole one-hot sequence at once.

    python examples/hello_gated.py --cell gru [--epochs 30]
    python examples/hello_gated.py --cell lstm
"""

from __future__ import annotations

import argparse

import torch
from hello_data import IDX2CHAR, labels, one_hot_inputs, train

import fastrnn


class Model(torch.nn.Module):
    def __init__(self, cell: str, input_size: int = 4, hidden_size: int = 4):
        super().__init__()
        self.hidden_size = hidden_size
        self.rnn = {"gru": fastrnn.GRU, "lstm": fastrnn.LSTM}[cell](input_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # zero initial state: h (GRU) or (h, c) (LSTM); out [seq_len, batch, hidden]
        return out.reshape(-1, self.hidden_size)  # [seq_len * batch, hidden]


def main(cell: str = "gru", epochs: int = 30, seed: int = 2, verbose: bool = True) -> tuple[str, list[float]]:
    torch.manual_seed(seed)
    inputs, targets = one_hot_inputs(), labels()
    model = Model(cell, len(IDX2CHAR), 4)
    criterion = torch.nn.CrossEntropyLoss()

    def step():
        outputs = model(inputs)
        return criterion(outputs, targets), outputs.argmax(dim=1)

    return train(model, step, epochs, lr=0.1, verbose=verbose)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", choices=["gru", "lstm"], default="gru")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    main(args.cell, args.epochs)
