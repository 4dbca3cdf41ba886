"""What `sparsebench train` writes: results.csv rows, the write-up's table (rich and markdown), the loss curves."""

from __future__ import annotations

import csv
import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from rich.table import Table
from rich.text import Text

from sparsebench.measure.flops import attention_flops
from sparsebench.measure.timing import summarize
from sparsebench.patterns import Pattern
from sparsebench.results import TRAIN_MODE, Measurement, dense_ratios, format_params, make_row
from sparsebench.train.loop import TrainConfig

CAUSAL_NOTE = ("Every pattern is intersected with causal (k <= q) for training: the write-up's local and strided "
               "rules are bidirectional, so unmasked they would let each byte see the bytes it has to predict "
               "and the perplexity would mean nothing.")
TIME_NOTE = ("Training time is the sum of the training steps (forward, backward, optimiser), without the "
             "validation passes; the time ratio uses the median step. On a shared machine both vary with the load.")


@dataclass
class VariantRun:
    """One trained variant: the pattern as the user named it, what was trained, and its result or error."""

    name: str  # e.g. "local"
    params: dict[str, int]  # the named pattern's parameters, e.g. {"window": 64}
    pattern: Pattern  # the causal-intersected pattern that was trained
    impl: str
    result: dict[str, Any] | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "dense&causal" if self.name == "dense" else self.pattern.label()

    @property
    def ok(self) -> bool:
        return self.result is not None


def dense_of(runs: list[VariantRun]) -> VariantRun | None:
    """The dense variant that ratios are taken against (the dense reference of a training run), when it ran."""
    return next((r for r in runs if r.name == "dense" and r.ok), None)


def median_ms(run: VariantRun) -> float:
    steps = run.result["step_ms"]
    return statistics.median(steps[1:] or steps)  # the first step is reported apart, as first_call_s


def _vs_dense(run: VariantRun, dense: VariantRun | None) -> dict[str, float]:
    """The dense-reference columns of a trained variant (`results.dense_ratios`; the median step as latency)."""
    if dense is None or not run.ok:
        return {}
    return dense_ratios(_measured(run), _measured(dense))


def _measured(run: VariantRun) -> dict[str, float]:
    return {"latency_ms": median_ms(run), "peak_mem_mib": run.result["peak_mem_mib"]}


def result_rows(runs: list[VariantRun], cfg: TrainConfig, *, run_id: str, device: str, device_name: str,
                corpus: str, corpus_bytes: int) -> list[dict[str, Any]]:
    """One results.csv row per variant (mode "train"). FLOPs are the attention's, per step, all layers, fwd+bwd.
    Latency is the median training step, the first step apart (as first_call_s)."""
    m, n = cfg.model, cfg.model.seq_len
    dense = dense_of(runs)

    def step_flops(pairs: int) -> int:  # attention of every layer, forward and backward
        return attention_flops(pairs, cfg.batch, m.n_heads, m.head_dim, "fwdbwd") * m.n_layers

    rows = []
    for run in runs:
        key = {"pattern": run.name, "params": format_params({**run.params, "causal": 1}), "impl": run.impl,
               "device": device, "dtype": "float32", "mode": TRAIN_MODE, "batch": cfg.batch, "heads": m.n_heads,
               "seq_len": n, "head_dim": m.head_dim}
        nnz = run.pattern.nnz(n)
        measured = Measurement("ok" if run.ok else "error", run.error, density=nnz / (n * n), nnz=nnz,
                               flops_useful=step_flops(nnz),
                               extra={"corpus": corpus, "corpus_bytes": corpus_bytes, "steps": cfg.steps})
        if run.ok:
            r = run.result
            later = r["step_ms"][1:] or r["step_ms"]
            measured = dataclasses.replace(
                measured, **summarize(later), samples=later, first_call_s=r["step_ms"][0] / 1e3,
                flops_executed=step_flops(r["executed_pairs"]) if r.get("executed_pairs") else None,
                peak_mem_mib=r["peak_mem_mib"],
                extra={**measured.extra, "val_ppl": r["val_ppl"], "train_s": r["train_s"],
                       "tokens_per_s": r["tokens_per_s"]})
        reference = _measured(dense) if dense is not None and run.ok else None
        rows.append(make_row(key, measured, run_id, device_name, reference))
    return rows


HEADERS = ["Model (attention)", "impl", "Dataset", "Val perplexity (bytes)", "Training time", "Median step",
           "Peak memory", "Step time / dense", "Memory / dense", "Perplexity vs dense"]


def table_rows(runs: list[VariantRun], dataset: str) -> list[list[str]]:
    """The write-up's table, one row of strings per variant, with ratios against dense.

    The time ratio uses the median step, which a burst of load on a shared machine moves less than the total.
    """
    dense = dense_of(runs)
    rows = []
    for run in runs:
        if not run.ok:
            rows.append([run.label, run.impl, dataset, "error"] + [""] * 6)  # the message is in results.csv
            continue
        r = run.result
        cells = [run.label, run.impl, dataset, f"{r['val_ppl']:.3f}", f"{r['train_s']:.1f} s",
                 f"{median_ms(run):.0f} ms", f"{r['peak_mem_mib']:.0f} MiB"]
        ratios = _vs_dense(run, dense)
        if not ratios:
            cells += ["", "", ""]
        else:
            mem = f"{ratios['mem_ratio_vs_dense']:.2f}x" if "mem_ratio_vs_dense" in ratios else ""
            cells += [f"{1 / ratios['speedup_vs_dense']:.2f}x", mem,
                      f"{100 * (r['val_ppl'] / dense.result['val_ppl'] - 1):+.1f}%"]
        rows.append(cells)
    return rows


def rich_table(runs: list[VariantRun], dataset: str, title: str) -> Table:
    """The table for the terminal: the dataset, the same in every row, goes into the title to save width."""
    table = Table(title=Text(f"{title}\ndataset: {dataset}"), caption=CAUSAL_NOTE, caption_justify="left")
    headers = [h for h in HEADERS if h != "Dataset"]
    for i, header in enumerate(headers):
        table.add_column(header, justify="right" if i >= 2 else "left", no_wrap=i == 0)
    for row in table_rows(runs, dataset):
        table.add_row(*(Text(cell) for cell in (*row[:2], *row[3:])))  # names and paths: never markup
    return table


def markdown_table(runs: list[VariantRun], dataset: str, title: str) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(runs, dataset)]
    lines += ["", CAUSAL_NOTE, TIME_NOTE, ""]
    return "\n".join(lines)


def write_curves(path: Path, runs: list[VariantRun]) -> None:
    """Long-format loss curves: pattern, step, train_loss (every step), val_loss (at the evaluation steps)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["pattern", "step", "train_loss", "val_loss"])
        for run in runs:
            if not run.ok:
                continue
            val = dict(run.result["curve"])
            losses = {i + 1: loss for i, loss in enumerate(run.result["train_losses"])}
            for step in sorted(set(val) | set(losses)):
                writer.writerow([run.label, step, _fmt(losses.get(step)), _fmt(val.get(step))])


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.6f}"


def loss_figure(path: Path, runs: list[VariantRun], title: str) -> None:
    """Validation loss against step, one line per variant; the training loss (smoothed) faint behind it."""
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for i, run in enumerate(r for r in runs if r.ok):
        color = f"C{i}"
        steps, val = zip(*run.result["curve"])
        ax.plot(steps, val, "o-", color=color, markersize=3,
                label=f"{run.label} [{run.impl}]: val ppl {run.result['val_ppl']:.2f}")
        ax.plot(range(1, len(run.result["train_losses"]) + 1), _ema(run.result["train_losses"]), color=color,
                alpha=0.3, linewidth=1)
    finals = [r.result["curve"][-1][1] for r in runs if r.ok]
    if finals:  # zoom on where the variants differ; the first steps drop from ln(256) = 5.5 nats
        ax.set_ylim(top=min(5.7, 1.3 * max(finals)))
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (nats per byte)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if finals:
        ax.legend(fontsize=8, title="solid: validation, faint: training (smoothed)", title_fontsize=8)
    fig.savefig(path, dpi=120)


def _ema(values: list[float], alpha: float = 0.1) -> list[float]:
    out, avg = [], values[0] if values else 0.0
    for v in values:
        avg = alpha * v + (1 - alpha) * avg
        out.append(avg)
    return out
