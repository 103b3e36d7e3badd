"""(b) "hello" -> "ohlol" with fastrnn.RNN over the whole one-hot sequence at once.

    python examples/hello_rnn.py [--epochs 30]
"""

from __future__ import annotations

import argparse

import torch
from hello_data import IDX2CHAR, decode, labels, one_hot_inputs

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
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    losses, predicted = [], ""
    for epoch in range(epochs):
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, targets)
        loss.backward()
        optimizer.step()
        predicted = decode(outputs.argmax(dim=1))
        losses.append(loss.item())
        if verbose:
            print(f"Predicted string: {predicted}, Epoch [{epoch + 1}/{epochs}] loss={loss.item():.4f}")
    return predicted, losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=30)
    main(parser.parse_args().epochs)
