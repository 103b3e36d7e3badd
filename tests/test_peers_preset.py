"""The peers preset (``benchmarks.run --preset peers``): its cases, the message when peers are missing, the output
check that keeps a wrong contender out of the timings, the interleaved timer, and each installed peer against
torch on every family (those tests need the peer itself and skip without it)."""

import json
import os

import pytest
import torch

from benchmarks import grid, interleaved, run
from benchmarks.grid import Case, peer_modes, select
from benchmarks.interleaved import time_interleaved
from benchmarks.peers import contender, environment, runner

TINY = {"rnn": Case(T=4, B=2, H=3, I=5), "gru": Case(T=4, B=2, H=3, I=5, cell="gru"),
        "lstm": Case(T=4, B=2, H=3, I=5, cell="lstm")}


def test_the_preset_holds_the_issues_cases_and_modes():
    ids = {c.id for c in select("peers")}
    issue_inference = [Case(T=100, B=64, H=512), Case(T=100, B=64, H=1024), Case(T=1000, B=1, H=32, cell="lstm"),
                       Case(T=1000, B=4, H=64, cell="lstm"), Case(T=100, B=64, H=1024, cell="lstm"),
                       Case(T=5, B=1, H=8, cell="gru"), Case(T=5, B=1, H=8, cell="lstm")]
    assert {c.id for c in issue_inference} <= ids
    assert all("inference" in peer_modes(c) for c in issue_inference)
    assert peer_modes(Case(T=100, B=64, H=512)) == ("inference",)
    assert peer_modes(Case(T=1000, B=1, H=32)) == ("training",)  # the issue's RNN training case
    assert peer_modes(Case(T=1000, B=4, H=64, cell="lstm")) == ("inference", "training")
    assert {c.cell for c in select("peers") if "training" in peer_modes(c)} == {"rnn", "gru", "lstm"}
    assert all(c.layers == 1 and not c.bidirectional and not c.packed and c.dtype == "float32"
               for c in select("peers"))
    assert peer_modes(Case(T=7, B=1, H=8)) == ()


def test_missing_peers_are_named_with_the_setup_script(monkeypatch):
    real = environment.importlib.import_module

    def without_openvino_and_jax(name):
        if name in ("openvino", "jax"):
            raise ImportError(f"No module named {name!r}")
        return real(name)

    monkeypatch.setattr(environment.importlib, "import_module", without_openvino_and_jax)
    found, missing = environment.find_peers()
    assert missing == ["openvino", "jax"] and "openvino" not in found
    message = environment.missing_message(missing)
    assert "openvino and jax are not installed" in message and "bash scripts/setup_peers.sh" in message
    assert "jax is not installed" in environment.missing_message(["jax"])


def test_pin_threads_caps_torch_and_the_process(monkeypatch):
    threads, cpus = torch.get_num_threads(), os.sched_getaffinity(0)
    try:
        pinned = environment.pin_threads(1)
        assert torch.get_num_threads() == 1 and pinned["threads"] == 1
        assert len(os.sched_getaffinity(0)) == 1 and pinned["cpus"] == sorted(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(threads)
        os.sched_setaffinity(0, cpus)


def test_without_peers_the_preset_times_fastrnn_against_torch(tmp_path, monkeypatch, capsys):
    cases = [Case(T=5, B=1, H=8, cell="gru"), TINY["lstm"]]
    monkeypatch.setattr(run, "select", lambda preset, flt: cases)
    monkeypatch.setattr(grid, "PEERS_TRAINING", [TINY["lstm"]])
    monkeypatch.setattr(environment, "find_peers", lambda: ({}, list(environment.PEERS)))
    monkeypatch.setattr(environment, "pin_threads", lambda: {"threads": 2, "cpus": [0, 1]})
    assert run.main(["--preset", "peers", "--out", str(tmp_path), "--min-run-time", "0.01"]) == 0
    assert "onnxruntime, openvino and jax are not installed" in capsys.readouterr().err
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["machine"]["peers"] == {} and data["machine"]["peers_missing"] == list(environment.PEERS)
    assert data["machine"]["numpy"] == environment.numpy_version() and data["machine"]["threads"] == 2
    rows = data["rows"]
    assert {(r["cell"], r["mode"], r["impl"]) for r in rows} == {
        ("gru", "inference", "torch.nn.GRU"), ("gru", "inference", "fastrnn[cpp]"),
        ("lstm", "training", "torch.nn.LSTM"), ("lstm", "training", "fastrnn[cpp]")}
    assert all(r["gate"] == "pass" and r["median_ms"] > 0 and len(r["times_ms"]) == r["repeats"] for r in rows)
    assert all(r["speedup_p20"] <= r["speedup_p80"] for r in rows)
    assert "Peers: none; every runtime on 2 threads" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "results.csv").read_text().count("\n") == len(rows) + 1
    for png in ("speedup.png", "peers.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _offset(results, key: str, by: float):
    return {k: v + by if k == key else v for k, v in results.items()}


@pytest.mark.parametrize("mode,key", [("inference", "output"), ("inference", "c_n"), ("training", "grad_input"),
                                      ("training", "grad_weight_hh_l0")])
def test_a_contender_with_wrong_values_is_refused_and_not_timed(monkeypatch, mode, key):
    monkeypatch.setattr(grid, "PEERS_TRAINING", [TINY["lstm"]] if mode == "training" else [])
    base, x, contenders = runner.build(TINY["lstm"], peers={})
    grads = mode == "training"
    calls = {"wrong": 0, "right": 0}

    def fake(name: str, by: float) -> contender.Contender:
        def results(weights):
            return _offset(contender.module_results(base, x, weights, grads), key, by)

        def call():
            calls[name] += 1

        return contender.Contender(name, "fake", infer=call, results=results, train=call, train_results=results)

    rows = runner.measure(TINY["lstm"], base, x, contenders + [fake("wrong", 1e-3), fake("right", 0.0)], 0.01)
    by_impl = {r["impl"]: r for r in rows}
    assert by_impl["wrong"]["gate"].startswith(f"REFUSED: {key}: err")
    assert "median_ms" not in by_impl["wrong"] and calls["wrong"] == 0
    assert by_impl["right"]["gate"] == "pass" and by_impl["right"]["median_ms"] > 0 and calls["right"] > 0
    assert {r["mode"] for r in rows} == {mode}


def test_a_peer_that_cannot_be_built_or_run_fails_its_gate():
    base, x, _ = runner.build(TINY["gru"], peers={})
    weights = contender.upstream_weights(base, x)
    reference = contender.module_results(base, x, weights, grads=True)
    oracle = contender.float64_oracle(base, x, weights, grads=True)
    broken = contender.failed_contender("onnxruntime", RuntimeError("no GRU kernel"), trains=False)
    assert contender.gate(broken, "inference", weights, reference, oracle) == ["raised RuntimeError: no GRU kernel"]
    assert broken.train is None
    assert contender.gate(broken, "training", weights, reference, oracle) == ["no training mode"]
    jax_like = contender.failed_contender("jax", ValueError("bad shape"), trains=True)
    assert contender.gate(jax_like, "training", weights, reference, oracle) == ["raised ValueError: bad shape"]


def test_interleaved_rounds_rotate_the_order_and_keep_every_repeat():
    log: list[str] = []
    entered: list[str] = []

    class Entered:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            entered.append(self.name)

        def __exit__(self, *exc):
            return False

    fns = {name: (lambda name=name: log.append(name)) for name in "abc"}
    timings = time_interleaved(fns, min_run_time=1e-9, rounds=3, contexts={"b": lambda: Entered("b")})
    assert all(t.repeats == 3 and len(t.times_ms) == 3 and t.median_ms >= 0 for t in timings.values())
    # Warm-up and calibration (3 calls each), then one call a block: rounds a b c, b c a, c a b.
    assert log[9:] == list("abc" "bca" "cab")
    assert entered == ["b"] * 4  # calibration, then each of b's three blocks
    with pytest.raises(ValueError, match="at least one function"):
        time_interleaved({}, 0.1)


def test_settle_waits_while_a_thread_pool_spins(monkeypatch):
    """A pool still spinning after its call (onnxruntime's does for 100-250 ms) must not be charged to the next
    contender: settle sleeps window by window until the process's CPU time stops growing."""
    clock = {"cpu": 0.0, "wall": 0.0, "busy_windows": 3, "reads": 0}

    def fake_sleep(seconds):
        clock["wall"] += seconds
        if clock["busy_windows"]:
            clock["busy_windows"] -= 1
            clock["cpu"] += seconds  # one core busy through the window

    def fake_cpu():
        clock["reads"] += 1
        return clock["cpu"]

    monkeypatch.setattr(interleaved.time, "sleep", fake_sleep)
    monkeypatch.setattr(interleaved.time, "perf_counter", lambda: clock["wall"])
    monkeypatch.setattr(interleaved, "_process_cpu_s", fake_cpu)
    assert interleaved.settle(max_s=1.0, window_s=0.01) == pytest.approx(0.04)  # three busy windows, one idle
    clock.update(wall=0.0, busy_windows=1000)
    assert interleaved.settle(max_s=0.05, window_s=0.01) == pytest.approx(0.05)  # never idle: capped
    monkeypatch.setattr(interleaved, "_process_cpu_s", lambda: None)
    clock.update(wall=0.0)
    assert interleaved.settle(max_s=1.0, window_s=0.01) == pytest.approx(0.01)  # no per-thread times: one window


PEER_IMPORTS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "jax": "jax"}


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("peer", ["onnxruntime", "openvino", "jax"])
def test_each_peer_matches_torch_on_every_family(monkeypatch, peer, cell):
    version = pytest.importorskip(PEER_IMPORTS[peer]).__version__
    monkeypatch.setattr(grid, "PEERS_INFERENCE", [TINY[cell]])
    monkeypatch.setattr(grid, "PEERS_TRAINING", [TINY[cell]] if peer == "jax" else [])
    rows = runner.run_peer_case(TINY[cell], 0.01, {peer: version})
    mine = [r for r in rows if r["impl"] == peer]
    assert [r["mode"] for r in mine] == (["inference", "training"] if peer == "jax" else ["inference"])
    assert all(r["gate"] == "pass" and r["median_ms"] > 0 for r in mine), mine
    assert all(peer in r["ran"] for r in mine)
