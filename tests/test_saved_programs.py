"""Programs saved from commit 75e6fde still load and run with the current code (one-skeleton.md §6: op names and
schemas recorded in saved programs must not change).

The fixtures in ``tests/fixtures/saved_programs/`` were written by ``tests/fixtures/make_saved_programs.py`` from a
checkout of 75e6fde (its docstring says how). Each is loaded here after ``import fastrnn``, run on the inputs it was
saved with, and must give the outputs it gave then; its graph must still name fastrnn's ops, so a renamed op (or one
whose schema no longer matches the recorded call) fails here, not in a user's deployment. If one of these fails
after a refactor, the refactor broke saved programs: fix the code, never regenerate these files.
"""

import json
import re
from pathlib import Path

import pytest
import torch

import fastrnn  # noqa: F401  (registers torch.ops.fastrnn.*, which the saved programs call)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "saved_programs"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())

# The fastrnn ops each saved program calls (exactly these; written out so the test documents them).
EXPECTED_OPS = {
    "rnn_bi2_script": {"fastrnn::recurrence"},
    "rnn_bi2_trace": {"fastrnn::recurrence"},
    "rnn_relu_script": {"fastrnn::recurrence"},
    "rnn_relu_trace": {"fastrnn::recurrence"},
    "rnncell_script": {"fastrnn::rnn_cell"},
    "rnncell_trace": {"fastrnn::recurrence"},
    "rnn_export": {"fastrnn::recurrence"},
    "gru_export": {"fastrnn::gru_recurrence"},
    "lstm_export": {"fastrnn::lstm_recurrence"},
    "direct_ops_script": {
        "fastrnn::recurrence", "fastrnn::recurrence_backward", "fastrnn::recurrence_double_backward",
        "fastrnn::rnn_fwd", "fastrnn::rnn_bwd", "fastrnn::rnn_cell",
        "fastrnn::gru_recurrence", "fastrnn::gru_recurrence_backward",
        "fastrnn::gru_fwd", "fastrnn::gru_bwd", "fastrnn::gru_infer", "fastrnn::gru_layer_fwd",
        "fastrnn::lstm_recurrence", "fastrnn::lstm_recurrence_backward",
        "fastrnn::lstm_fwd", "fastrnn::lstm_bwd", "fastrnn::lstm_infer", "fastrnn::lstm_layer_fwd",
        "fastrnn::mm_nn",
    },
}


def test_fixtures_were_saved_from_75e6fde_and_all_are_checked():
    assert MANIFEST["commit"].startswith("75e6fde")
    assert MANIFEST["tracked_changes"] == ""
    assert set(MANIFEST["programs"]) == set(EXPECTED_OPS)
    size = sum(p.stat().st_size for p in FIXTURES.iterdir())
    assert size < 1 << 20, f"saved-program fixtures take {size} bytes; keep them under 1 MiB"


def _load(name: str):
    """(callable program, the fastrnn ops its graph calls)."""
    info = MANIFEST["programs"][name]
    path = FIXTURES / info["file"]
    if info["kind"] == "export":
        program = torch.export.load(path)
        ops = {
            node.target._schema.name
            for node in program.graph.nodes
            if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
        }
        return program.module(), ops
    program = torch.jit.load(str(path))
    return program, set(re.findall(r"fastrnn::\w+", str(program.inlined_graph)))


def _assert_same(got, want, where: str) -> None:
    if isinstance(want, (tuple, list)):
        assert isinstance(got, (tuple, list)) and len(got) == len(want), f"{where}: {type(got)} vs {type(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
        return
    assert got.dtype == want.dtype == torch.float32, where
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=lambda m: f"{where}: {m}")


@pytest.mark.parametrize("name", sorted(EXPECTED_OPS))
def test_saved_program_loads_runs_and_names_fastrnn_ops(name):
    program, ops = _load(name)
    fastrnn_ops = {op for op in ops if op.startswith("fastrnn::")}
    assert fastrnn_ops == EXPECTED_OPS[name], f"{name} calls {sorted(fastrnn_ops)}"
    for op in fastrnn_ops:  # each still resolves to a registered operator of that name
        assert torch._C._jit_get_schemas_for_operator(op), f"{op} is not registered any more"
    io = torch.load(FIXTURES / f"{name}.io.pt")
    got = program(*io["inputs"])
    _assert_same(got, io["outputs"], name)
