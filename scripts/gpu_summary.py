"""Summary of a GPU sweep: the speed-up targets at one length, memory growth in n, and flex against SDPA on dense work.

    python3 scripts/gpu_summary.py RESULTS_CSV [--seq 32768] [--selection SELECTION_CSV]

Every ratio compares rows of the same run and shape (`results.reference_rows`), except the selection rows'
comparison with causal cuDNN, whose row comes from RESULTS_CSV (another run, the same shape and device).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sparsebench.errors import SparsebenchError  # noqa: E402
from sparsebench.results import (  # noqa: E402
    KEY_COLUMNS,
    SHAPE_COLUMNS,
    latest,
    read_results,
    recover_partial_row,
    reference_rows,
    speedup,
)

# (pattern, reference pattern run on sdpa, the speed-up the GPU check asks for at 32768)
TARGETS = [("local", "dense", 30.0), ("strided", "dense", 5.0), ("sliding_window", "causal", 8.0)]
SPARSE_IMPLS = ("structured", "flex")
SELECTION_TARGET = 0.5  # topk_blocks against causal cuDNN: this share of its ideal speed-up at 32768


def read_finished_rows(path: Path, allow_empty: bool = False) -> pd.DataFrame:
    """The rows of a results file, without an unfinished last line (a step killed in the middle of a write):
    read from a copy, the file left as it is."""
    if not path.is_file():
        return read_results(path, allow_empty=allow_empty)  # its one-line error
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "results.csv"
        shutil.copyfile(path, copy)
        recover_partial_row(copy)
        try:
            return read_results(copy, allow_empty=allow_empty)
        except SparsebenchError as exc:  # name the user's file, not the copy
            raise SparsebenchError(str(exc).replace(str(copy), str(path))) from None


def _ref_column(frame: pd.DataFrame, ref_pattern: str, column: str = "latency_ms") -> pd.Series:
    """`column` of the `ref_pattern` sdpa row of each row's run and shape (NaN where it did not run)."""
    return reference_rows(frame, (ref_pattern, "sdpa"))[column]


def prefill(frame: pd.DataFrame) -> pd.DataFrame:
    """Multi-head rows over the full sequence (the targets' shape): no GQA, no decode."""
    return frame[frame["mode"].isin(["fwd", "fwdbwd"]) & (frame["kv_heads"] == frame["heads"])]


def target_checks(frame: pd.DataFrame, seq: int) -> list[dict]:
    """One dict per (target, mode, head_dim): the best implementation's speed-up against its reference.

    `frame` may hold a case more than once (resumed runs): each row is compared with the reference of its own
    run and a case's latest row that has one counts, so a later run that measures the reference again (every
    resumed run re-measures dense SDPA) leaves the earlier rows' speed-ups intact."""
    checks = []
    at = prefill(frame[frame.seq_len == seq])
    for pattern, ref_pattern, want in TARGETS:
        rows = at[(at.pattern == pattern) & (at.impl != "sdpa") & (at.status == "ok")].copy()
        rows["ref_ms"] = _ref_column(at, ref_pattern).reindex(rows.index)
        rows["ref_tflops"] = _ref_column(at, ref_pattern, "tflops_useful").reindex(rows.index)
        keys = [c for c in KEY_COLUMNS if c in rows.columns]  # hand-made frames may lack some
        rows = rows.sort_values("ref_ms", key=lambda ms: ms.notna(), kind="stable").drop_duplicates(keys, keep="last")
        rows["speedup"] = speedup(rows.ref_ms, rows.latency_ms)
        for (mode, head_dim), group in rows.groupby(["mode", "head_dim"]):
            best = group.loc[group.speedup.idxmax()] if group.speedup.notna().any() else None
            checks.append({"pattern": pattern, "mode": mode, "head_dim": head_dim, "reference": f"{ref_pattern} sdpa",
                           "want": want, "impl": None if best is None else best.impl,
                           "speedup": math.nan if best is None else float(best.speedup),
                           "tflops": math.nan if best is None else float(best.tflops_useful),
                           "ref_tflops": math.nan if best is None else float(best.ref_tflops)})
    return checks


def selection_checks(selection: pd.DataFrame, sweep: pd.DataFrame, seq: int) -> pd.DataFrame:
    """The ok topk_blocks rows at `seq`: their speed-up over causal SDPA of their own run (speedup_vs_full), over
    the causal cuDNN row of the same shape in `sweep` (NaN where it has none), the ideal speed-up (causal pairs
    over kept pairs: (n + 1) / (2 n density), density = kept pairs / n^2) and the share of it reached."""
    rows = selection[(selection.pattern == "topk_blocks") & (selection.seq_len == seq)
                     & (selection.status == "ok") & selection.density.notna()].copy()
    cudnn = sweep[(sweep.pattern == "causal") & (sweep.impl == "sdpa[cudnn]") & (sweep.status == "ok")]
    shape = [c for c in SHAPE_COLUMNS if c in rows.columns and c in cudnn.columns]
    ref = cudnn.drop_duplicates(shape, keep="last").set_index(shape).latency_ms
    rows["vs_cudnn"] = speedup(rows.set_index(shape).index.map(ref).to_numpy(dtype=float), rows.latency_ms)
    rows["ideal"] = (rows.seq_len + 1) / (2 * rows.seq_len * rows.density)
    rows["share_vs_cudnn"] = rows.vs_cudnn / rows.ideal
    return rows


def memory_growth(frame: pd.DataFrame) -> pd.DataFrame:
    """Peak memory per n for the sparse impls, and its growth exponent: log2(peak(2n) / peak(n)), 1 = linear."""
    ok = prefill(frame)
    ok = ok[ok.impl.isin(SPARSE_IMPLS) & (ok.status == "ok") & (ok.pattern != "dense")]
    table = ok.pivot_table(index=["pattern", "impl", "mode", "head_dim"], columns="seq_len", values="peak_mem_mib")
    lengths = list(table.columns)
    exponents = [table[b] / table[a] for a, b in zip(lengths, lengths[1:]) if b == 2 * a]
    if exponents:
        table["exponent"] = pd.concat(exponents, axis=1).apply(lambda r: math.log2(r.median()), axis=1)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--seq", type=int, default=32768)
    parser.add_argument("--selection", type=Path, help="the selection step's results (configs/gpu-selection.toml)")
    args = parser.parse_args()
    try:
        every_row = read_finished_rows(args.results)
        frame = latest(every_row)
    except SparsebenchError as exc:
        parser.exit(2, f"error: {exc}\n")
    selection, selection_problem = None, ""
    if args.selection:  # its own step, cut or failed perhaps: never at the cost of the sweep's summary
        try:
            selection = latest(read_finished_rows(args.selection, allow_empty=True))
        except SparsebenchError as exc:
            selection_problem = str(exc)
    serving = _is_serving(frame)
    serving_rows, frame, every_row = frame[serving], frame[~serving], every_row[~_is_serving(every_row)]
    console = Console(width=160)
    device = ", ".join(sorted(set(frame.device_name.dropna().astype(str)))) or "?"
    console.print(f"[bold]{args.results}[/]: {len(frame)} rows on {device}; statuses "
                  + ", ".join(f"{s} {c}" for s, c in frame.status.value_counts().items()))

    at = prefill(frame[frame.seq_len == args.seq]).copy()
    at["vs_causal"] = _ref_column(at, "causal") / at.latency_ms
    columns = {"pattern": "pattern", "impl": "impl", "mode": "mode", "head_dim": "D", "latency_ms": "ms",
               "speedup_vs_dense": "x dense", "vs_causal": "x causal", "tflops_useful": "TFLOP/s",
               "block_density": "blocks", "peak_mem_mib": "peak MiB", "nvml_peak_mib": "NVML MiB",
               "first_call_s": "1st call s", "status": "status"}
    console.print(_table(f"n = {args.seq}", columns, at.sort_values(["mode", "head_dim", "pattern", "impl"])))
    _workloads(console, frame)
    _serving(console, serving_rows)
    _graphed(console, pd.concat([frame, serving_rows]))

    console.print("[bold]targets[/] (best sparse implementation against its SDPA reference, same run)")
    for c in target_checks(every_row, args.seq):
        verdict = "[green]met[/]" if c["speedup"] >= c["want"] else "[red]missed[/]"
        console.print(f"  {c['pattern']:>15} {c['mode']:>6} D={c['head_dim']}: {c['impl']} {c['speedup']:.1f}x "
                      f"vs {c['reference']} (target {c['want']:.0f}x) {verdict}; {c['tflops']:.3g} useful TFLOP/s "
                      f"({c['reference']}: {c['ref_tflops']:.3g})")
    dense = at[(at.pattern == "dense") & (at.status == "ok")].set_index(["mode", "head_dim", "impl"]).tflops_useful
    for (mode, head_dim), rates in dense.groupby(level=[0, 1]):
        rates = rates.droplevel([0, 1])
        if "flex" in rates and "sdpa" in rates:
            console.print(f"  dense {mode} D={head_dim}: flex {rates['flex']:.3g} TFLOP/s = "
                          f"{rates['flex'] / rates['sdpa']:.0%} of SDPA's {rates['sdpa']:.3g}")

    if selection is not None:
        _selection(console, selection, frame, args.seq)
    elif selection_problem:
        console.print(f"[bold]selection[/]: not read: {escape(selection_problem)}")

    growth = memory_growth(frame)
    if not growth.empty:
        console.print("[bold]peak memory (MiB) against n[/]; exponent 1 = linear, 2 = quadratic")
        console.print(growth.round(2).to_string())


def _workloads(console: Console, frame: pd.DataFrame) -> None:
    """GQA and decode rows: speed-up, % of peak, and for decode the K/V bytes read and GB/s."""
    rows = frame[(frame["mode"] == "decode") | (frame["kv_heads"] != frame["heads"])]
    if rows.empty:
        return
    columns = {"pattern": "pattern", "impl": "impl", "mode": "mode", "seq_len": "n", "heads": "H", "kv_heads": "KV",
               "q_len": "q", "head_dim": "D", "latency_ms": "ms", "speedup_vs_dense": "x dense",
               "tflops_useful": "TFLOP/s", "pct_of_peak": "% peak", "bytes_moved": "K/V bytes", "gbps": "GB/s",
               "pct_of_bandwidth": "% copy", "status": "status"}
    order = ["mode", "kv_heads", "seq_len", "q_len", "pattern", "impl"]
    console.print(_table("GQA and decode", columns, rows.sort_values(order)))


def _selection(console: Console, selection: pd.DataFrame, sweep: pd.DataFrame, seq: int) -> None:
    """Every row of the selection run, then the topk_blocks target against causal cuDNN."""
    columns = {"pattern": "pattern", "impl": "impl", "mode": "mode", "latency_ms": "ms", "select_ms": "select ms",
               "speedup_vs_full": "x causal", "density": "density", "recall": "recall", "err_vs_full": "err vs full",
               "status": "status"}
    rows = selection[selection.seq_len == seq]
    console.print(_table(f"selection, n = {seq}", columns, rows.sort_values(["mode", "pattern", "impl"])))
    for row in rows[rows.status != "ok"].to_dict("records"):
        console.print(f"  {row['impl']} {row['mode']}: {row['status']}: {escape(str(row.get('error', '')))[:200]}")
    console.print(f"[bold]selection target[/] (topk_blocks against causal cuDNN from the sweep, "
                  f">= {SELECTION_TARGET:.0%} of ideal)")
    for row in selection_checks(selection, sweep, seq).to_dict("records"):
        share = row["share_vs_cudnn"]
        verdict = ("no causal cuDNN row in the sweep" if math.isnan(share)
                   else "[green]met[/]" if share >= SELECTION_TARGET else "[red]missed[/]")
        console.print(f"  {row['impl']:>10} {row['mode']:>6}: {row['vs_cudnn']:.2f}x causal cuDNN, ideal "
                      f"{row['ideal']:.2f}x: {row['share_vs_cudnn']:.0%} {verdict}; {row['speedup_vs_full']:.2f}x "
                      f"causal SDPA of its run; recall {row['recall']:.3f}")


def _graphed(console: Console, frame: pd.DataFrame) -> None:
    """Calls under 0.1 ms, timed with CUDA graphs: the graph-timed latency beside the event-timed one (the two
    differ by launch_overhead_ms)."""
    if "launch_overhead_ms" not in frame.columns:
        return
    rows = frame[frame["launch_overhead_ms"].notna()].copy()
    if rows.empty:
        return
    rows["event_ms"] = rows["latency_ms"] + rows["launch_overhead_ms"]
    columns = {"pattern": "pattern", "impl": "impl", "mode": "mode", "seq_len": "n", "q_len": "q",
               "seq_lens": "lengths", "latency_ms": "graph ms", "event_ms": "events ms",
               "launch_overhead_ms": "launch ms", "status": "status"}
    order = [c for c in ("mode", "seq_len", "q_len", "pattern", "impl") if c in rows.columns]
    console.print(_table("timed with CUDA graphs (calls under 0.1 ms)", columns, rows.sort_values(order)))


def _is_serving(frame: pd.DataFrame) -> pd.Series:
    """Serving-batch rows (packed prefill, paged decode): they have their own table, not the n = seq tables."""
    if "seq_lens" not in frame.columns:
        return pd.Series(False, index=frame.index)
    return frame["seq_lens"].fillna("").astype(str) != ""


def _serving(console: Console, rows: pd.DataFrame) -> None:
    """Serving batches: tokens per second against padded SDPA (`x dense`: the padded dense reference's latency
    over the row's), padding waste, and in decode the K/V bytes read and GB/s."""
    if rows.empty:
        return
    columns = {"pattern": "pattern", "impl": "impl", "mode": "mode", "seq_lens": "lengths", "latency_ms": "ms",
               "tokens_per_s": "tokens/s", "speedup_vs_dense": "x dense", "padding_waste": "padding",
               "bytes_moved": "K/V bytes", "gbps": "GB/s", "pct_of_bandwidth": "% copy", "status": "status"}
    console.print(_table("serving batches", columns, rows.sort_values(["mode", "seq_lens", "pattern", "impl"])))


def _table(title: str, columns: dict[str, str], rows: pd.DataFrame) -> Table:
    """A rich table of `rows`, one column per entry of `columns` (row column -> header); names left-aligned,
    numbers right-aligned."""
    table = Table(title=title)
    for column, header in columns.items():
        table.add_column(header, justify="left" if column in ("pattern", "impl", "mode", "seq_lens", "status")
                         else "right")
    for row in rows.to_dict("records"):
        table.add_row(*(escape(_fmt(row.get(c))) for c in columns))
    return table


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


if __name__ == "__main__":
    main()
