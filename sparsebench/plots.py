"""Figures and report.md from result frames: latency, speed-up, memory and TFLOP/s per pattern, and a heatmap.

Figures are plain `matplotlib.figure.Figure` objects rendered by the Agg (PNG) or SVG backend; pyplot and
its global state are never used, so plotting works without a display.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogFormatter, NullFormatter

from sparsebench.errors import SparsebenchError
from sparsebench.measure.peaks import vendor_peak_tflops
from sparsebench.plots_quality import has_quality, quality_figure
from sparsebench.plots_serving import has_serving, serving_figure
from sparsebench.results import (
    BEST_DENSE_REFERENCE,
    Meta,
    benchmark_rows,
    ceilings_for,
    complete_columns,
    is_dense_reference,
    latest,
    reference_rows,
    speedup,
    with_dense_reference,
)
from sparsebench.results.labels import heads_text, pattern_label

matplotlib.rcParams["svg.hashsalt"] = "sparsebench"  # stable SVG ids: re-plotting gives the same file

FORMATS = ("png", "svg")
FIGURES = ("latency", "speedup", "memory", "tflops", "bandwidth", "heatmap")  # bandwidth: decode sets only
REFERENCES = ("sdpa", "best-dense")  # what the speed-up divides: dense SDPA (its default kernel), or the fastest
#                                      dense SDPA backend measured in the same run and shape

# Each implementation keeps its colour in every figure; others take the spare colours in name order.
IMPL_COLORS = {"seed": "#d62728", "eager": "#ff7f0e", "sdpa": "#1f77b4", "flex": "#2ca02c", "structured": "#9467bd"}
SPARE_COLORS = ["#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
# Each implementation keeps its point marker too, drawn hollow: two implementations with the same value stay
# visible, one shape inside the other. (The not-run markers below keep theirs apart.)
IMPL_MARKERS = {"seed": "o", "eager": "s", "sdpa": "^", "flex": "v", "structured": "p"}
SPARE_MARKERS = ["h", "<", "d", "8", "H"]
# Each compared run (series) gets its own line style, and its own hatch in bar charts.
SERIES_LINES = ["-", "--", ":", "-."]
SERIES_HATCHES = ["", "///", "...", "xxx"]
# Cases that did not run are drawn at the bottom of the panel with one marker per status.
NOT_RUN_MARKERS = {"oom": "X", "timeout": "P", "skipped": ">", "unsupported": "x", "error": "D", "inaccurate": "*"}

COLORBAR_TICKS = (0.01, 0.1, 0.5, 1, 2, 10, 100)  # speed-ups labelled on the heatmap's colour bar
SHAPE = ["batch", "heads", "kv_heads", "head_dim", "decode_q"]  # one figure set per (device, dtype, mode) and these
NUMERIC = ["batch", "heads", "kv_heads", "head_dim", "seq_len", "q_len", "density", "flops_useful", "latency_ms",
           "latency_iqr_ms", "tflops_useful", "speedup_vs_dense", "peak_mem_mib", "mem_ratio_vs_dense", "gbps",
           "pct_of_peak", "pct_of_vendor_peak"]


@dataclass
class Run:
    """One results.csv: its rows, its meta.json (empty when missing; a plain dict is taken) and its legend label."""

    label: str
    frame: pd.DataFrame
    meta: Meta = field(default_factory=Meta)

    def __post_init__(self) -> None:
        if not isinstance(self.meta, Meta):
            self.meta = Meta(self.meta)


@dataclass
class Metric:
    """A line figure's column, title, y label and (optional) error-bar column."""

    column: str
    title: str
    ylabel: str
    error: str | None = None


METRICS = {
    "latency": Metric("latency_ms", "Latency", "latency (ms), median ± IQR/2", "latency_iqr_ms"),
    "speedup": Metric("speedup_vs_dense", "Speed-up over dense SDPA", "speed-up over dense SDPA (×)"),
    "memory": Metric("peak_mem_mib", "Peak memory", "peak extra memory (MiB)"),
    "tflops": Metric("tflops_useful", "Useful throughput", "useful TFLOP/s"),
    "bandwidth": Metric("gbps", "K/V bandwidth (decode)", "K and V read, GB/s"),
}
BEST_DENSE = {"speedup": Metric("speedup_vs_dense", "Speed-up over the fastest dense SDPA backend",
                                "speed-up over the fastest dense SDPA backend (×)")}


@dataclass
class FigureSet:
    """The rows of one (device, dtype, mode) figure set and what its figures need besides."""

    name: str  # file-name stem, e.g. "cpu-float32-fwd"
    title: str  # e.g. "cpu · float32 · fwd · B=1 H=8 D=64"
    subtitle: str  # run metadata: device name, torch version, date
    rows: pd.DataFrame  # with the extra columns run, series and panel
    ceilings: dict[str, dict[str, float]] = field(default_factory=dict)  # series -> {ceiling name: TFLOP/s}
    bandwidth: dict[str, float] = field(default_factory=dict)  # series -> measured copy GB/s
    reference: str = "sdpa"  # what speedup_vs_dense divides (REFERENCES)


def combine(runs: list[Run], reference: str = "sdpa") -> pd.DataFrame:
    """All runs' attention rows in one frame with the columns run, series (a legend entry) and panel.
    `reference="best-dense"`: speed-up and memory ratios against the fastest dense SDPA backend instead."""
    frames = []
    for run in runs:
        frame = complete_columns(run.frame.copy())
        for col in NUMERIC:
            frame[col] = pd.to_numeric(frame[col], errors="coerce") if col in frame.columns else np.nan
        frame = with_dense_reference(latest(benchmark_rows(frame)))
        if reference == "best-dense":
            best = reference_rows(frame, BEST_DENSE_REFERENCE)
            frame["speedup_vs_dense"] = speedup(best["latency_ms"], frame["latency_ms"].where(frame["status"] == "ok"))
            frame["mem_ratio_vs_dense"] = frame["peak_mem_mib"] / best["peak_mem_mib"].where(best["peak_mem_mib"] > 0)
        frame["decode_q"] = frame["q_len"].where(frame["mode"] == "decode", 0)
        frames.append(frame.assign(run=run.label))
    rows = pd.concat(frames, ignore_index=True)
    rows["series"] = rows["run"]
    if _per_mode(runs, rows):
        # e.g. a CPU run against a GPU run: overlay them per mode and name each line's device and dtype
        rows["series"] = rows["run"] + " (" + rows["device"].astype(str) + ", " + rows["dtype"].astype(str) + ")"
    # a run spread over GPUs of different models: one line per model, never one line across models
    gpu = rows["gpu_name"].where(rows["gpu_name"].notna(), "").astype(str)
    mixed = gpu.groupby(rows["run"]).transform(lambda names: names[names != ""].nunique() > 1)
    rows["series"] = rows["series"].where(~mixed | (gpu == ""), rows["series"] + " · " + gpu)
    rows["panel"] = _panel_labels(rows)
    return rows


def _per_mode(runs: list[Run], rows: pd.DataFrame) -> bool:
    """Runs that share no (device, dtype, mode) are overlaid per mode."""
    return len(runs) > 1 and not _runs_share_a_set(rows)


def _runs_share_a_set(rows: pd.DataFrame) -> bool:
    return bool((rows.groupby(["device", "dtype", "mode"])["run"].nunique() > 1).any())


def _panel_labels(rows: pd.DataFrame) -> pd.Series:
    """The pattern, or pattern(params) where a pattern appears with more than one params value."""
    ambiguous = rows.groupby("pattern")["params"].transform("nunique") > 1
    with_params = pd.Series([pattern_label(p, q, sep=", ") for p, q in zip(rows["pattern"], rows["params"])],
                            index=rows.index, dtype=object)
    return rows["pattern"].where(~ambiguous, with_params)


def figure_sets(runs: list[Run], reference: str = "sdpa") -> list[FigureSet]:
    """One set per (device, dtype, mode), split further by shape (B, H, KV heads, D, decode q_len) when a set holds
    several."""
    rows = combine(runs, reference)
    if rows.empty:
        raise SparsebenchError("no attention benchmark rows to plot (only `sparsebench train` rows)")
    keys = ["mode"] if _per_mode(runs, rows) else ["device", "dtype", "mode"]
    metas = {run.label: run.meta for run in runs}
    sets = []
    for key, group in rows.groupby(keys, sort=False):
        shapes = group.groupby(SHAPE, sort=False)
        for shape, part in shapes:
            parts = [str(k) for k in (key if isinstance(key, tuple) else (key,))]
            batch, heads, kv_heads, head_dim, decode_q = (int(v) for v in shape)
            shape_text = f"B={batch} {heads_text(heads, kv_heads)} D={head_dim}" + \
                (f" q={decode_q}" if decode_q else "")
            name = "-".join(parts + ([shape_text.replace("=", "").replace(" ", "")] if len(shapes) > 1 else []))
            sets.append(FigureSet(
                name=re.sub(r"[^A-Za-z0-9_.+-]+", "_", name),
                title=" · ".join(parts + [shape_text]),
                subtitle=_subtitle(part, metas),
                rows=part,
                ceilings={s: _tflops_ceilings(metas[run], device, dtype, _device_name(p)) for (s, run, device, dtype), p
                          in part.groupby(["series", "run", "device", "dtype"], sort=False)},
                bandwidth={s: ceilings_for(metas[run], device, dtype).get("copy_gbps") for (s, run, device, dtype), _
                           in part.groupby(["series", "run", "device", "dtype"], sort=False)},
                reference=reference,
            ))
    return sets


def _subtitle(rows: pd.DataFrame, metas: dict[str, Meta]) -> str:
    """One line per run: label, device name, torch version and date, each as far as they are known."""
    lines = []
    for run, part in rows.groupby("run", sort=False):
        meta = metas[run]
        names = part["device_name"].dropna().astype(str) if "device_name" in part else pd.Series(dtype=str)
        device = " + ".join(dict.fromkeys(names)) if len(names) else \
            meta.get("device_name") or str(part["device"].iloc[0])
        torch = meta.get("torch")
        date = meta.date[:16].replace("T", " ")  # ISO 8601 to the minute
        known = [device] + ([f"torch {torch}"] if torch else []) + ([date] if date else [])
        lines.append((f"{run}: " if rows["run"].nunique() > 1 else "") + " · ".join(known))
    return "\n".join(lines)


def _tflops_ceilings(meta: dict[str, Any], device: str, dtype: str, device_name: str) -> dict[str, float]:
    """The run's measured TFLOP/s ceilings for the device and dtype, by name ('matmul_tflops' -> 'measured
    matmul'), and the vendor's datasheet peak for a known GPU."""
    measured = ceilings_for(meta, device, dtype)
    out = {"measured " + name.removesuffix("_tflops"): value for name, value in measured.items()
           if name.endswith("_tflops") and value > 0}
    vendor = vendor_peak_tflops(device_name, dtype)
    if vendor:
        out["vendor peak"] = vendor
    return out


def _device_name(rows: pd.DataFrame) -> str:
    names = rows["device_name"].dropna().astype(str) if "device_name" in rows else pd.Series(dtype=str)
    return names.iloc[0] if len(names) else ""


def impl_colors(impls: list[str]) -> dict[str, str]:
    """The fixed colour of every implementation; unknown ones take the spare colours in name order."""
    spare = sorted(set(impls) - set(IMPL_COLORS))
    return {**IMPL_COLORS, **{impl: SPARE_COLORS[i % len(SPARE_COLORS)] for i, impl in enumerate(spare)}}


def impl_markers(impls: list[str]) -> dict[str, str]:
    """The fixed point marker of every implementation; unknown ones take the spare markers in name order."""
    spare = sorted(set(impls) - set(IMPL_MARKERS))
    return {**IMPL_MARKERS, **{impl: SPARE_MARKERS[i % len(SPARE_MARKERS)] for i, impl in enumerate(spare)}}


def _ordered(values: pd.Series, first: tuple[str, ...] = ()) -> list[str]:
    """Unique values in order of appearance, with `first` (where present) leading."""
    seen = list(dict.fromkeys(values))
    return [v for v in first if v in seen] + [v for v in seen if v not in first]


def _panels(rows: pd.DataFrame) -> list[str]:
    """Panel order: dense first, then the patterns in the order the results list them."""
    return _ordered(rows.sort_values("pattern", key=lambda p: p != "dense", kind="stable")["panel"])


class PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers (0.1, 20, 1000) with a unit suffix; minor ones where the range is short."""

    def __init__(self, suffix: str = "") -> None:
        super().__init__(labelOnlyBase=False)
        self.suffix = suffix

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}{self.suffix}" if super().__call__(x, pos) else ""


def _seq_formatter(x: float, _pos: Any) -> str:
    return f"{x / 1024:g}K" if x >= 1024 else f"{x:g}"


def _grid(fs: FigureSet, title: str, n: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols + 2.2, height * nrows + 0.9), layout="constrained", dpi=110)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel().tolist()
    for k in range(n, len(axes)):  # drop the unused cells; the panel above one shows the x tick labels
        axes[k].remove()
        axes[k - ncols].xaxis.set_tick_params(labelbottom=True)
    fig.suptitle(f"{title} — {fs.title}\n{fs.subtitle}", fontsize=11)
    return fig, axes[:n]


def line_figure(fs: FigureSet, kind: str) -> Figure:
    """One panel per pattern: `kind`'s metric against seq_len, one line per impl (and per series)."""
    metric = BEST_DENSE.get(kind, METRICS[kind]) if fs.reference == "best-dense" else METRICS[kind]
    rows = fs.rows
    panels = _panels(rows)
    impls = _ordered(rows["impl"], tuple(IMPL_COLORS))
    series = _ordered(rows["series"])
    colors, markers = impl_colors(impls), impl_markers(impls)
    lines = {s: SERIES_LINES[i % len(SERIES_LINES)] for i, s in enumerate(series)}
    seqs = sorted(rows["seq_len"].dropna().unique())
    # not-run markers of different (series, impl) are dodged sideways so that they do not hide each other
    pairs = [(s, i) for s in series for i in impls]
    dodge = {p: 2 ** ((k - (len(pairs) - 1) / 2) * 0.25 / max(len(pairs) - 1, 1)) for k, p in enumerate(pairs)}
    fig, axes = _grid(fs, metric.title, len(panels), 3.6, 2.7)
    statuses: set[str] = set()
    measured = False  # any point on the y axis (every case may have been skipped)
    refs: dict[str, Line2D] = {}
    for ax, panel in zip(axes, panels):
        prows = rows[rows["panel"] == panel]
        for (s, impl), line in prows.groupby(["series", "impl"], sort=False):
            line = line.sort_values("seq_len")
            ok = line[(line["status"] == "ok") & (line[metric.column] > 0)]
            ok = ok.set_index("seq_len").reindex(sorted(line["seq_len"]))  # NaN gaps where a case did not run
            y = ok[metric.column]
            measured = measured or bool(y.notna().any())
            yerr = None
            if metric.error:
                half = ok[metric.error].fillna(0) / 2
                yerr = np.vstack([np.minimum(half, y * 0.999), half])
            ax.errorbar(ok.index, y, yerr=yerr, color=colors[impl], ls=lines[s], marker=markers[impl], ms=6,
                        mfc="none", mew=1.4, lw=1.6, capsize=2, elinewidth=1)
            for status, missed in line[line["status"] != "ok"].groupby("status"):
                marker_ = NOT_RUN_MARKERS.get(status, "x")
                ax.plot(missed["seq_len"] * dodge[(s, impl)], [0.035] * len(missed), ls="none", marker=marker_,
                        ms=6, color=colors[impl], transform=ax.get_xaxis_transform(), clip_on=False,
                        label=f"not run: {status}")
                statuses.add(status)
        if kind == "speedup":
            label = "1× (fastest dense SDPA backend)" if fs.reference == "best-dense" else "1× (dense SDPA)"
            refs[label] = ax.axhline(1, color="0.35", ls="--", lw=1)
            density = prows.groupby("seq_len")["density"].mean().dropna()
            density = density[density > 0]
            if len(density):
                # a marker too: with one sequence length the line has no length to show
                (refs["ideal 1/density"],) = ax.plot(density.index, 1 / density, color="black", ls=":", lw=1.6,
                                                     marker="_", ms=14)
        if kind == "tflops":
            for s, ceilings in fs.ceilings.items():
                for name, value in ceilings.items():
                    label = f"{name} {value:.4g}" + (f" ({s})" if len(fs.ceilings) > 1 else "")
                    color = "0.65" if name == "vendor peak" else "0.45"
                    refs[label] = ax.axhline(value, color=color, lw=1.2, ls=lines[s])
        if kind == "bandwidth":
            for s, value in fs.bandwidth.items():
                if value:
                    label = f"measured copy {value:.4g} GB/s" + (f" ({s})" if len(fs.bandwidth) > 1 else "")
                    refs[label] = ax.axhline(value, color="0.45", lw=1.2, ls=lines[s])
        ax.set_title(panel, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(seqs)
        ax.xaxis.set_major_formatter(FuncFormatter(_seq_formatter))
        ax.xaxis.set_minor_formatter(NullFormatter())
        for formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            formatter(PlainLogFormatter("×" if kind == "speedup" else ""))
        ax.margins(x=0.08, y=0.18)
        ax.tick_params(labelsize=9)
    if not (measured or refs):  # a log axis needs a positive range: give it one without numbers on it
        axes[0].set_ylim(1, 10)  # the panels share their y axis
        for ax in axes:
            ax.yaxis.set_major_formatter(NullFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
    fig.supxlabel("sequence length (tokens)", fontsize=10)
    fig.supylabel(metric.ylabel, fontsize=10)
    _legend(fig, impls, colors, markers, series, lines, refs, statuses)
    return fig


def _legend(fig: Figure, impls: list[str], colors: dict[str, str], markers: dict[str, str], series: list[str],
            lines: dict[str, str], refs: dict[str, Line2D], statuses: set[str]) -> None:
    handles = [Line2D([], [], color=colors[i], lw=2, marker=markers[i], ms=6, mfc="none", mew=1.4, label=i)
               for i in impls]
    if len(series) > 1:
        handles += [Line2D([], [], color="0.2", ls=lines[s], label=s) for s in series]
    handles += [Line2D([], [], color=r.get_color(), ls=r.get_linestyle(), lw=r.get_linewidth(), label=label)
                for label, r in refs.items()]
    handles += [Line2D([], [], color="0.3", ls="none", marker=NOT_RUN_MARKERS.get(s, "x"), ms=6,
                       label=f"not run: {s}") for s in sorted(statuses)]
    fig.legend(handles=handles, loc="outside right upper", fontsize=9, frameon=False)


def best_cells(rows: pd.DataFrame) -> pd.DataFrame:
    """The fastest ok implementation per (series, panel, seq_len), with its speed-up and memory ratio."""
    ok = rows[(rows["status"] == "ok") & rows["latency_ms"].notna()]
    best = ok.loc[ok.groupby(["series", "panel", "seq_len"], sort=False)["latency_ms"].idxmin()]
    rank = {name: i for i, name in enumerate(_ordered(rows["series"]) + _panels(rows))}
    best = best.sort_values(["series", "panel", "seq_len"], key=lambda c: c if c.name == "seq_len" else c.map(rank))
    extra = [c for c in ("speedup_vs_full", "recall") if c in best.columns]
    return best[["series", "panel", "seq_len", "impl", "latency_ms", "speedup_vs_dense", "mem_ratio_vs_dense",
                 "tflops_useful", "pct_of_peak", "pct_of_vendor_peak", *extra]]


def heatmap_figure(fs: FigureSet) -> Figure:
    """Speed-up of the best implementation over dense SDPA, patterns × seq lengths, one map per series."""
    rows = fs.rows
    panels = _panels(rows)
    seqs = sorted(rows["seq_len"].dropna().unique())
    series = _ordered(rows["series"])
    best = best_cells(rows)
    logs = np.log10(best["speedup_vs_dense"].dropna().clip(lower=1e-6))
    limit = max(float(logs.abs().max()) if len(logs) else 0.0, math.log10(2))
    norm = TwoSlopeNorm(vcenter=0, vmin=-limit, vmax=limit)
    cmap = matplotlib.colormaps["RdYlGn"]
    width = max(len(series) * (1.05 * len(seqs) + 1.6) + 1.6, 7.0)  # at least the width of the title
    fig = Figure(figsize=(width, 0.5 * len(panels) + 1.7), layout="constrained", dpi=110)
    axes = fig.subplots(1, len(series), squeeze=False, sharey=True).ravel()
    for ax, s in zip(axes, series):
        cells = best[best["series"] == s].set_index(["panel", "seq_len"])
        grid = np.full((len(panels), len(seqs)), np.nan)
        for (r, panel), (c, seq) in ((rp, cs) for rp in enumerate(panels) for cs in enumerate(seqs)):
            if (panel, seq) not in cells.index:
                statuses = set(rows.loc[(rows["series"] == s) & (rows["panel"] == panel) & (rows["seq_len"] == seq),
                                        "status"])
                text = statuses.pop() if len(statuses) == 1 else "not run"
                ax.text(c, r, text, ha="center", va="center", fontsize=7.5, color="0.35")
                continue
            cell = cells.loc[(panel, seq)]
            speedup = cell["speedup_vs_dense"]
            grid[r, c] = math.log10(max(speedup, 1e-6)) if pd.notna(speedup) else np.nan
            text = f"{speedup:.2g}×\n{cell['impl']}" if pd.notna(speedup) else f"?×\n{cell['impl']}"
            color = cmap(norm(grid[r, c])) if pd.notna(speedup) else (1, 1, 1)
            ax.text(c, r, text, ha="center", va="center", fontsize=7.5, color=_text_color(color))
        image = ax.imshow(grid, cmap=cmap, norm=norm, aspect="auto")
        ax.set_facecolor("0.92")
        ax.set_xticks(range(len(seqs)), [_seq_formatter(x, None) for x in seqs], fontsize=9)
        ax.set_yticks(range(len(panels)), panels, fontsize=9)
        ax.set_xlabel("sequence length (tokens)", fontsize=10)
        if len(series) > 1:
            ax.set_title(s, fontsize=10)
    bar = fig.colorbar(image, ax=axes.tolist(), shrink=0.9, format=FuncFormatter(lambda v, _: f"{10 ** v:g}×"))
    bar.set_ticks([math.log10(v) for v in COLORBAR_TICKS if abs(math.log10(v)) <= limit])
    bar.set_label("speed-up (×)", fontsize=9)
    fig.suptitle(f"Best speed-up over dense SDPA — {fs.title}\n{fs.subtitle}", fontsize=11)
    return fig


def _text_color(rgba: Any) -> str:
    r, g, b = to_rgb(rgba)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


@dataclass
class Bar:
    """One row of a bar chart: a case that ran (value) or one that did not (its status in the text)."""

    label: str
    value: float | None
    text: str
    impl: str
    series: str
    error: float | None = None  # half the IQR, for latency


HIGHER_IS_BETTER = {"speedup": True, "tflops": True, "bandwidth": True, "latency": False, "memory": False}


def bar_figure(fs: FigureSet, kind: str) -> Figure:
    """A set with one sequence length: per pattern, one horizontal bar per implementation (and run), the best on
    top, each labelled with its value (speed-up bars with the latency too); the cases that did not run are listed
    below the bars with their status. Speed-up bars grow from the 1× line: left when slower, right when faster,
    the ideal 1/density marked."""
    metric = BEST_DENSE.get(kind, METRICS[kind]) if fs.reference == "best-dense" else METRICS[kind]
    rows = fs.rows
    n = int(rows["seq_len"].iloc[0])
    # a dense panel holding only the dense reference says what the 1× line says
    panels = [p for p in _panels(rows) if not _only_reference(rows[rows["panel"] == p])] or _panels(rows)
    impls = _ordered(rows["impl"], tuple(IMPL_COLORS))
    series = _ordered(rows["series"])
    colors = impl_colors(impls)
    hatches = {s: SERIES_HATCHES[i % len(SERIES_HATCHES)] for i, s in enumerate(series)}
    bars = {panel: _bars(rows[rows["panel"] == panel], kind, metric, len(series) > 1) for panel in panels}
    ideals = {panel: _ideal(rows[rows["panel"] == panel]) for panel in panels} if kind == "speedup" else {}
    marks = _vertical_marks(fs, kind)
    lo, hi = _bar_range([b.value for bs in bars.values() for b in bs if b.value] +
                        [*ideals.values(), *marks.values(), *([1.0] if kind == "speedup" else [])])

    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    most = max(len(b) for b in bars.values())
    width = max(5.4 * ncols + 2.4, 10.5)  # one panel: still the width of the title and the legend
    fig = Figure(figsize=(width, (0.34 * most + 0.9) * nrows + 1.2), layout="constrained", dpi=110)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel().tolist()
    for k in range(len(panels), len(axes)):
        axes[k].remove()
        axes[k - ncols].xaxis.set_tick_params(labelbottom=True)
    refs: dict[str, Line2D] = {}
    for ax, panel in zip(axes, panels):
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        base = 1.0 if kind == "speedup" else lo
        for y, bar in enumerate(bars[panel]):
            if bar.value is None:  # not run: its status where its bar would be
                ax.text(0.01, y, bar.text, transform=ax.get_yaxis_transform(), va="center", fontsize=8,
                        color="0.4", style="italic")
                continue
            ax.barh(y, bar.value - base, left=base, height=0.7, color=colors[bar.impl], hatch=hatches[bar.series],
                    edgecolor="white" if not hatches[bar.series] else "0.25", lw=0.5)
            if bar.error:  # ± IQR/2, kept above zero on the log axis
                ax.errorbar(bar.value, y, xerr=[[min(bar.error, bar.value * 0.999)], [bar.error]], color="0.2",
                            lw=1, capsize=2)
            ax.text(max(bar.value + (bar.error or 0), base) * (hi / lo) ** 0.012, y, bar.text, va="center",
                    fontsize=8, bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.5})
        ax.set_yticks(range(len(bars[panel])), [b.label for b in bars[panel]], fontsize=9)
        ax.set_ylim(len(bars[panel]) - 0.5, -1.1)  # best on top, room above for the ideal's label
        if kind == "speedup":
            refs[_one_x_label(rows, fs.reference)] = ax.axvline(1, color="0.35", ls="--", lw=1)
            if ideals[panel] and ideals[panel] > 1.001:  # dense's ideal is the 1× line
                refs["ideal 1/density"] = ax.axvline(ideals[panel], color="black", ls=":", lw=1.6)
                ax.text(ideals[panel], -0.85, f"ideal {ideals[panel]:.3g}×", ha="center", va="center", fontsize=8,
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
        for label, value in marks.items():
            refs[label] = ax.axvline(value, color="0.45", lw=1.2)
        ax.set_title(panel, fontsize=10)
        ax.grid(True, axis="x", which="major", alpha=0.3)
        for formatter in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            formatter(PlainLogFormatter("×" if kind == "speedup" else ""))
        ax.tick_params(axis="x", labelsize=9)
    fig.supxlabel(metric.ylabel, fontsize=10)
    fig.suptitle(f"{metric.title} at n = {n} — {fs.title}\n{fs.subtitle}", fontsize=11)
    drawn = {b.impl for bs in bars.values() for b in bs if b.value}
    handles = [Patch(color=colors[i], label=i) for i in impls if i in drawn]
    if len(series) > 1:
        handles += [Patch(facecolor="white", edgecolor="0.25", hatch=hatches[s], label=s) for s in series]
    handles += [Line2D([], [], color=r.get_color(), ls=r.get_linestyle(), lw=r.get_linewidth(), label=label)
                for label, r in refs.items()]
    fig.legend(handles=handles, loc="outside right center", fontsize=9, frameon=False)
    return fig


def _only_reference(prows: pd.DataFrame) -> bool:
    return bool(len(prows)) and prows.apply(is_dense_reference, axis=1).all()


def _bars(prows: pd.DataFrame, kind: str, metric: Metric, name_series: bool) -> list[Bar]:
    """The panel's bars, best first, then the cases without a value (not run, or no such metric)."""
    ran, missed = [], []
    for r in prows.to_dict("records"):
        label = r["impl"] + (f" ({r['series']})" if name_series else "")
        value = r[metric.column] if r["status"] == "ok" and pd.notna(r[metric.column]) else None
        if value is not None and value > 0:
            error = r[metric.error] / 2 if metric.error and pd.notna(r[metric.error]) else None
            ran.append(Bar(label, float(value), _bar_text(r, kind, float(value)), r["impl"], r["series"], error))
        else:
            why = f"{r['status']}: {r['error']}" if r["status"] != "ok" and r.get("error") else r["status"]
            why = why if r["status"] != "ok" else "no value"
            missed.append(Bar(label, None, "not run: " + _clip(why, 60) if r["status"] != "ok" else why,
                              r["impl"], r["series"]))
    ran.sort(key=lambda b: -b.value if HIGHER_IS_BETTER[kind] else b.value)
    return ran + missed


def _bar_text(row: dict[str, Any], kind: str, value: float) -> str:
    """A bar's label: its value, with the latency beside a speed-up and the speed-up beside a latency."""
    ms, speedup = row["latency_ms"], row["speedup_vs_dense"]
    if kind == "speedup":
        return f"{_times(value)} · {_ms(ms)}" + (" (reference)" if is_dense_reference(row) else "")
    if kind == "latency":
        return _ms(value) + (f" ({_times(speedup)})" if pd.notna(speedup) else "")
    unit = {"memory": "MiB", "tflops": "TFLOP/s", "bandwidth": "GB/s"}[kind]
    return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"


def _times(value: float) -> str:
    return f"{value:.2f}×" if value < 10 else f"{value:.3g}×"


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 100 else f"{value:.3g} ms"


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _ideal(prows: pd.DataFrame) -> float | None:
    density = prows["density"].dropna()
    density = density[density > 0]
    return 1 / float(density.mean()) if len(density) else None


def _one_x_label(rows: pd.DataFrame, reference: str) -> str:
    """The 1× line's legend label, with the reference's latency when the set has one."""
    name = "fastest dense SDPA backend" if reference == "best-dense" else "dense SDPA"
    ms = rows["dense_latency_ms"].dropna().unique() if reference == "sdpa" else []
    return f"1× = {name}" + (f" ({_ms(ms[0])})" if len(ms) == 1 else "")


def _vertical_marks(fs: FigureSet, kind: str) -> dict[str, float]:
    """The ceilings a bar chart marks: TFLOP/s roofs, or the measured copy bandwidth."""
    if kind == "tflops":
        return {f"{name} {value:.4g}" + (f" ({s})" if len(fs.ceilings) > 1 else ""): value
                for s, ceilings in fs.ceilings.items() for name, value in ceilings.items()}
    if kind == "bandwidth":
        return {f"measured copy {v:.4g} GB/s" + (f" ({s})" if len(fs.bandwidth) > 1 else ""): v
                for s, v in fs.bandwidth.items() if v}
    return {}


def _bar_range(values: list[float]) -> tuple[float, float]:
    """x limits on a log axis: the values with a margin on the left, and room on the right for the labels."""
    values = [v for v in values if v and v > 0 and math.isfinite(v)] or [1.0]
    lo, top = min(values) / 1.6, max(values)
    decades = max(math.log10(top / lo), 0.5)
    return lo, top * 10 ** (0.45 * decades)


def figure(fs: FigureSet, kind: str) -> Figure:
    """One of FIGURES for a figure set: bar charts where the set has a single sequence length."""
    if kind == "heatmap":
        return heatmap_figure(fs)
    return bar_figure(fs, kind) if fs.rows["seq_len"].nunique() == 1 else line_figure(fs, kind)


def report_markdown(sets: list[FigureSet], files: dict[str, list[str]]) -> str:
    """report.md: each set's figures (relative links) and the fastest implementation per pattern and seq_len."""
    lines = ["# sparsebench report", ""]
    for fs in sets:
        lines += [f"## {fs.title}", "", *(f"{line}  " for line in fs.subtitle.splitlines()), ""]
        lines += [f"Inputs: {inputs}", ""] if (inputs := _inputs(fs.rows)) else []
        lines += [line for name in files[fs.name] for line in (f"![{name}]({name})", "")]
        best = best_cells(fs.rows)
        multi = best["series"].nunique() > 1
        quality = has_quality(fs.rows)  # then also against the full attention each pattern replaces, and recall
        dense = "the fastest dense SDPA backend" if fs.reference == "best-dense" else "dense SDPA"
        lines += ["| " + ("run | " if multi else "") + "pattern | seq_len | fastest impl | latency (ms) | "
                  f"speed-up vs {dense} | memory vs {dense} | useful TFLOP/s (% of measured / vendor peak) |"
                  + (" speed-up vs full attention (causal SDPA for a causal pattern) | recall |" if quality else ""),
                  "|" + "---|" * (7 + multi + 2 * quality)]
        for _, b in best.iterrows():
            lines.append("| " + (f"{b['series']} | " if multi else "") + f"{b['panel']} | {int(b['seq_len'])} | "
                         f"{b['impl']} | {b['latency_ms']:.3g} | {_ratio(b['speedup_vs_dense'])} | "
                         f"{_ratio(b['mem_ratio_vs_dense'])} | {_rate(b)} |"
                         + (f" {_ratio(b['speedup_vs_full'])} | {_fraction(b['recall'])} |" if quality else ""))
        lines += ["", *_not_measured(fs.rows, multi)]
    return "\n".join(lines)


def _inputs(rows: pd.DataFrame) -> str:
    """The q, k, v the set's rows were measured on (recall and err_vs_full depend on them), e.g.
    'structured (seed=0)'; a file by its name and content id. Empty for rows without the columns."""
    if "inputs" not in rows.columns:
        return ""
    ids = rows["input_id"] if "input_id" in rows.columns else pd.Series("", index=rows.index)
    pairs = pd.DataFrame({"kind": rows["inputs"], "id": ids.fillna("").astype(str)})
    pairs = pairs[pairs["kind"].notna() & (pairs["kind"].astype(str) != "")].drop_duplicates()
    return ", ".join(f"{Path(str(kind)).name}" + (f" ({ident})" if ident else "")  # older files: no id
                     for kind, ident in pairs.itertuples(index=False))


def _not_measured(rows: pd.DataFrame, multi: bool) -> list[str]:
    """The set's cases without a measurement (failed, unsupported, skipped), each with its status and why."""
    missed = rows[rows["status"] != "ok"].sort_values(["panel", "seq_len", "impl"], kind="stable")
    if missed.empty:
        return []
    lines = ["Not measured:", "", "| " + ("run | " if multi else "") + "pattern | seq_len | impl | status | why |",
             "|" + "---|" * (5 + multi)]
    for _, r in missed.iterrows():
        why = " ".join(str(r.get("error") or "").split()).replace("|", "\\|")
        lines.append("| " + (f"{r['series']} | " if multi else "") + f"{r['panel']} | {int(r['seq_len'])} | "
                     f"{r['impl']} | {r['status']} | {why[:200]} |")
    return [*lines, ""]


def _rate(row: pd.Series) -> str:
    """TFLOP/s with the % of the measured and the vendor's peak where known, e.g. '296 (42% / 30%)'."""
    if pd.isna(row["tflops_useful"]):
        return "n/a"
    pcts = [f"{row[c]:.0f}%" if pd.notna(row[c]) else "-" for c in ("pct_of_peak", "pct_of_vendor_peak")]
    return f"{row['tflops_useful']:.3g} ({' / '.join(pcts)})"


def _fraction(value: float) -> str:
    return f"{value:.3f}" if pd.notna(value) else "n/a"


def _ratio(value: float) -> str:
    return f"{value:.2f}×" if pd.notna(value) and np.isfinite(value) else "n/a"


def write_plots(runs: list[Run], out_dir: Path, fmt: str = "png", reference: str = "sdpa") -> list[Path]:
    """Write every figure set and report.md into out_dir; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sets = figure_sets(runs, reference)
    written: list[Path] = []
    files: dict[str, list[str]] = {}
    for fs in sets:
        files[fs.name] = []
        for kind in FIGURES:
            if kind == "bandwidth" and not (fs.rows["gbps"] > 0).any():
                continue  # only decode rows count the bytes they read
            path = out_dir / f"{fs.name}-{kind}.{fmt}"
            figure(fs, kind).savefig(path, format=fmt, dpi=150, metadata={"Date": None} if fmt == "svg" else None)
            files[fs.name].append(path.name)
            written.append(path)
        if has_quality(fs.rows):  # selection and quality columns: recall against speed-up, the Pareto front
            path = out_dir / f"{fs.name}-quality.{fmt}"
            colors = impl_colors(sorted(fs.rows["impl"].unique()))
            quality = quality_figure(fs.rows, colors, f"Quality against speed · {fs.title}")
            quality.savefig(path, format=fmt, dpi=150)
            files[fs.name].append(path.name)
            written.append(path)
    rows = pd.concat([fs.rows for fs in sets], ignore_index=True)
    if has_serving(rows):  # serving batches: tokens per second against batch and spread, across the sets
        path = out_dir / f"serving.{fmt}"
        serving_figure(rows, impl_colors(sorted(rows["impl"].unique()))).savefig(path, format=fmt, dpi=150)
        files.setdefault(sets[0].name, []).append(path.name)
        written.append(path)
    report = out_dir / "report.md"
    report.write_text(report_markdown(sets, files))
    return written + [report]
