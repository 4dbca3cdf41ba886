"""History without a server: latency over dense across a series of runs, with the gate's verdict between each
run and the one before it (the trend view asv gives, from result directories alone).

Only runs of one device and machine make a history: latency over dense still moves with the CPU model, core
count and GPU, so a series that mixes them would show hardware changes as trends.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sparsebench import gate, machine
from sparsebench.errors import NotComparable, SparsebenchError
from sparsebench.export import benchmark_name
from sparsebench.plots import IMPL_COLORS, PlainLogFormatter, impl_colors
from sparsebench.results import (
    Meta,
    as_float,
    benchmark_rows,
    case_key,
    complete_columns,
    is_dense_reference,
    key_text,
    latest,
    with_dense_reference,
)
from sparsebench.results.labels import pattern_label, serving_text, shape_text

ORDERS = ("date", "commit", "given")  # meta.json's date, the commit time of its git_sha, the command line's order
FORMATS = ("png", "svg")
GROUP = ["device", "dtype", "mode", "batch", "heads", "kv_heads", "head_dim", "q_len_label"]  # one figure each


@dataclass
class HistoryRun:
    """One result set of the series: a label (its directory's name), its rows and its meta.json."""

    label: str
    frame: pd.DataFrame
    meta: Meta = field(default_factory=Meta)  # a plain dict is taken as one

    def __post_init__(self) -> None:
        if not isinstance(self.meta, Meta):
            self.meta = Meta(self.meta)

    @property
    def sha(self) -> str:
        return self.meta.git_sha

    @property
    def date(self) -> dt.datetime | None:
        try:
            when = dt.datetime.fromisoformat(self.meta.date.replace("Z", "+00:00"))
        except ValueError:
            return None
        return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)

    def tick(self) -> str:
        """The x-axis label: date and short sha where known, else the label."""
        parts = [self.date.strftime("%Y-%m-%d %H:%M")] if self.date else []
        if self.sha:
            parts.append(self.sha[:7] + ("+" if str(self.meta.get("git_sha")).endswith("+dirty") else ""))
        return "\n".join(parts) or self.label


def order_runs(runs: list[HistoryRun], by: str = "date",
               commit_time: Callable[[str], float | None] | None = None) -> list[HistoryRun]:
    """The runs in time order: by meta.json's date, by the commit time of their git sha (`commit_time` looks it up),
    or as given. A run that cannot be placed is an error that names it."""
    if by not in ORDERS:
        raise SparsebenchError(f"unknown order {by!r}; choose from: {', '.join(ORDERS)}")
    if by == "given":
        return list(runs)
    keys: list[Any] = []
    for run in runs:
        if by == "date":
            if run.date is None:
                raise SparsebenchError(f"{run.label}: no date in its meta.json; order the runs with --by given")
            keys.append(run.date)
        else:
            when = commit_time(run.sha) if (commit_time and run.sha) else None
            if when is None:
                what = f"commit {run.sha[:12]} is not in this git checkout" if run.sha else "no git_sha in meta.json"
                raise SparsebenchError(f"{run.label}: {what}; order the runs with --by date or --by given")
            keys.append(when)
    return [run for _, _, run in sorted(zip(keys, range(len(runs)), runs), key=lambda t: (t[0], t[1]))]


def check_one_device(runs: list[HistoryRun]) -> None:
    """Raise NotComparable (one line) unless every run measured the same devices on the same machine."""
    first = runs[0]
    for run in runs[1:]:
        for what, values in (("device", _devices), ("device model", _device_names)):
            a, b = values(first), values(run)
            if a and b and a != b:
                raise NotComparable(f"history across devices: {first.label} ran on {', '.join(a)}, {run.label} on "
                                    f"{', '.join(b)} ({what}); give the runs of one device")
        found = machine.differences(machine.Machine.from_meta(first.meta), machine.Machine.from_meta(run.meta))
        if found:
            raise NotComparable(f"history across machines: {first.label} and {run.label} differ "
                                f"({'; '.join(found)}); give the runs of one machine")


def _devices(run: HistoryRun) -> list[str]:
    return sorted(set(run.frame["device"].astype(str)))


def _device_names(run: HistoryRun) -> list[str]:
    names = run.frame["device_name"] if "device_name" in run.frame else pd.Series(dtype=str)
    return sorted({str(n) for n in names.dropna() if str(n)})


def history_table(runs: list[HistoryRun], thresholds: gate.Thresholds | None = None
                  ) -> tuple[pd.DataFrame, list[str]]:
    """One row per case and run: latency, the dense latency of its run and shape, their ratio, and whether the
    gate flags the case against the run before (`regression`, with the gate's reasons in `why`). Also notes on
    pairs of runs the gate could not compare."""
    flagged: list[dict[tuple[str, ...], str]] = [{}]
    notes: list[str] = []
    for before, after in zip(runs, runs[1:]):
        try:
            report = gate.compare(before.frame, after.frame, thresholds or gate.Thresholds())
        except NotComparable as exc:
            notes.append(f"{before.label} -> {after.label}: not gated ({exc})")
            flagged.append({})
            continue
        flagged.append({c.key: "; ".join(c.messages(gate.REGRESSION)) for c in report.regressions})
    rows = []
    for index, run in enumerate(runs):
        frame = with_dense_reference(latest(complete_columns(run.frame.copy())))
        for row in benchmark_rows(frame).to_dict("records"):
            why = flagged[index].get(case_key(row), "")
            latency, dense = _float(row["latency_ms"]), _float(row["dense_latency_ms"])
            ok = row["status"] == "ok" and latency > 0
            rows.append({
                "run": index, "label": run.label, "date": run.meta.date,
                "git_sha": str(run.meta.get("git_sha") or ""), "case": benchmark_name(row),
                **{c: key_text(row[c]) for c in ("device", "dtype", "mode", "batch", "heads", "kv_heads", "head_dim",
                                                 "q_len", "seq_len", "seq_lens", "seq_lens_seed", "page_size",
                                                 "pattern", "params", "impl")},
                "status": row["status"], "latency_ms": latency if ok else math.nan,
                "dense_latency_ms": dense, "latency_vs_dense": latency / dense if ok and dense > 0 else math.nan,
                "regression": bool(why), "why": why,
            })
    return pd.DataFrame(rows), notes


_float = as_float


def history_figures(table: pd.DataFrame, runs: list[HistoryRun]) -> list[tuple[str, Figure]]:
    """(file stem, figure): one figure per device, dtype, mode and shape; one panel per pattern and sequence
    length; latency over dense against the run, one line per implementation, regressions marked."""
    rows = table[[not is_dense_reference(r) for r in table.to_dict("records")]].copy()
    if rows.empty:
        raise SparsebenchError("no case besides the dense reference: nothing to draw over time")
    rows["q_len_label"] = np.where(rows["mode"] == "decode", "q" + rows["q_len"], "")
    # a serving batch by its lengths (and seed and page size): two batches of one longest length are two panels
    rows["panel"] = [f"{pattern_label(r['pattern'], r['params'], sep=', ')} · "
                     + (serving_text(r).strip() or f"n={r['seq_len']}") for r in rows.to_dict("records")]
    ticks = [run.tick() for run in runs]
    figures = []
    for group, grows in rows.groupby(GROUP, sort=False):
        group = dict(zip(GROUP, group))
        stem = "-".join(["history", group["device"], group["dtype"], group["mode"]])
        if rows.groupby(GROUP).ngroups > 1:
            kv = f"kv{group['kv_heads']}" if group["kv_heads"] != group["heads"] else ""
            stem += f"-B{group['batch']}H{group['heads']}{kv}D{group['head_dim']}{group['q_len_label']}"
        title = (f"Latency over dense SDPA, run by run — {group['device']} · {group['dtype']} · {group['mode']} · "
                 f"{shape_text(group)}")
        figures.append((stem, _figure(grows, ticks, title)))
    return figures


def _figure(rows: pd.DataFrame, ticks: list[str], title: str) -> Figure:
    panels = list(dict.fromkeys(rows.sort_values(["pattern", "seq_len"], key=_natural, kind="stable")["panel"]))
    impls = [i for i in IMPL_COLORS if i in set(rows["impl"])] + sorted(set(rows["impl"]) - set(IMPL_COLORS))
    colors = impl_colors(impls)
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    width = max(3.2, 0.55 * len(ticks) + 1.6)
    fig = Figure(figsize=(width * ncols + 2.4, 2.9 * nrows + 1.0), layout="constrained", dpi=110)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel().tolist()
    for k in range(len(panels), len(axes)):  # drop the unused cells; the panel above one shows the x tick labels
        axes[k].remove()
        axes[k - ncols].xaxis.set_tick_params(labelbottom=True)
    x = np.arange(len(ticks))
    for ax, panel in zip(axes, panels):
        prows = rows[rows["panel"] == panel]
        for impl in impls:
            line = prows[prows["impl"] == impl]
            if line.empty:
                continue
            y = line.set_index("run")["latency_vs_dense"].reindex(x)
            # markers too: a run between two that failed has no neighbour to draw a line to
            ax.plot(x, y, color=colors[impl], marker="o", ms=4, lw=1.6)
            hit = line[line["regression"]]
            ringed, lost = hit[hit["latency_vs_dense"].notna()], hit[hit["latency_vs_dense"].isna()]
            if len(ringed):
                ax.plot(ringed["run"], ringed["latency_vs_dense"], ls="none", marker="o", ms=11, mfc="none",
                        mec="red", mew=2)
            if len(lost):  # a regression with no latency (e.g. ok -> oom): marked at the bottom of the panel
                ax.plot(lost["run"], [0.04] * len(lost), ls="none", marker="X", ms=9, color="red",
                        transform=ax.get_xaxis_transform(), clip_on=False)
        ax.axhline(1, color="0.35", ls="--", lw=1)
        ax.set_yscale("log")
        for formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            formatter(PlainLogFormatter("×"))
        ax.set_title(panel, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.set_xticks(x, ticks, fontsize=7.5, rotation=45, ha="right")
        ax.margins(x=0.08, y=0.2)
    fig.suptitle(title, fontsize=11)
    fig.supylabel("latency / dense SDPA latency of the same run (×, lower is faster)", fontsize=10)
    handles = [Line2D([], [], color=colors[i], lw=2.5, marker="o", ms=4, label=i) for i in impls]
    handles.append(Line2D([], [], color="0.35", ls="--", lw=1, label="dense SDPA (1×)"))
    hits = rows[rows["regression"]]
    if hits["latency_vs_dense"].notna().any():
        handles.append(Line2D([], [], ls="none", marker="o", ms=11, mfc="none", mec="red", mew=2,
                              label="gate regression vs the run before"))
    if hits["latency_vs_dense"].isna().any():
        handles.append(Line2D([], [], ls="none", marker="X", ms=9, color="red",
                              label="regression without latency (status)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=9, frameon=False)
    return fig


def _natural(column: pd.Series) -> pd.Series:
    """Sequence lengths sort as numbers, not text."""
    return pd.to_numeric(column, errors="coerce") if column.name == "seq_len" else column


def write_history(runs: list[HistoryRun], out_dir: Path, fmt: str = "png",
                  thresholds: gate.Thresholds | None = None) -> tuple[list[Path], pd.DataFrame, list[str]]:
    """Figures and history.csv into out_dir: (paths written, the table, notes)."""
    if fmt not in FORMATS:
        raise SparsebenchError(f"unknown --format {fmt!r}; choose from: {', '.join(FORMATS)}")
    check_one_device(runs)
    table, notes = history_table(runs, thresholds)
    figures = history_figures(table, runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, fig in figures:
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, format=fmt, dpi=150, metadata={"Date": None} if fmt == "svg" else None)
        written.append(path)
    csv = out_dir / "history.csv"
    table.to_csv(csv, index=False)
    return written + [csv], table, notes
