"""Quality against speed: recall (and err_vs_full) over speedup_vs_full, one point per pattern, budget and
implementation, a budget sweep (the same pattern with other parameters) as a line, the Pareto front drawn."""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from sparsebench.results import recall_applies

QUALITY_METRICS = (("recall", "recall (share of full attention's mass kept)", True),
                   ("err_vs_full", "err_vs_full (max abs error against full attention)", False))


def has_quality(rows: pd.DataFrame) -> bool:
    """Whether rows can draw the figure: ok rows with recall and speedup_vs_full, some of them sparse, with a
    selection pattern or on inputs other than random (on random q and k recall means nothing: every pattern
    keeps about its share of keys)."""
    if "recall" not in rows.columns or "speedup_vs_full" not in rows.columns:
        return False
    ok = rows[(rows["status"] == "ok") & rows["recall"].notna() & rows["speedup_vs_full"].notna()]
    inputs = ok["inputs"] if "inputs" in ok.columns else pd.Series("random", ok.index)
    return any(p != "dense" and recall_applies(p, i) for p, i in zip(ok["pattern"], inputs))


def pareto_front(points: list[tuple[float, float]], larger_is_better: bool = True) -> list[tuple[float, float]]:
    """The points (speed-up, quality) that no other point beats in both, by ascending speed-up."""
    sign = 1 if larger_is_better else -1
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (-p[0], -sign * p[1])):  # fastest first
        if sign * y > best:
            front.append((x, y))
            best = sign * y
    return sorted(front)


def quality_figure(rows: pd.DataFrame, colors: dict[str, str], title: str = "") -> Figure:
    """Recall and err_vs_full against speedup_vs_full, a column per sequence length; `colors`: each
    implementation's (plots.impl_colors, so that every figure of a run agrees)."""
    ok = rows[(rows["status"] == "ok") & rows["recall"].notna() & rows["speedup_vs_full"].notna()].copy()
    seqs = sorted(ok["seq_len"].unique())
    fig = Figure(figsize=(5.5 * len(seqs), 8.5), layout="constrained")
    axes = fig.subplots(2, len(seqs), squeeze=False)
    markers = dict(zip(sorted(ok["pattern"].unique()), "osD^v<>ph*X"))
    for col, n in enumerate(seqs):
        at_n = ok[ok["seq_len"] == n]
        for row, (metric, label, larger) in enumerate(QUALITY_METRICS):
            ax = axes[row][col]
            for (pattern, impl), group in at_n.groupby(["pattern", "impl"], sort=True):
                group = group.sort_values("speedup_vs_full")
                ax.plot(group["speedup_vs_full"], group[metric], marker=markers.get(pattern, "o"),
                        color=colors.get(impl), linestyle="-" if len(group) > 1 else "none",
                        label=f"{pattern} · {impl}")
            front = pareto_front(list(zip(at_n["speedup_vs_full"], at_n[metric])), larger)
            if len(front) > 1:
                xs, ys = zip(*front)
                ax.step(xs, ys, where="pre", color="black", alpha=0.4, linewidth=1, label="Pareto front")
            ax.set_xscale("log")
            # ticks at 1, 2 and 5 per decade (more within one decade), written as 0.5x, 1x, 2x: the points
            # often span less than a decade, where matplotlib's own log labels overlap
            speeds = [x for x in at_n["speedup_vs_full"] if x > 0] + [1.0]
            lo, hi = min(speeds) / 1.3, max(speeds) * 1.3
            ax.set_xlim(lo, hi)
            subs = (1, 2, 5) if math.log10(hi / lo) > 1 else (1, 1.25, 1.5, 2, 3, 4, 5, 6, 8)
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
            ax.set_xlabel("speed-up over full attention (causal SDPA for causal patterns)")
            ax.set_ylabel(label)
            ax.set_title(f"n = {n}")
            ax.grid(True, alpha=0.3)
        # below the column, off the data (each column's own patterns: lengths need not share them); the full
        # attention references (dense, causal) share the point (1, 1)
        handles, labels = axes[0][col].get_legend_handles_labels()
        axes[1][col].legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.suptitle(title or "Quality against speed")
    return fig
