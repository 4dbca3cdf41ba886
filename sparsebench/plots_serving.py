"""Serving batches: tokens per second against the batch size and against the spread of the lengths, one line per
pattern and implementation, a row of panels per mode (packed prefill: tokens of the stream per second; paged
decode: new tokens per second, batch / latency)."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from sparsebench.serving import draw

MODE_TITLES = {"fwd": "packed prefill: tokens per second", "decode": "paged decode: new tokens per second"}


def has_serving(rows: pd.DataFrame) -> bool:
    """Whether rows hold serving cases measured ok with their tokens per second."""
    if "seq_lens" not in rows.columns or "tokens_per_s" not in rows.columns:
        return False
    return bool(_ok(rows).shape[0])


def _ok(rows: pd.DataFrame) -> pd.DataFrame:
    seq_lens = rows["seq_lens"].fillna("").astype(str)
    return rows[(seq_lens != "") & (rows["status"] == "ok") & rows["tokens_per_s"].notna()]


def spread(spec: str, seed: object) -> float:
    """The longest length over the mean: the padded token slots per real token of a padded batch."""
    lengths = draw(spec, int(float(seed)) if str(seed) not in ("", "nan") else 0)
    return max(lengths) * len(lengths) / sum(lengths)


def family(spec: str) -> str:
    """A spec without its count ('uniform:512-8192'), so that batches of one distribution make one line."""
    return spec.rpartition(":")[0] if spec.startswith("uniform:") else "list"


def serving_figure(rows: pd.DataFrame, colors: dict[str, str], title: str = "") -> Figure:
    """tokens_per_s against batch (left) and against the lengths' spread (right), a row per mode."""
    ok = _ok(rows).copy()
    ok["spread"] = [spread(s, seed) for s, seed in zip(ok["seq_lens"], ok["seq_lens_seed"])]
    ok["lengths"] = [family(s) for s in ok["seq_lens"]]
    modes = [m for m in MODE_TITLES if (ok["mode"] == m).any()]
    fig = Figure(figsize=(11, 4.2 * len(modes)), layout="constrained")
    axes = fig.subplots(len(modes), 2, squeeze=False)
    markers = dict(zip(sorted(ok["pattern"].unique()), "osD^v<>ph*X"))
    for row, mode in enumerate(modes):
        at_mode = ok[ok["mode"] == mode]
        # a line over batch per distribution of lengths; a line over the spread per batch size
        for col, (x, label, line) in enumerate((("batch", "batch (sequences)", "lengths"),
                                                ("spread", "spread of lengths (longest / mean)", "batch"))):
            ax = axes[row][col]
            for (pattern, params, impl, _), group in at_mode.groupby(["pattern", "params", "impl", line], sort=True):
                points = group.groupby(x)["tokens_per_s"].median().sort_index()
                name = f"{pattern}({params})" if params else pattern
                ax.plot(points.index, points.values, marker=markers.get(pattern, "o"), color=colors.get(impl),
                        linestyle="-" if len(points) > 1 else "none", label=f"{name} · {impl}")
            ax.set_yscale("log")
            if x == "batch":
                ax.set_xscale("log", base=2)
            ax.set_xlabel(label)
            ax.set_ylabel("tokens / s")
            ax.set_title(MODE_TITLES[mode])
            ax.grid(True, alpha=0.3)
        handles, labels = axes[row][1].get_legend_handles_labels()
        unique = dict(zip(labels, handles))  # one entry per pattern and implementation
        axes[row][1].legend(unique.values(), unique.keys(), fontsize=7, loc="best")
    fig.suptitle(title or "Serving batches")
    return fig
