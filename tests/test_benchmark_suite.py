"""The benchmark suite's own logic on a tiny grid: grid selection, the correctness gate, the files."""

import json

import pytest
import torch

from benchmarks import run
from benchmarks.grid import PRESETS, Case, select


def test_filter_selects_by_key_value_and_word():
    ids = [c.id for c in select("full", "T=1000,H=32")]
    assert ids == ["T=1000,B=1,I=32,H=32,L=1,uni,tanh,float32,padded"]
    assert all("packed" in c.id for c in select("full", "packed"))
    assert select("full", "T=7") == []
    with pytest.raises(ValueError, match="unknown preset"):
        select("nope")
    with pytest.raises(ValueError, match="bad filter term"):
        select("full", "T=1000=3")


def test_presets_have_no_duplicates_and_cross_the_cpu_switch():
    for name in PRESETS:
        ids = [c.id for c in select(name)]
        assert len(ids) == len(set(ids))
    hidden = {c.H for c in select("full", "B=16")}
    assert min(hidden) < 64 < max(hidden)


def test_gate_refuses_a_wrong_result():
    case = Case(T=4, B=2, H=3)
    torch.manual_seed(0)
    torch_rnn = torch.nn.RNN(3, 3)
    x = run.make_input(case, torch.device("cpu"), torch.float32)
    reference = run.outputs_and_grads(torch_rnn, x)
    oracle = run.outputs_and_grads(torch_rnn.double(), x, dtype=torch.float64)
    torch_rnn.float()
    good = run.fastrnn.RNN.from_torch(torch_rnn)
    assert run.gate(case, "fastrnn[cpp]", good, "cpp", x, torch_rnn, reference, oracle) == []
    wrong = run.fastrnn.RNN.from_torch(torch_rnn)
    with torch.no_grad():
        wrong.weight_hh_l0.add_(1e-3)
    failures = run.gate(case, "fastrnn[cpp]", wrong, "cpp", x, torch_rnn, reference, oracle)
    assert any(f.startswith("output") for f in failures)


def test_tiny_run_writes_table_json_csv_and_plots(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "select", lambda preset, flt: [Case(T=3, B=2, H=4), Case(T=6, B=2, H=4)])
    monkeypatch.setattr("benchmarks.plots.SWEEP_BASE", {"T": 3, "B": 2, "H": 4})
    assert run.main(["--preset", "tiny", "--out", str(tmp_path), "--min-run-time", "0.01"]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["machine"]["torch"] == torch.__version__
    impls = {r["impl"] for r in data["rows"]}
    assert {"torch.nn.RNN", "fastrnn[cpp]", "fastrnn[reference]", "nn.RNNCell loop"} <= impls
    assert all(r["gate"] == "pass" and r["median_ms"] > 0 for r in data["rows"])
    ran = {r["impl"]: r["ran"] for r in data["rows"]}
    assert ran["torch.nn.RNN"] == "torch-cpu" and ran["fastrnn[cpp]"] == "cpp"  # what ran, not cuDNN on a CPU
    assert "speedup vs torch.nn.RNN" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "results.csv").read_text().count("\n") == len(data["rows"]) + 1
    assert (tmp_path / "speedup_vs_T.png").stat().st_size > 1000


def test_family_cases_compare_with_torchs_gru_and_lstm(tmp_path, monkeypatch):
    cases = [Case(T=3, B=2, H=4, cell="gru"), Case(T=3, B=2, H=4, cell="lstm", proj_size=2)]
    monkeypatch.setattr(run, "select", lambda preset, flt: cases)
    assert run.main(["--preset", "tiny", "--out", str(tmp_path), "--min-run-time", "0.01"]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {r["impl"] for r in rows if r["cell"] == "gru"} >= {"torch.nn.GRU", "fastrnn[cpp]"}
    assert {r["impl"] for r in rows if r["cell"] == "lstm"} >= {"torch.nn.LSTM", "fastrnn[cpp]"}
    assert all(r["gate"] == "pass" and r["median_ms"] > 0 for r in rows)
    assert {r["ran"] for r in rows if r["impl"] in ("torch.nn.GRU", "torch.nn.LSTM")} == {"torch-cpu"}
    assert ",uni,gru," in cases[0].id and ",P=2,uni,lstm," in cases[1].id
    assert {c.cell for c in select("family")} == {"gru", "lstm"}
    assert any(c.proj_size for c in select("family-full"))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_cell_loop_case_times_torchs_cell_and_fastrnns_behind_the_gate(cell):
    from benchmarks.cell_loop import GATED_CELL_LOOP_CASES, CellLoopCase, run_cell_loop_case

    rows = run_cell_loop_case(CellLoopCase(3, 2, 5, cell=cell), min_run_time=0.01)
    name = {"rnn": "RNNCell", "gru": "GRUCell", "lstm": "LSTMCell"}[cell]
    assert {r["impl"] for r in rows} == {f"torch.nn.{name}", f"fastrnn.{name}"}
    assert {r["mode"] for r in rows} == {"inference", "training"}
    assert all(r["gate"] == "pass" and r["median_ms"] > 0 and r["case"].startswith(f"{name} loop") for r in rows)
    assert {c.cell for c in GATED_CELL_LOOP_CASES} == {"gru", "lstm"}
