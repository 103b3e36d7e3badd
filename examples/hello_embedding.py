"""(c) "hello" -> "ohlol" with nn.Embedding -> 2-layer fastrnn.RNN (batch_first) -> nn.Linear.

Embeddings replace the one-hot vectors: low-dimensional, dense, and learned.

    python examples/hello_embedding.py [--epochs 15]
"""

from __future__ import annotations

import torch
from hello_data import IDX2CHAR, X_DATA, labels, run_from_command_line, train

import fastrnn


class Model(torch.nn.Module):
    def __init__(self, num_class: int = 4, embedding_size: int = 10, hidden_size: int = 8, num_layers: int = 2):
        super().__init__()
        self.emb = torch.nn.Embedding(num_class, embedding_size)
        self.rnn = fastrnn.RNN(embedding_size, hidden_size, num_layers, batch_first=True)
        self.fc = torch.nn.Linear(hidden_size, num_class)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(x))  # x [batch, seq_len] -> [batch, seq_len, hidden]
        return self.fc(out).view(-1, self.fc.out_features)  # [batch * seq_len, num_class]


def main(epochs: int = 15, seed: int = 0, verbose: bool = True) -> tuple[str, list[float]]:
    torch.manual_seed(seed)
    inputs, targets = torch.tensor([X_DATA]), labels()  # [1, 5], [5]
    model = Model(len(IDX2CHAR))
    criterion = torch.nn.CrossEntropyLoss()

    def step():
        outputs = model(inputs)
        return criterion(outputs, targets), outputs.argmax(dim=1)

    return train(model, step, epochs, lr=0.05, verbose=verbose)


if __name__ == "__main__":
    run_from_command_line(main, __doc__, epochs=15)
