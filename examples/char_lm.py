"""A character-level language model on a text file: nn.Embedding -> fastrnn.RNN / GRU / LSTM -> nn.Linear.

    python examples/char_lm.py                       # trains on The Zen of Python (Python's `this`)
    python examples/char_lm.py --cell lstm           # the same with fastrnn.LSTM (or --cell gru)
    python examples/char_lm.py --text book.txt --steps 5000 --checkpoint lm.pt
    python examples/char_lm.py --checkpoint lm.pt --resume --steps 2000   # carries on where it stopped

Shows a progress bar while training, samples text at the end, saves a checkpoint (model, optimizer,
vocabulary, step) and resumes from one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
from pathlib import Path
from typing import Optional

import torch
from torch import nn

import fastrnn


def default_text() -> str:
    """The Zen of Python, which every Python ships in its `this` module (rot13-encoded)."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return "".join(this.d.get(c, c) for c in this.s)


CELLS = {"rnn": fastrnn.RNN, "gru": fastrnn.GRU, "lstm": fastrnn.LSTM}


class CharLM(nn.Module):
    def __init__(self, vocab_size: int, embedding_size: int = 32, hidden_size: int = 128, num_layers: int = 2,
                 cell: str = "rnn"):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_size)
        self.rnn = CELLS[cell](embedding_size, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, x: torch.Tensor, hx=None):
        """``x`` ``[N, L]`` character ids -> logits ``[N, L, vocab]`` and the hidden state (``(h, c)`` for LSTM)."""
        out, h_n = self.rnn(self.embed(x), hx)
        return self.head(out), h_n


def batches(data: torch.Tensor, seq_len: int, batch_size: int, generator: torch.Generator):
    """Random windows of ``seq_len + 1`` characters: inputs and next-character targets."""
    while True:
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=generator)
        window = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])
        yield window[:, :-1], window[:, 1:]


@torch.no_grad()
def sample(model: CharLM, vocab: list[str], prefix: str, length: int, temperature: float = 0.8,
           seed: int = 0) -> str:
    """Feeds ``prefix`` then draws ``length`` characters one at a time, carrying the hidden state."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    index = {c: i for i, c in enumerate(vocab)}
    ids = [index[c] for c in prefix if c in index] or [0]
    logits, hidden = model(torch.tensor([ids]))
    text = []
    for _ in range(length):
        probs = torch.softmax(logits[0, -1] / temperature, dim=-1)
        nxt = int(torch.multinomial(probs, 1, generator=generator))
        text.append(vocab[nxt])
        logits, hidden = model(torch.tensor([[nxt]]), hidden)
    model.train()
    return prefix + "".join(text)


def _progress(total: int, initial: int):
    try:
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
    except ImportError:
        return None


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, default=None, help="a UTF-8 text file (default: The Zen of Python)")
    parser.add_argument("--steps", type=int, default=1500, help="training steps to run now")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--cell", choices=sorted(CELLS), default=None, help="rnn (default), gru or lstm; "
                        "--resume keeps the checkpoint's")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--checkpoint", type=Path, default=None, help="where to save (and --resume from)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--sample-length", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    text = args.text.read_text(encoding="utf-8") if args.text else default_text()
    state = torch.load(args.checkpoint, weights_only=False) if args.resume and args.checkpoint else None
    vocab = state["vocab"] if state else sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    data = torch.tensor([index[c] for c in text if c in index])
    cell = args.cell or (state.get("cell", "rnn") if state else "rnn")
    if state and cell != state.get("cell", "rnn"):
        parser.error(f"--cell {cell}: the checkpoint holds a {state.get('cell', 'rnn')} model")
    model = CharLM(len(vocab), hidden_size=args.hidden_size, num_layers=args.num_layers, cell=cell)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    step = 0
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    generator = torch.Generator().manual_seed(args.seed + step)
    stream = batches(data, min(args.seq_len, len(data) - 2), args.batch_size, generator)
    criterion = nn.CrossEntropyLoss()
    bar = None if args.quiet else _progress(step + args.steps, step)
    losses = []
    for _ in range(args.steps):
        x, y = next(stream)
        logits, _ = model(x)
        loss = criterion(logits.reshape(-1, len(vocab)), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", bits_per_char=f"{loss.item() / math.log(2):.2f}")
    if bar is not None:
        bar.close()
    if args.checkpoint:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "vocab": vocab,
                    "step": step, "cell": cell}, args.checkpoint)
    generated = sample(model, vocab, text[:20], args.sample_length, seed=args.seed)
    if not args.quiet:
        print(f"step {step}: loss {losses[-1] if losses else float('nan'):.3f}\n--- sample ---\n{generated}")
    return {"losses": losses, "sample": generated, "step": step, "vocab": vocab, "model": model}


if __name__ == "__main__":
    main()
