"""Every example runs in a short mode and learns: the three "hello" -> "ohlol" ways and the char LM."""

import importlib
import math
from pathlib import Path

import pytest
import torch

import fastrnn

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def examples(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return lambda name: importlib.import_module(name)


@pytest.mark.parametrize("name", ["hello_rnncell", "hello_rnn", "hello_embedding"])
def test_hello_examples_learn_ohlol(examples, name, capsys):
    predicted, losses = examples(name).main()
    assert predicted == "ohlol"
    assert losses[-1] < 0.6 * losses[0]
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(losses) and printed[-1].startswith("Predicted string: ohlol")


def test_char_lm_learns_saves_and_resumes(examples, tmp_path):
    char_lm = examples("char_lm")
    ckpt = tmp_path / "lm.pt"
    common = ["--hidden-size", "48", "--seq-len", "32", "--batch-size", "16", "--sample-length", "40",
              "--checkpoint", str(ckpt), "--quiet"]
    first = char_lm.main(["--steps", "120", *common])
    uniform = math.log(len(first["vocab"]))
    assert sum(first["losses"][:10]) / 10 > 0.9 * uniform
    assert sum(first["losses"][-10:]) / 10 < 0.75 * uniform
    assert len(first["sample"]) == 20 + 40 and set(first["sample"]) <= set(first["vocab"])
    saved = torch.load(ckpt, weights_only=False)
    assert saved["step"] == 120
    second = char_lm.main(["--steps", "30", "--resume", *common])
    assert second["step"] == 150
    assert torch.load(ckpt, weights_only=False)["step"] == 150
    assert second["losses"][0] < first["losses"][0]  # picked up the trained weights, not a fresh start


def test_char_lm_reads_a_text_file(examples, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("abcabcabcabcabcabcabcabcabcabcabcabc" * 4)
    result = examples("char_lm").main(["--text", str(text), "--steps", "60", "--hidden-size", "16",
                                        "--seq-len", "16", "--quiet", "--sample-length", "12"])
    assert result["vocab"] == ["a", "b", "c"]
    assert result["losses"][-1] < 0.3


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_hello_gated_learns_ohlol(examples, cell, capsys):
    predicted, losses = examples("hello_gated").main(cell)
    assert predicted == "ohlol"
    assert losses[-1] < 0.6 * losses[0]
    assert capsys.readouterr().out.splitlines()[-1].startswith("Predicted string: ohlol")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_char_lm_with_a_gated_cell_learns_and_resumes(examples, cell, tmp_path):
    char_lm = examples("char_lm")
    ckpt = tmp_path / "lm.pt"
    common = ["--hidden-size", "32", "--seq-len", "24", "--batch-size", "8", "--sample-length", "10",
              "--checkpoint", str(ckpt), "--quiet"]
    first = char_lm.main(["--cell", cell, "--steps", "80", *common])
    assert isinstance(first["model"].rnn, {"gru": fastrnn.GRU, "lstm": fastrnn.LSTM}[cell])
    uniform = math.log(len(first["vocab"]))
    assert sum(first["losses"][-10:]) / 10 < 0.85 * uniform
    second = char_lm.main(["--steps", "5", "--resume", *common])  # the checkpoint says which cell
    assert isinstance(second["model"].rnn, type(first["model"].rnn)) and second["step"] == 85
