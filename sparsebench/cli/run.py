"""`sparsebench run`: measure a sweep of cases in worker processes and write results.csv + meta.json."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from sparsebench import plugins
from sparsebench.cli import options as opt
from sparsebench.cli import scale
from sparsebench.cli.common import (
    Interrupted,
    console,
    err_console,
    interrupt_exit_code,
    interrupt_on_stop_signals,
    user_errors,
)
from sparsebench.cli.output import gate_and_exit
from sparsebench.cli.progress import Reporter, case_line
from sparsebench.errors import SparsebenchError
from sparsebench.results import is_dense_reference, recall_applies
from sparsebench.results.labels import heads_text, mode_label, pattern_label, serving_text
from sparsebench.runner import Case, load_config
from sparsebench.runner.config import SweepConfig, SweepOptions
from sparsebench.runner.scale import ScalePlan
from sparsebench.runner.scale import plan as plan_scale
from sparsebench.services.run import RunReporter, run_sweep

STATUS_STYLE = {"ok": "green", "inaccurate": "yellow", "unsupported": "dim", "skipped": "dim"}


def run_cmd(
    pattern: Annotated[list[str] | None, typer.Option("--pattern", "-p", help="Pattern name, or name:key=INT,... "
                                                         "Repeatable. See `sparsebench list`.")] = None,
    seq: Annotated[list[int] | None, typer.Option("--seq", "-n", min=1, help="Sequence length. Repeatable.")] = None,
    impl: Annotated[list[str] | None, typer.Option("--impl", help="Implementation. Repeatable. "
                                                      "Default: every implementation that supports the case.")] = None,
    device: Annotated[list[str] | None, typer.Option("--device", help="cpu, cuda, cuda:N or auto. Repeatable.")] = None,
    dtype: Annotated[list[str] | None, typer.Option("--dtype", help="float32, bfloat16, float16. Repeatable.")] = None,
    mode: Annotated[list[str] | None, typer.Option("--mode", help="fwd, fwdbwd or decode (q-len queries at the "
                                                      "end of a KV cache of --seq keys). Repeatable.")] = None,
    batch: Annotated[int | None, typer.Option("--batch", "-b", min=1, help="Batch size B (default 1).")] = None,
    heads: Annotated[int | None, typer.Option("--heads", min=1, help="Attention heads H (default 8).")] = None,
    kv_heads: Annotated[list[int] | None, typer.Option("--kv-heads", min=1, help="Key/value heads (GQA; 1: MQA); "
                                                         "must divide --heads. Repeatable. Default: --heads.")] = None,
    q_len: Annotated[list[int] | None, typer.Option("--q-len", min=1, help="decode: query rows per step (1; 16 for "
                                                       "speculative decoding). Repeatable.")] = None,
    head_dim: Annotated[int | None, typer.Option("--head-dim", min=1, help="Head dimension D (default 64).")] = None,
    seq_lens: Annotated[list[str] | None, typer.Option("--seq-lens", help="A serving batch of sequences of these "
                                                          "lengths: 512,4096,8192, or uniform:LO-HI[:COUNT] (COUNT "
                                                          "from --batch when left out), packed for prefill (fwd) or "
                                                          "decoded over a paged KV cache (--mode decode). "
                                                          "Repeatable.")] = None,
    seq_lens_seed: Annotated[int | None, typer.Option("--seq-lens-seed", min=0, help="Seed of uniform:... "
                                                         "lengths (default 0).")] = None,
    page_size: Annotated[int | None, typer.Option("--page-size", help="Decode over --seq-lens: tokens per KV-cache "
                                                     "page, a power of two (default 16).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML sweep file (see configs/). "
                                                   "Options given on the command line override it.")] = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Where results.csv and meta.json go.")]
    = Path("sparsebench-results"),
    timeout: Annotated[float | None, typer.Option("--timeout", min=1, help="Seconds per case before it is "
                                                     "killed and recorded as `timeout`.")] = None,
    min_run_time: Annotated[float | None, typer.Option("--min-run-time", min=0.01,
                                                          help="Seconds of timed calls per case.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Keep results.csv and skip cases already in it.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing results.csv (without it, "
                                            "a run refuses to replace one that holds rows).")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="When another run is writing to --out-dir, wait for it "
                                       "to finish instead of exiting.")] = False,
    gate: Annotated[Path | None, typer.Option("--gate", help="After the run, gate the results against this "
                                                 "baseline CSV (as `sparsebench gate BASELINE results.csv`).")]
    = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress: only failed cases and the final "
                                        "table.")] = False,
    inputs: Annotated[str | None, typer.Option("--inputs", help="q, k, v to measure on: random (default), "
                                                  "structured (a seeded synthetic generator with clusters, heavy "
                                                  "hitters and RoPE decay) or a .pt/.safetensors file of q, k, v "
                                                  "(B, H, N, D), which fixes B, H, D and dtype.")] = None,
    input_seed: Annotated[int | None, typer.Option("--input-seed", min=0, help="Seed of random and structured "
                                                      "inputs (default 0).")] = None,
    window: opt.Window = None, stride: opt.Stride = None, dilation: opt.Dilation = None, length: opt.Length = None,
    summary: opt.Summary = None, global_tokens: opt.GlobalTokens = None, block: opt.Block = None,
    global_blocks: opt.GlobalBlocks = None, random_blocks: opt.RandomBlocks = None, mask_seed: opt.MaskSeed = None,
    shard: scale.Shard = None, gpus: scale.Gpus = None, jobs: scale.Jobs = None, launcher: scale.Launcher = "local",
    shards: scale.Shards = None, slurm_partition: scale.SlurmPartition = None, slurm_time: scale.SlurmTime = 240,
    slurm_param: scale.SlurmParam = None,
) -> None:
    """Benchmark attention implementations over patterns and sequence lengths (dense SDPA always runs beside)."""
    with user_errors(), interrupt_on_stop_signals():
        options = SweepOptions(
            patterns=pattern, seq=seq, impls=impl, devices=device, dtypes=dtype, modes=mode,
            batch=[batch] if batch else None, heads=[heads] if heads else None, kv_heads=kv_heads, q_len=q_len,
            head_dim=[head_dim] if head_dim else None, timeout=timeout, min_run_time=min_run_time, inputs=inputs,
            input_seed=input_seed, seq_lens=seq_lens, seq_lens_seed=seq_lens_seed,
            page_size=page_size, params=opt.pattern_params(window, stride, dilation, length, summary,
                                                             global_tokens, block, global_blocks, random_blocks,
                                                             mask_seed))
        file_settings = load_config(config) if config else {}
        if gate is not None and not gate.is_file():
            raise SparsebenchError(f"--gate {gate}: no such baseline file")
        sweep_config = options.over(file_settings)  # every value checked: nothing is written before this
        if not quiet:
            _name_user_code(sweep_config)
        plan = plan_scale(sweep_config, out_dir, shard, gpus, jobs, launcher, shards)
        if gate is not None and (plan.shard or plan.shards):
            raise SparsebenchError("--gate gates a whole sweep: gate the merged shards (sparsebench gate BASELINE "
                                   "OUT_DIR) once every shard has run")
        if plan.launcher != "local":
            scale.submit_and_wait(plan, sweep_config, resume, overwrite, slurm_partition, slurm_time, slurm_param)
            return
        reporter = _Progress(plan, quiet)
        try:
            result = run_sweep(sweep_config, plan.out_dir, reporter, resume=resume, overwrite=overwrite, wait=wait,
                               plan=plan, config_file=str(config or ""))
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: the workers are gone, the rows are kept
            if not reporter.kept:
                raise  # before any case: user_errors says "interrupted"
            raise typer.Exit(interrupt_exit_code(exc)) from None
    _summary(result.rows, result.csv_path, quiet)
    if plan.shard:
        scale.merge_all(plan.root, required=False)  # the last shard of a split to finish merges them all
    if gate is not None:
        gate_and_exit(gate, result.csv_path)  # exits with the gate's code


class _Progress(RunReporter):
    """The run on stderr: the directory's state, the plan, then each case as it finishes (see progress.py)."""

    def __init__(self, plan: ScalePlan, quiet: bool) -> None:
        self.plan = plan
        self.quiet = quiet
        self.report: Reporter | None = None
        self.kept = False  # interrupted while measuring: what was kept is said

    def waiting(self, pid: str, out_dir: Path) -> None:
        console.print(f"waiting for the run (pid {pid}) that is writing to {out_dir}", markup=False)

    def recovered(self, csv_path: Path, size: int) -> None:
        console.print(f"{csv_path} ended in an unfinished row ({size} bytes, a write cut off): moved to "
                      f"{csv_path.name}.partial; that case is measured again", markup=False)

    @contextmanager
    def measuring(self, to_measure: int, unsupported: int, csv_path: Path | None) -> Iterator[None]:
        if self.plan.describe():
            console.print(self.plan.describe(), markup=False)
        header = f"sparsebench run: {to_measure} case(s) to measure" + \
            (f", {unsupported} unsupported" if unsupported else "") + f", results in {csv_path}"
        with Reporter(to_measure + unsupported, header, self.quiet) as self.report:
            yield

    def begin(self, case: Case) -> None:
        self.report.begin(case.label())

    def done(self, case: Case, row: dict[str, Any]) -> None:
        self.report.done(*case_line(row))

    def interrupted(self, exc: KeyboardInterrupt, rows_written: int, csv_path: Path) -> None:
        self.kept = True
        signame = f" by {exc.args[0]}" if isinstance(exc, Interrupted) else ""
        err_console.print(f"interrupted{signame}: {rows_written} finished row(s) of this run kept in {csv_path}; "
                          "the same command with --resume runs the rest", markup=False)


def _name_user_code(config: SweepConfig) -> None:
    """One line per user plugin the sweep runs, with the file it was loaded from: a module of the same name
    elsewhere on the path (or in the current directory, which comes first) is then no surprise."""
    patterns = {spec.name for spec in config.pattern_specs}
    for origin in plugins.LOADED.used(set(config.impls), patterns).origins:
        console.print(f"{origin['kind']} {origin['name']}: {origin.get('file') or origin.get('spec')}", markup=False)


def _fmt(value: Any, spec: str) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _summary(rows: list[dict], csv_path: Path, quiet: bool = False) -> None:
    """The end-of-sweep table; dtype/mode/device go in the title when the sweep has one of each."""
    def setup(r: dict) -> str:
        return f"{r['dtype']} {mode_label(r['mode'], r['q_len'])} {heads_text(r['heads'], r['kv_heads'])} " \
            f"D={r['head_dim']} {r['device']}"

    setups = sorted({setup(r) for r in rows})
    table = Table(title=escape(f"{csv_path}" + (f" ({setups[0]})" if len(setups) == 1 else "")))
    headers = ["pattern", "impl", "n", "ms", "IQR", "vs dense", "MiB", "err", "status"]
    # with a selection pattern or --inputs other than random (on random q and k recall means nothing): the
    # speed-up against the full attention each pattern replaces (causal SDPA for a causal one) and the recall
    quality = any(recall_applies(r.get("pattern"), r.get("inputs")) for r in rows)
    if quality:
        headers[6:6] = ["vs full", "recall"]
    if len(setups) > 1:
        headers.insert(2, "dtype mode device")
    numbers = ("n", "ms", "IQR", "vs dense", "vs full", "recall", "MiB", "err")
    for col in headers:
        table.add_column(col, justify="right" if col in numbers else "left")
    # per setup and length: the dense reference first, then the cases in run order, the ones not run last
    order = sorted(rows, key=lambda r: (setup(r), r["seq_len"], r["status"] in ("unsupported", "skipped"),
                                        not (is_dense_reference(r) and r["status"] == "ok")))
    for r in order:
        label = pattern_label(r["pattern"], r.get("params"))
        status = r["status"] if r["status"] in ("ok", "inaccurate") else f"{r['status']}: {r.get('error', '')[:120]}"
        ms = r.get("latency_ms")
        length = serving_text(r).strip() or str(r["seq_len"])  # a serving batch: its lengths, as row_label
        cells = [escape(label), escape(r["impl"]), escape(length), _fmt(ms, ".1f" if (ms or 0) >= 1 else ".3g"),
                 _fmt(r.get("latency_iqr_ms"), ".2g"), _fmt(r.get("speedup_vs_dense"), ".2f"),
                 _fmt(r.get("peak_mem_mib"), ".0f"), _fmt(r.get("max_abs_err"), ".0e"),
                 f"[{STATUS_STYLE.get(r['status'], 'red')}]{escape(status)}[/]"]
        if quality:
            cells[6:6] = [_fmt(r.get("speedup_vs_full"), ".2f"), _fmt(r.get("recall"), ".3f")]
        if len(setups) > 1:
            cells.insert(2, escape(setup(r)))
        table.add_row(*cells)
    console.print(table)
    if not quiet:
        console.print(f"wrote {csv_path} and {csv_path.with_name('meta.json')}", markup=False)
