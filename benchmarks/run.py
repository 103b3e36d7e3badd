"""fastrnn's main job: on whatever hardware is here, check fastrnn equals torch.nn.RNN (GRU, LSTM) and time both.

    python -m benchmarks.run [--quick | --full | --preset tiny] [--filter T=1000,H=32] [--out DIR]

For each configuration: a correctness gate (outputs and every gradient against torch.nn.RNN and a
float64 oracle; a backend that fails is refused, not timed), then inference (no_grad forward) and a
training step (forward + backward of the sum of outputs) for torch.nn.RNN (cuDNN on GPU, TF32 off),
every available fastrnn backend, a Python loop over torch.nn.RNNCell, and on GPU torch.nn.RNN without
cuDNN. Writes table.md, results.json, results.csv and speedup.png (the speedup of each case against torch,
inference and training, with the p20-p80 spread of the ratio over the repeats), and for a preset with sweeps the
speedup_vs_{T,H,B}.png plots, to benchmarks/results/<device>-<preset>-<date>/.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn
from benchmarks import machine
from benchmarks.cell_loop import CELL_CLASSES, CELL_LOOP_CASES, GATED_CELL_LOOP_CASES, run_cell_loop_case
from benchmarks.grid import Case, select
from benchmarks.timing import peak_memory_mb, ratio_quantiles, time_cpu, time_cuda
from fastrnn.testing import outputs_and_grads, parity_failures

TORCH = "torch.nn.RNN"
# The baseline of each cell: torch's module for it (oneDNN's LSTM on the CPU, cuDNN on CUDA).
TORCH_NAMES = {"rnn": TORCH, "gru": "torch.nn.GRU", "lstm": "torch.nn.LSTM"}
TORCH_NO_CUDNN = "torch.nn.RNN (no cuDNN)"
CELL_LOOP = "nn.RNNCell loop"
AUTO = "fastrnn[auto]"
# The row every other row of its case and mode is compared with: torch's module, or torch's cell in the loops.
BASELINES = {*TORCH_NAMES.values(), *(f"torch.nn.{name}" for name in CELL_CLASSES.values())}


@contextlib.contextmanager
def forced_backend(name: Optional[str]):
    old = os.environ.get("FASTRNN_BACKEND")
    if name is not None:
        os.environ["FASTRNN_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FASTRNN_BACKEND", None)
        else:
            os.environ["FASTRNN_BACKEND"] = old


class CellLoop(nn.Module):
    """The naive baseline: torch.nn.RNNCell stepped by a Python loop, layer by layer and direction."""

    def __init__(self, rnn: nn.RNN):
        super().__init__()
        self.rnn = rnn
        d = 2 if rnn.bidirectional else 1
        self.cells = nn.ModuleList()
        for layer in range(rnn.num_layers):
            for direction in range(d):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                size = rnn.input_size if layer == 0 else rnn.hidden_size * d
                cell = nn.RNNCell(size, rnn.hidden_size, rnn.bias, rnn.nonlinearity).to(rnn.weight_hh_l0)
                cell.weight_ih, cell.weight_hh = getattr(rnn, "weight_ih" + suffix), getattr(rnn, "weight_hh" + suffix)
                if rnn.bias:
                    cell.bias_ih, cell.bias_hh = getattr(rnn, "bias_ih" + suffix), getattr(rnn, "bias_hh" + suffix)
                self.cells.append(cell)

    def forward(self, x: torch.Tensor, hx: Optional[torch.Tensor] = None):
        d = 2 if self.rnn.bidirectional else 1
        finals = []
        for layer in range(self.rnn.num_layers):
            outs = []
            for direction in range(d):
                cell = self.cells[layer * d + direction]
                h = x.new_zeros(x.size(1), self.rnn.hidden_size) if hx is None else hx[layer * d + direction]
                steps = range(x.size(0) - 1, -1, -1) if direction else range(x.size(0))
                ys = [None] * x.size(0)
                for t in steps:
                    h = cell(x[t], h)
                    ys[t] = h
                outs.append(torch.stack(ys))
                finals.append(h)
            x = torch.cat(outs, -1) if d == 2 else outs[0]
        return x, torch.stack(finals)


def make_input(case: Case, device: torch.device, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(case.T, case.B, case.input_size, generator=gen).to(device=device, dtype=dtype)
    if not case.packed:
        return x
    # Unsorted lengths spread over [T/10, T], the longest equal to T.
    lengths = torch.randint(max(1, case.T // 10), case.T + 1, (case.B,), generator=gen)
    lengths[torch.randint(0, case.B, (1,), generator=gen)] = case.T
    return pack_padded_sequence(x, lengths, enforce_sorted=False)


def torch_module(case: Case, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """torch's module for the case's cell, the baseline and the source of the weights."""
    if case.cell == "rnn":
        return nn.RNN(case.input_size, case.H, case.layers, case.nonlinearity, bidirectional=case.bidirectional,
                      device=device, dtype=dtype)
    extra = {"proj_size": case.proj_size} if case.proj_size else {}
    cls = nn.GRU if case.cell == "gru" else nn.LSTM
    return cls(case.input_size, case.H, case.layers, bidirectional=case.bidirectional, device=device, dtype=dtype,
               **extra)


def _family_candidates(case: Case, device: torch.device, torch_module: nn.Module) -> dict:
    """GRU / LSTM: the C++ op and the reference on the CPU; on CUDA fastrnn runs torch's own implementation."""
    ours = (fastrnn.GRU if case.cell == "gru" else fastrnn.LSTM).from_torch(torch_module)
    if device.type != "cpu" or case.dtype not in ("float32", "float64"):
        return {"fastrnn (torch's implementation)": (ours, None)}
    return {f"fastrnn[{b}]": (ours, b) for b in fastrnn.available_backends() if b in ("cpp", "reference")}


def _candidates(case: Case, device: torch.device, torch_rnn: nn.RNN,
                skip: tuple[str, ...] = ()) -> dict[str, tuple[nn.Module, Optional[str]]]:
    base = TORCH_NAMES[case.cell]
    if case.cell != "rnn":
        found = {base: (torch_rnn, None), **_family_candidates(case, device, torch_rnn)}
        return {name: impl for name, impl in found.items() if name == base or name not in skip}
    ours = fastrnn.RNN.from_torch(torch_rnn)
    found: dict[str, tuple[nn.Module, Optional[str]]] = {TORCH: (torch_rnn, None)}
    if device.type == "cuda":
        found[TORCH_NO_CUDNN] = (torch_rnn, None)
    for backend in fastrnn.available_backends():
        with forced_backend(backend):
            from fastrnn.backends import select_backend

            probe = torch.zeros(1, 1, 1, device=device, dtype=torch_rnn.weight_hh_l0.dtype)
            try:
                select_backend(probe)
            except RuntimeError:
                continue
        found[f"fastrnn[{backend}]"] = (ours, backend)
    if device.type == "cuda" or "fastrnn[cpp]" not in found:
        # fastrnn as a user gets it: on CUDA the algorithm finder picks Triton or cuDNN per shape class
        # (fastrnn.algo; the fastrnn[triton] row keeps the Triton kernels forced, so their own ratio stays
        # visible); on the CPU, where the C++ op cannot run the dtype (16-bit), torch's own implementation.
        found[AUTO] = (ours, None)
    if not case.packed:
        found[CELL_LOOP] = (CellLoop(torch_rnn), None)
    return {name: impl for name, impl in found.items() if name == TORCH or name not in skip}


def _context(name: str):
    if name == TORCH_NO_CUDNN:
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()


def gate(case: Case, name: str, module: nn.Module, backend: Optional[str], x, torch_rnn: nn.RNN,
         reference: dict, oracle: dict) -> list[str]:
    """Outputs and gradients of one candidate against torch and the float64 oracle; [] when it passes."""
    with forced_backend(backend), _context(name):
        got = outputs_and_grads(module, x)
    if isinstance(module, CellLoop):  # its parameters are the wrapped nn.RNN's, named "rnn.<name>"
        got = {key.replace("grad_rnn.", "grad_"): value for key, value in got.items()}
    return parity_failures(got, reference, oracle)


def run_case(case: Case, device: torch.device, min_run_time: float, skip: tuple[str, ...] = ()) -> list[dict]:
    dtype = getattr(torch, case.dtype)
    torch.manual_seed(0)
    torch_rnn = torch_module(case, device, dtype)
    base_name = TORCH_NAMES[case.cell]
    x = make_input(case, device, dtype)
    reference = outputs_and_grads(torch_rnn, x)
    oracle = outputs_and_grads(torch_rnn.double(), x, dtype=torch.float64)
    torch_rnn.to(dtype)
    timer = time_cuda if device.type == "cuda" else (lambda fn: time_cpu(fn, min_run_time))
    rows = []
    for name, (module, backend) in _candidates(case, device, torch_rnn, skip).items():
        failures = [] if name == base_name else gate(case, name, module, backend, x, torch_rnn, reference, oracle)
        x_train = (x._replace(data=x.data.clone().requires_grad_(True)) if isinstance(x, PackedSequence)
                   else x.clone().requires_grad_(True))

        def infer(module=module):
            with torch.no_grad():
                return module(x)

        def train(module=module, x_train=x_train):
            out, h_n = module(x_train)
            (out.data if isinstance(out, PackedSequence) else out).sum().backward()

        for mode, fn in (("inference", infer), ("training", train)):
            row = {**asdict(case), "case": case.id, "impl": name, "mode": mode,
                   "gate": "pass" if not failures else "REFUSED: " + "; ".join(failures)}
            if not failures:
                with forced_backend(backend), _context(name):
                    t = timer(fn)
                    row["peak_mem_mb"] = peak_memory_mb(fn, device)
                    row["ran"] = _ran(name, backend, x)
                row.update(median_ms=t.median_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms, repeats=t.repeats,
                           times_ms=t.times_ms)
            rows.append(row)
        module.zero_grad(set_to_none=True)
    for mode in ("inference", "training"):
        base = next(r for r in rows if r["impl"] == base_name and r["mode"] == mode)
        for r in rows:
            if r["mode"] == mode and "median_ms" in r:
                r["speedup_vs_torch"] = base["median_ms"] / r["median_ms"]
    return rows


def _ran(name: str, backend: Optional[str], x) -> str:
    """What actually ran for a row: the backend, for fastrnn[auto] the finder's choice for this call, and for
    torch's module cuDNN on CUDA or torch's CPU implementation (ATen, oneDNN for the LSTM)."""
    data = x.data if isinstance(x, PackedSequence) else x
    if name == AUTO:
        if not data.is_cuda:
            return "torch-cpu"  # the CPU's auto row exists only where the C++ op cannot run the dtype
        from fastrnn import algo

        return algo.last_choice(data) or "triton"
    if name in TORCH_NAMES.values():
        return "cudnn" if data.is_cuda else "torch-cpu"
    return backend or "torch"


def add_speedup_spread(rows: list[dict]) -> list[dict]:
    """Gives every timed row ``speedup_p20`` / ``speedup_p80``, the spread of its speedup against its case's
    baseline in the same mode: quantiles of the ratio over every pair of repeats (``times_ms``) where both rows
    recorded them (``speedup_spread: "repeats"``), else the bounds ``base p20 / p80`` .. ``base p80 / p20`` from
    the quantiles alone (``"p20/p80 bounds"``, wider: rows of older runs, or cases that keep no repeats)."""
    base = {(r["case"], r["mode"]): r for r in rows if r["impl"] in BASELINES and "median_ms" in r}
    for r in rows:
        b = base.get((r["case"], r["mode"]))
        if b is None or "median_ms" not in r:
            continue
        if r.get("times_ms") and b.get("times_ms"):
            r["speedup_p20"], r["speedup_p80"] = ratio_quantiles(b["times_ms"], r["times_ms"])
            r["speedup_spread"] = "repeats"
        else:
            r["speedup_p20"], r["speedup_p80"] = b["p20_ms"] / r["p80_ms"], b["p80_ms"] / r["p20_ms"]
            r["speedup_spread"] = "p20/p80 bounds"
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| case | mode | impl | ran | median ms | p20-p80 ms | speedup vs torch.nn.RNN / GRU / LSTM (p20-p80) "
             "| gate |",
             "|---|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        if "median_ms" in r:
            timing = f"{r['median_ms']:.3f} | {r['p20_ms']:.3f}-{r['p80_ms']:.3f} | {r['speedup_vs_torch']:.2f}x"
            if "speedup_p20" in r:
                timing += f" ({r['speedup_p20']:.2f}-{r['speedup_p80']:.2f})"
        else:
            timing = "- | - | -"
        lines.append(f"| {r['case']} | {r['mode']} | {r['impl']} | {r.get('ran', '-')} | {timing} | {r['gate'][:80]} |")
    return "\n".join(lines) + "\n"


def write_results(rows: list[dict], info: dict, out_dir: Path, plots: bool = True) -> list[Path]:
    """table.md, results.json, results.csv and (with ``plots``) speedup.png and the sweep plots under
    ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    add_speedup_spread(rows)
    written = [out_dir / "results.json", out_dir / "results.csv", out_dir / "table.md"]
    written[0].write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    keys = sorted({k for r in rows for k in r})
    with written[1].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        # A row's repeat times go in one cell, space-separated.
        writer.writerows({k: " ".join(f"{x:.6g}" for x in v) if isinstance(v, list) else v for k, v in r.items()}
                         for r in rows)
    header = (f"Machine: {info.get('gpu') or info['cpu']} ({info['torch_threads']} threads), torch {info['torch']}, "
              f"triton {info['triton']}, commit {info['git_commit']}\n\n")
    if "peers" in info:
        versions = ", ".join(f"{name} {version.split('-')[0]}" for name, version in info["peers"].items()) or "none"
        header += f"Peers: {versions}; every runtime on {info['threads']} threads\n\n"
    written[2].write_text(header + markdown_table(rows))
    if not plots:
        return written
    from benchmarks.plots import plot_speedup, plot_sweeps

    try:
        written += [plot_speedup(rows, info, out_dir)] + plot_sweeps(rows, out_dir)
        if info.get("preset") == "peers":
            from benchmarks.peers.plot import plot_peers

            written.append(plot_peers(rows, info, out_dir))
        return written
    except ImportError as e:  # matplotlib missing: the numbers are written, the pictures are not
        print(f"no plots: {e}", file=sys.stderr)
        return written


def _progress(items: list, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(items, desc=desc, unit="case", file=sys.stderr)
    except ImportError:
        return items


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", help="tiny | quick (<2 min on 2 CPU cores) | full | family | "
                        "family-full | peers (against onnxruntime, OpenVINO and JAX: scripts/setup_peers.sh)")
    parser.add_argument("--quick", dest="preset", action="store_const", const="quick", help="--preset quick")
    parser.add_argument("--full", dest="preset", action="store_const", const="full", help="--preset full")
    parser.add_argument("--filter", default=None, help="e.g. 'T=1000,H=32' or 'packed'")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/results/<device>-<date>)")
    parser.add_argument("--min-run-time", type=float, default=0.3, help="CPU seconds per timing")
    parser.add_argument("--skip", default="", help="comma-separated implementations not to time, e.g. "
                        "'fastrnn[reference],nn.RNNCell loop' (torch.nn.RNN, the baseline, always runs)")
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cases = select(args.preset, args.filter)
    skip = tuple(filter(None, args.skip.split(",")))
    peers: dict[str, str] = {}
    if args.preset == "peers":  # CPU runtimes; the thread cap goes first, before any runtime starts its pool
        from benchmarks.peers.environment import find_peers, missing_message, numpy_version, pin_threads
        from benchmarks.peers.runner import run_peer_case

        device = torch.device("cpu")
        pinned = pin_threads()
        peers, missing = find_peers()
        if missing:
            print(missing_message(missing), file=sys.stderr)
    info = machine.describe(device)
    if args.preset == "peers":
        info.update(pinned, peers=peers, peers_missing=missing, numpy=numpy_version())
    info["fastrnn_backends"] = fastrnn.available_backends()
    info["preset"] = args.preset
    stamp = datetime.date.today().isoformat()
    default_dir = Path(__file__).parent / "results" / f"{machine.slug(info)}-{args.preset}-{stamp}"
    out_dir = Path(args.out) if args.out else default_dir
    print(f"fastrnn benchmark on {info.get('gpu') or info['cpu']} ({device}), backends {info['fastrnn_backends']}, "
          f"{len(cases)} cases (+ cell loops on the CPU presets)", file=sys.stderr)
    rows: list[dict] = []
    # The cell loop cases run on the CPU presets, where a Python loop is the user's code: RNNCell on quick and
    # full, GRUCell and LSTMCell on the family presets.
    loop_cases = {"quick": CELL_LOOP_CASES, "full": CELL_LOOP_CASES, "family": GATED_CELL_LOOP_CASES,
                  "family-full": GATED_CELL_LOOP_CASES}.get(args.preset, []) if device.type == "cpu" else []
    loops = [c for c in loop_cases if not args.filter or args.filter in c.id]
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for case in _progress(cases + loops, args.preset):
            if args.preset == "peers":
                rows.extend(run_peer_case(case, args.min_run_time, peers, skip))
            elif isinstance(case, Case):
                rows.extend(run_case(case, device, args.min_run_time, skip))
            else:
                rows.extend(run_cell_loop_case(case, args.min_run_time))
            write_results(rows, info, out_dir, plots=False)  # a run cut short still leaves its numbers
    written = write_results(rows, info, out_dir)
    print(markdown_table(rows))
    refused = [r for r in rows if r["gate"] != "pass"]
    print(f"parity: {len(rows) - len(refused)} of {len(rows)} timings passed the correctness gate; "
          f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
