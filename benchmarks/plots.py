"""speedup.png (every case of a run, inference and training, against torch, with the p20-p80 spread of the
ratio), and for a preset with sweeps the speedup plots against T, H and B, with p20-p80 bands."""

from __future__ import annotations

from pathlib import Path

from benchmarks.grid import SWEEP_BASE

DEFAULTS = {"I": 0, "layers": 1, "bidirectional": False, "nonlinearity": "tanh", "dtype": "float32", "packed": False,
            "proj_size": 0}
# Each cell's plots compare with torch's module for that cell; the RNN's keep their file names.
BASELINES = {"rnn": ("torch.nn.RNN", ""), "gru": ("torch.nn.GRU", "gru_"), "lstm": ("torch.nn.LSTM", "lstm_")}


# The implementation a user of fastrnn gets, in order of preference: the CUDA algorithm finder's choice, the CPU
# op, torch's implementation run by fastrnn's gated modules on CUDA, the Triton kernels; fastrnn's cells in loops.
HEADLINE = ("fastrnn[auto]", "fastrnn[cpp]", "fastrnn (torch's implementation)", "fastrnn[triton]")
MODES = {"inference": "tab:blue", "training": "tab:orange"}


def headline_impl(impls: set[str]) -> str | None:
    """Which of a case's implementations speedup.png shows: fastrnn as a user gets it."""
    for name in HEADLINE:
        if name in impls:
            return name
    cells = sorted(i for i in impls if i.startswith("fastrnn."))
    return cells[0] if cells else None


def case_label(row: dict) -> str:
    """A short name for a row's case: what differs from one plain unidirectional tanh layer, float32, padded."""
    if "steps" in row:
        return f"{row['impl'].split('.')[-1]} loop, {row['steps']} steps, B={row['B']} H={row['H']}" + (
            f", {row['dtype']}" if row.get("dtype", "float32") != "float32" else "")
    parts = [{"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}[row.get("cell", "rnn")],
             f"T={row['T']} B={row['B']} H={row['H']}"]
    if row.get("I") and row["I"] != row["H"]:
        parts.append(f"I={row['I']}")
    if row.get("proj_size"):
        parts.append(f"proj={row['proj_size']}")
    if row.get("layers", 1) > 1:
        parts.append(f"{row['layers']} layers")
    for key, default in (("bidirectional", False), ("packed", False)):
        if row.get(key, default) != default:
            parts.append(key)
    if row.get("nonlinearity", "tanh") != "tanh":
        parts.append(row["nonlinearity"])
    if row.get("dtype", "float32") != "float32":
        parts.append(row["dtype"])
    return " ".join(parts[:2]) + (", " + ", ".join(parts[2:]) if parts[2:] else "")


def plot_speedup(rows: list[dict], info: dict, out_dir: Path) -> Path:
    """speedup.png: one row per case (in run order) with a bar for inference and one for training, the ratio
    of torch's median to fastrnn's, and error bars from ``speedup_p20`` .. ``speedup_p80``
    (``benchmarks.run.add_speedup_spread``); a log x axis with a line at 1.0x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    cases: dict[str, dict[str, dict]] = {}  # case -> mode -> the headline row
    impls: dict[str, set[str]] = {}
    for r in rows:
        impls.setdefault(r["case"], set()).add(r["impl"])
    for r in rows:
        if r["impl"] == headline_impl(impls[r["case"]]):
            cases.setdefault(r["case"], {})[r["mode"]] = r
    labels = [case_label(next(iter(modes.values()))) for modes in cases.values()]
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.5 * max(len(cases), 1)))
    values, bounds_used, labelled = [], False, set()
    for i, modes in enumerate(cases.values()):
        for j, (mode, color) in enumerate(MODES.items()):
            r, y = modes.get(mode), i + (j - 0.5) * 0.4
            if r is None:
                continue
            if "speedup_vs_torch" not in r:
                ax.text(1.0, y, f"  {mode}: refused by the correctness gate", va="center", fontsize=8)
                continue
            s, lo, hi = r["speedup_vs_torch"], r.get("speedup_p20", r["speedup_vs_torch"]), r.get("speedup_p80", 0)
            hi = max(hi, s)
            lo = min(lo, s)
            ax.barh(y, s - 1.0, left=1.0, height=0.38, color=color, label=None if mode in labelled else mode)
            labelled.add(mode)
            bars = ax.errorbar(s, y, xerr=[[s - lo], [hi - s]], fmt="none", ecolor="black", elinewidth=1, capsize=2)
            if r.get("speedup_spread") == "p20/p80 bounds":
                bars.lines[2][0].set_linestyle((0, (2, 2)))
                bounds_used = True
            ax.text(max(hi, 1.0) * 1.04, y, f"{s:.2f}x", va="center", fontsize=8)
            values += [lo, hi, s]
    ax.set_xscale("log")
    if values:
        ax.set_xlim(min(0.5, min(values) / 1.3), max(2.0, max(values) * 1.6))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}x"))
    # Label the 2x and 5x minor ticks of each decade too; the rest stay bare.
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: f"{x:g}x" if f"{x:g}"[0] in "25" else ""))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(labels)), labels, fontsize=9)
    ax.set_ylim(len(labels) - 0.4, -0.6)  # the first case at the top
    ax.grid(True, axis="x", which="major", alpha=0.4)
    ax.grid(True, axis="x", which="minor", alpha=0.12)
    shown = sorted({r["impl"] for modes in cases.values() for r in modes.values()})
    notes = ["speedup against torch: torch's median time / fastrnn's (> 1: fastrnn is faster)",
             f"fastrnn as run: {', '.join(shown)}", "error bars: p20-p80 of the ratio over pairs of repeats"]
    if bounds_used:
        notes.append("dashed error bars: bounds from each side's p20 and p80 (those rows kept no repeats)")
    ax.set_xlabel("\n".join(notes), fontsize=9)
    machine = info.get("gpu") or f"{info['cpu']}, {info['torch_threads']} threads"
    ax.set_title(f"fastrnn vs torch: {machine}, torch {info['torch']}\n"
                 f"commit {info['git_commit']}, preset {info.get('preset', '?')}", fontsize=10)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    path = out_dir / "speedup.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
