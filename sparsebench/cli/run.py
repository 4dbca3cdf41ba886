"""`sparsebench run`: measure a sweep of cases in worker processes and write results.csv + meta.json."""

from __future__ import annotations

import dataclasses
import math
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from sparsebench import environment
from sparsebench.cli import options as opt
from sparsebench.cli.common import console, err_console, user_errors
from sparsebench.errors import SparsebenchError
from sparsebench.results import KEY_COLUMNS, ResultWriter, is_dense_baseline, read_meta, read_results, write_meta
from sparsebench.runner import Case, SweepConfig, load_config, run_cases
from sparsebench.runner.config import expand
from sparsebench.runner.launcher import SweepStats

STATUS_STYLE = {"ok": "green", "inaccurate": "yellow", "unsupported": "dim", "skipped": "dim"}


def run_cmd(
    pattern: Annotated[list[str] | None, typer.Option("--pattern", "-p", help="Pattern name, or name:key=INT,... "
                                                         "Repeatable. See `sparsebench list`.")] = None,
    seq: Annotated[list[int] | None, typer.Option("--seq", "-n", min=1, help="Sequence length. Repeatable.")] = None,
    impl: Annotated[list[str] | None, typer.Option("--impl", help="Implementation. Repeatable. "
                                                      "Default: every implementation that supports the case.")] = None,
    device: Annotated[list[str] | None, typer.Option("--device", help="cpu, cuda, cuda:N or auto. Repeatable.")] = None,
    dtype: Annotated[list[str] | None, typer.Option("--dtype", help="float32, bfloat16, float16. Repeatable.")] = None,
    mode: Annotated[list[str] | None, typer.Option("--mode", help="fwd or fwdbwd. Repeatable.")] = None,
    batch: Annotated[int | None, typer.Option("--batch", "-b", min=1, help="Batch size B (default 1).")] = None,
    heads: Annotated[int | None, typer.Option("--heads", min=1, help="Attention heads H (default 8).")] = None,
    head_dim: Annotated[int | None, typer.Option("--head-dim", min=1, help="Head dimension D (default 64).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML sweep file (see configs/). "
                                                   "Options given on the command line override it.")] = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Where results.csv and meta.json go.")]
    = Path("sparsebench-results"),
    timeout: Annotated[float | None, typer.Option("--timeout", min=1, help="Seconds per case before it is "
                                                     "killed and recorded as `timeout`.")] = None,
    min_run_time: Annotated[float | None, typer.Option("--min-run-time", min=0.01,
                                                          help="Seconds of timed calls per case.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Keep results.csv and skip cases already in it.")] = False,
    gate: Annotated[Path | None, typer.Option("--gate", help="After the run, gate the results against this "
                                                 "baseline CSV (as `sparsebench gate BASELINE results.csv`).")]
    = None,
    window: opt.Window = None, stride: opt.Stride = None, dilation: opt.Dilation = None, length: opt.Length = None,
    summary: opt.Summary = None, global_tokens: opt.GlobalTokens = None, block: opt.Block = None,
    global_blocks: opt.GlobalBlocks = None, random_blocks: opt.RandomBlocks = None, mask_seed: opt.MaskSeed = None,
) -> None:
    """Benchmark attention implementations over patterns and sequence lengths (dense SDPA always runs beside)."""
    with user_errors():
        settings: dict[str, Any] = load_config(config) if config else {}
        cli = {"patterns": pattern, "seq": seq, "impls": impl, "devices": device, "dtypes": dtype, "modes": mode,
               "batch": [batch] if batch else None, "heads": [heads] if heads else None,
               "head_dim": [head_dim] if head_dim else None, "timeout": timeout, "min_run_time": min_run_time}
        settings.update({k: v for k, v in cli.items() if v})
        params = opt.pattern_params(window, stride, dilation, length, summary, global_tokens, block, global_blocks,
                                    random_blocks, mask_seed)
        settings["params"] = {**settings.get("params", {}), **params}
        if gate is not None and not gate.is_file():
            raise SparsebenchError(f"--gate {gate}: no such baseline file")
        sweep = SweepConfig(**settings)
        cases, unsupported = expand(sweep)
        _check_writable(out_dir)
        csv_path = out_dir / "results.csv"
        done, dense = _resume_state(csv_path) if resume else (set(), {})
        cases = [c for c in cases if c.key() not in done]
        unsupported = [(c, r) for c, r in unsupported if c.key() not in done]
        meta = environment.collect({"config": dataclasses.asdict(sweep), "config_file": str(config or "")})
        earlier = _earlier_meta(csv_path) if resume else {}
        meta.update(earlier)
        write_meta(out_dir / "meta.json", meta)
        with ResultWriter(csv_path, append=resume) as writer:
            try:
                rows, stats = _sweep(cases, unsupported, sweep, writer, dense)
            except KeyboardInterrupt:
                err_console.print(f"interrupted: {writer.rows_written} finished row(s) of this run kept in {csv_path}; "
                                  "the same command with --resume runs the rest", markup=False)
                raise typer.Exit(130) from None
        starts = stats.worker_starts_s
        meta["ceilings"] = _merge_ceilings(earlier.get("ceilings", {}), stats.ceilings)
        meta["harness"] = {"wall_s": round(stats.wall_s, 2), "workers": len(starts),
                           "worker_start_mean_s": round(sum(starts) / len(starts), 3) if starts else None}
        write_meta(out_dir / "meta.json", meta)
    _summary(rows, csv_path)
    if gate is not None:
        from sparsebench.cli.gate import gate_cmd

        gate_cmd(gate, csv_path)  # exits with the gate's code


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise SparsebenchError(f"cannot write to --out-dir {out_dir}: {exc.strerror or exc}") from None


def _earlier_meta(csv_path: Path) -> dict[str, Any]:
    """What a resumed run keeps of the meta.json it appends to: the earlier runs' metadata (config, environment,
    harness) under `earlier_runs`, and their ceilings (this run measures only the dtypes it runs)."""
    old = read_meta(csv_path)
    if not old:
        return {}
    runs = old.pop("earlier_runs", [])
    old.pop("schema_version", None)
    return {"earlier_runs": [*runs, old], "ceilings": old.get("ceilings", {})}


def _merge_ceilings(old: dict[str, dict[str, float]], new: dict[str, dict[str, float]]) -> dict:
    """metric -> dtype -> value, this run's measurements over the earlier ones."""
    merged = {metric: dict(values) for metric, values in old.items()}
    for metric, values in new.items():
        merged.setdefault(metric, {}).update(values)
    return merged


def _resume_state(csv_path: Path) -> tuple[set[tuple], dict[tuple, dict]]:
    """Keys already measured, and the dense baselines among them."""
    if not csv_path.exists():
        return set(), {}
    frame = read_results(csv_path, allow_empty=True)
    keys: set[tuple] = set()
    dense: dict[tuple, dict] = {}
    for row in frame.to_dict("records"):
        key = tuple(row[c] for c in KEY_COLUMNS)
        keys.add(key)
        if is_dense_baseline(row):
            dense[key] = row
    return keys, dense


def _sweep(cases: list[Case], unsupported: list[tuple[Case, str]], sweep: SweepConfig, writer: ResultWriter,
           dense: dict[tuple, dict]) -> tuple[list[dict], SweepStats]:
    """Run everything with a progress bar; returns the rows and the harness's own statistics."""
    run_id = uuid.uuid4().hex[:12]
    rows: list[dict] = []
    names = {d: environment.device_name(d) for d in {c.device for c in cases + [c for c, _ in unsupported]}}
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("sweep", total=len(cases) + len(unsupported))

        def on_row(case: Case, row: dict) -> None:
            writer.write(row)
            rows.append(row)
            progress.advance(task)

        for case, reason in unsupported:
            on_row(case, {**case.row(), "run_id": run_id, "device_name": names[case.device],
                          "status": "unsupported", "error": reason})
        stats = run_cases(cases, _settings(sweep), on_row,
                          on_start=lambda c: progress.update(task, description=c.label()),
                          timeout_s=sweep.timeout, run_id=run_id, device_names=names, dense=dense)
        progress.update(task, description="done")
    return rows, stats


def _settings(sweep: SweepConfig) -> dict[str, Any]:
    return {"min_run_time": sweep.min_run_time, "min_samples": sweep.min_samples, "warmup": sweep.warmup}


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _summary(rows: list[dict], csv_path: Path) -> None:
    """The end-of-sweep table; dtype/mode/device go in the title when the sweep has one of each."""
    def setup(r: dict) -> str:
        return f"{r['dtype']} {r['mode']} {r['device']}"

    setups = sorted({setup(r) for r in rows})
    table = Table(title=f"{csv_path}" + (f" ({setups[0]})" if len(setups) == 1 else ""))
    headers = ["pattern", "impl", "n", "ms", "IQR", "vs dense", "MiB", "err", "status"]
    if len(setups) > 1:
        headers.insert(2, "dtype mode device")
    for col in headers:
        table.add_column(col, justify="right" if col in ("n", "ms", "IQR", "vs dense", "MiB", "err") else "left")
    # per setup and length: the dense baseline first, then the cases in run order, the ones not run last
    order = sorted(rows, key=lambda r: (setup(r), r["seq_len"], r["status"] in ("unsupported", "skipped"),
                                        not is_dense_baseline(r)))
    for r in order:
        label = f"{r['pattern']}({r['params'].replace(';', ',')})" if r.get("params") else r["pattern"]
        status = r["status"] if r["status"] in ("ok", "inaccurate") else f"{r['status']}: {r.get('error', '')[:120]}"
        cells = [label, r["impl"], str(r["seq_len"]), _fmt(r.get("latency_ms"), ".1f"),
                 _fmt(r.get("latency_iqr_ms"), ".1f"), _fmt(r.get("speedup_vs_dense"), ".2f"),
                 _fmt(r.get("peak_mem_mib"), ".0f"), _fmt(r.get("max_abs_err"), ".0e"),
                 f"[{STATUS_STYLE.get(r['status'], 'red')}]{status}[/]"]
        if len(setups) > 1:
            cells.insert(2, setup(r))
        table.add_row(*cells)
    console.print(table)
    console.print(f"wrote {csv_path} and {csv_path.with_name('meta.json')}")
