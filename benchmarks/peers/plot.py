"""peers.png: for each case and mode, every contender's speedup against torch's module of the same family, with
the p20-p80 spread of the ratio (``benchmarks.run.add_speedup_spread``); one panel per mode, a log x axis."""

from __future__ import annotations

from pathlib import Path

from benchmarks.plots import case_label

COLORS = {"fastrnn": "tab:blue", "onnxruntime": "tab:green", "openvino": "tab:purple", "jax": "tab:red"}
BASELINES = ("torch.nn.RNN", "torch.nn.GRU", "torch.nn.LSTM")


def _color(impl: str) -> str:
    return next((color for prefix, color in COLORS.items() if impl.startswith(prefix)), "tab:gray")


def plot_peers(rows: list[dict], info: dict, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    modes = [m for m in ("inference", "training") if any(r["mode"] == m for r in rows)]
    # Per mode: its cases and its contenders (training has no ONNX runtimes), torch's module left out.
    panels = {m: list(dict.fromkeys(r["case"] for r in rows if r["mode"] == m)) for m in modes}
    impls = {m: list(dict.fromkeys(r["impl"] for r in rows if r["mode"] == m and r["impl"] not in BASELINES))
             for m in modes}
    sizes = [0.5 + 0.25 * max(len(impls[m]), 1) * len(panels[m]) for m in modes]
    fig, axes = plt.subplots(len(modes), 1, figsize=(11, 1.2 + sum(sizes)), squeeze=False,
                             gridspec_kw={"height_ratios": sizes or [1]})
    for ax, mode in zip(axes[:, 0], modes):
        cases = panels[mode]
        bar = 0.8 / max(len(impls[mode]), 1)
        by_key = {(r["case"], r["impl"]): r for r in rows if r["mode"] == mode}
        values, labelled = [1.0], set()
        for i, case in enumerate(cases):
            for j, impl in enumerate(impls[mode]):
                r, y = by_key.get((case, impl)), i - 0.4 + (j + 0.5) * bar
                if r is None:
                    continue
                if "speedup_vs_torch" not in r:
                    ax.text(1.0, y, f"  {impl}: failed the output check", va="center", fontsize=7)
                    continue
                s = r["speedup_vs_torch"]
                lo, hi = min(r.get("speedup_p20", s), s), max(r.get("speedup_p80", s), s)
                ax.barh(y, s - 1.0, left=1.0, height=bar * 0.9, color=_color(impl),
                        label=None if impl in labelled else impl)
                labelled.add(impl)
                ax.errorbar(s, y, xerr=[[s - lo], [hi - s]], fmt="none", ecolor="black", elinewidth=0.8, capsize=1.5)
                ax.text(max(hi, 1.0) * 1.04, y, f"{s:.2f}x", va="center", fontsize=7)
                values += [lo, hi]
        ax.set_xscale("log")
        ax.set_xlim(min(0.5, min(values) / 1.3), max(2.0, max(values) * 1.8))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}x"))
        ax.axvline(1.0, color="black", linewidth=1)
        labels = [case_label(next(r for r in rows if r["case"] == c)) for c in cases]
        ax.set_yticks(range(len(cases)), labels, fontsize=9)
        ax.set_ylim(len(cases) - 0.5, -0.5)
        ax.grid(True, axis="x", which="major", alpha=0.4)
        ax.set_title(f"{mode}: speedup against torch's module (torch's median / the contender's; > 1: faster)",
                     fontsize=9)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    peers = ", ".join(f"{n} {v.split('-')[0]}" for n, v in info.get("peers", {}).items()) or "none installed"
    fig.suptitle(f"fastrnn and peers vs torch: {info['cpu']}, {info.get('threads', info['torch_threads'])} threads, "
                 f"torch {info['torch']}\npeers: {peers}; commit {info['git_commit']}; error bars: p20-p80 of the "
                 "ratio", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_size_inches()[1]))
    path = out_dir / "peers.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
