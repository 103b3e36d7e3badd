"""The benchmark suite's own logic on a tiny grid: grid selection, the correctness gate, the files."""

import json

import pytest
import torch

from benchmarks import run
from benchmarks.grid import PRESETS, Case, select
from benchmarks.plots import case_label, plot_speedup
from benchmarks.timing import ratio_quantiles

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_height: int = 100) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(path).shape[0] >= min_height


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
    assert_png(tmp_path / "speedup.png")
    for r in data["rows"]:  # every repeat is kept, and the chart's spread comes from them
        assert len(r["times_ms"]) == r["repeats"] >= 5
        assert min(r["times_ms"]) <= r["median_ms"] <= max(r["times_ms"])
        assert r["speedup_spread"] == "repeats" and 0 < r["speedup_p20"] <= r["speedup_p80"]
    assert "(p20-p80)" in (tmp_path / "table.md").read_text()


def test_ratio_spread_on_known_numbers():
    # Pairs of base / t: 2/1, 2/2, 4/1, 4/2 = [2, 1, 4, 2]; sorted [1, 2, 2, 4]; p20 at 0.6 -> 1.6, p80 at 2.4 -> 2.8.
    assert ratio_quantiles([2.0, 4.0], [1.0, 2.0]) == pytest.approx([1.6, 2.8])
    assert ratio_quantiles([3.0], [1.5], qs=(0.2, 0.5, 0.8)) == pytest.approx([2.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="at least one time"):
        ratio_quantiles([], [1.0])


def _row(case, impl, mode, times=None, **timing):
    row = {"case": case, "impl": impl, "mode": mode, "gate": "pass", **timing}
    if times:
        row.update(median_ms=sorted(times)[len(times) // 2], p20_ms=min(times), p80_ms=max(times), times_ms=times)
    return row


def test_speedup_spread_pairs_each_row_with_its_cases_baseline():
    rows = [
        _row("a", "torch.nn.RNN", "training", [2.0, 4.0]),
        _row("a", "fastrnn[cpp]", "training", [1.0, 2.0]),
        _row("a", "torch.nn.RNN", "inference", [10.0, 10.0]),
        _row("a", "fastrnn[cpp]", "inference", [5.0]),
        # No repeats kept (a cell-loop row, an older run): bounds from each side's p20 / p80.
        _row("loop", "torch.nn.GRUCell", "training", median_ms=3.0, p20_ms=2.0, p80_ms=4.0),
        _row("loop", "fastrnn.GRUCell", "training", median_ms=1.0, p20_ms=0.5, p80_ms=2.0),
        _row("b", "fastrnn[cpp]", "training", gate="REFUSED: output"),
    ]
    run.add_speedup_spread(rows)
    assert (rows[1]["speedup_p20"], rows[1]["speedup_p80"]) == pytest.approx((1.6, 2.8))
    assert rows[1]["speedup_spread"] == "repeats"
    assert (rows[3]["speedup_p20"], rows[3]["speedup_p80"]) == pytest.approx((2.0, 2.0))
    assert (rows[5]["speedup_p20"], rows[5]["speedup_p80"]) == pytest.approx((1.0, 8.0))
    assert rows[5]["speedup_spread"] == "p20/p80 bounds"
    # The baseline against itself: 2/2, 2/4, 4/2, 4/4 sorted [0.5, 1, 1, 2] -> 0.8 and 1.4, its own run-to-run noise.
    assert (rows[0]["speedup_p20"], rows[0]["speedup_p80"]) == pytest.approx((0.8, 1.4))
    assert "speedup_p20" not in rows[6]


def test_speedup_chart_labels_and_a_refused_case(tmp_path):
    rows = [
        {**_row("c1", "torch.nn.LSTM", mode, [2.0, 2.2]), "cell": "lstm", "T": 100, "B": 32, "H": 128,
         "proj_size": 64, "speedup_vs_torch": 1.0} for mode in ("inference", "training")
    ] + [
        {**_row("c1", "fastrnn[cpp]", mode, [1.0, 1.1]), "cell": "lstm", "T": 100, "B": 32, "H": 128,
         "proj_size": 64, "speedup_vs_torch": 2.0} for mode in ("inference", "training")
    ] + [
        {**_row("c2", "torch.nn.RNN", "training", [1.0]), "T": 5, "B": 1, "H": 8, "speedup_vs_torch": 1.0},
        {"case": "c2", "impl": "fastrnn[cpp]", "mode": "training", "gate": "REFUSED: output", "T": 5, "B": 1,
         "H": 8},
    ]
    run.add_speedup_spread(rows)
    info = {"cpu": "Test CPU", "torch_threads": 2, "torch": torch.__version__, "git_commit": "abc1234",
            "preset": "tiny"}
    assert_png(plot_speedup(rows, info, tmp_path))
    assert case_label(rows[2]) == "LSTM T=100 B=32 H=128, proj=64"
    assert case_label({"T": 200, "B": 16, "H": 64, "layers": 2, "bidirectional": True, "packed": True}) == (
        "RNN T=200 B=16 H=64, 2 layers, bidirectional, packed")
    assert case_label({"steps": 100, "B": 1, "H": 32, "impl": "fastrnn.GRUCell", "cell": "gru"}) == (
        "GRUCell loop, 100 steps, B=1 H=32")


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


def test_a_16_bit_cpu_case_times_fastrnn_as_a_user_gets_it(tmp_path, monkeypatch):
    """fastrnn's C++ op cannot run bfloat16: the case still has a fastrnn row (torch's implementation, which
    fastrnn runs then), so the table and chart show what a user gets, not only the forced reference."""
    cases = [Case(T=3, B=2, H=4, dtype="bfloat16"), Case(T=3, B=2, H=4, cell="gru", dtype="bfloat16")]
    monkeypatch.setattr(run, "select", lambda preset, flt: cases)
    assert run.main(["--preset", "tiny", "--out", str(tmp_path), "--min-run-time", "0.01"]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {(r["impl"], r["ran"]) for r in rows if r["cell"] == "rnn"} >= {("fastrnn[auto]", "torch-cpu")}
    assert "fastrnn (torch's implementation)" in {r["impl"] for r in rows if r["cell"] == "gru"}
    assert any(c.dtype == "bfloat16" for c in select("quick")) and any(c.dtype == "bfloat16" for c in select("family"))
