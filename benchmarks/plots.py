"""Speedup plots against T, H and B (inference and training), with p20-p80 bands."""

from __future__ import annotations

from pathlib import Path

from benchmarks.grid import SWEEP_BASE

DEFAULTS = {"I": 0, "layers": 1, "bidirectional": False, "nonlinearity": "tanh", "dtype": "float32", "packed": False,
            "proj_size": 0}
# Each cell's plots compare with torch's module for that cell; the RNN's keep their file names.
BASELINES = {"rnn": ("torch.nn.RNN", ""), "gru": ("torch.nn.GRU", "gru_"), "lstm": ("torch.nn.LSTM", "lstm_")}


def _sweep_rows(rows: list[dict], axis: str, cell: str = "rnn") -> list[dict]:
    fixed = {k: v for k, v in SWEEP_BASE.items() if k != axis}
    # Rows from before the GRU / LSTM cases have no cell or proj_size: they are the RNN's, unprojected.
    return [r for r in rows if all(r.get(k) == v for k, v in fixed.items())
            and all(r.get(k, 0 if k == "proj_size" else None) == v for k, v in DEFAULTS.items())
            and r.get("cell", "rnn") == cell and "median_ms" in r]


def plot_sweeps(rows: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for cell, (baseline, prefix) in BASELINES.items():
        written += _plot_cell(plt, rows, out_dir, cell, baseline, prefix)
    return written


def _plot_cell(plt, rows: list[dict], out_dir: Path, cell: str, baseline: str, prefix: str) -> list[Path]:
    written = []
    for axis in ("T", "H", "B"):
        selected = _sweep_rows(rows, axis, cell)
        if len({r[axis] for r in selected}) < 2:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
        for ax, mode in zip(axes, ("inference", "training")):
            torch_times = {r[axis]: r for r in selected if r["mode"] == mode and r["impl"] == baseline}
            for impl in sorted({r["impl"] for r in selected} - {baseline}):
                points = sorted((r[axis], r) for r in selected if r["mode"] == mode and r["impl"] == impl
                                and r[axis] in torch_times)
                if not points:
                    continue
                xs = [p[0] for p in points]
                base = [torch_times[x]["median_ms"] for x in xs]
                mid = [b / p[1]["median_ms"] for b, p in zip(base, points)]
                lo = [b / p[1]["p80_ms"] for b, p in zip(base, points)]
                hi = [b / p[1]["p20_ms"] for b, p in zip(base, points)]
                ax.plot(xs, mid, marker="o", label=impl)
                ax.fill_between(xs, lo, hi, alpha=0.2)
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(axis)
            ax.set_ylabel(f"speedup vs {baseline}")
            others = ", ".join(f"{k}={v}" for k, v in SWEEP_BASE.items() if k != axis)
            ax.set_title(f"{mode} ({others})")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{prefix}speedup_vs_{axis}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
