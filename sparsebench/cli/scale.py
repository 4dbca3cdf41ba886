"""`run`'s scale-out options and what they do around a sweep: a job array's submission and wait, and the merge
once the last shard of a split has finished."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sparsebench import merge
from sparsebench.cli.common import console, err_console, fail
from sparsebench.errors import SparsebenchError
from sparsebench.runner import slurm
from sparsebench.runner.config import SweepConfig
from sparsebench.runner.scale import LAUNCHERS, ScalePlan

PANEL = "Scale out (shards, GPUs, clusters)"

Shard = Annotated[str | None, typer.Option(
    "--shard", help="Run only shard K of N (K = 1 ... N; whole shape groups, a deterministic split) into "
    "OUT_DIR/shard-K-of-N/. Under torchrun or srun the shard comes from RANK/WORLD_SIZE.", rich_help_panel=PANEL)]
Gpus = Annotated[str | None, typer.Option(
    "--gpus", help="all, or GPU indices such as 0,1,3 (as nvidia-smi numbers them): one worker per GPU in "
    "parallel, each pinned with CUDA_VISIBLE_DEVICES; rows go into one results.csv.", rich_help_panel=PANEL)]
Jobs = Annotated[int | None, typer.Option(
    "--jobs", min=1, help="CPU sweeps: N workers in parallel (faster, but their timings disturb each other).",
    rich_help_panel=PANEL)]
Launcher = Annotated[str, typer.Option(
    "--launcher", help=f"{', '.join(LAUNCHERS)}: `slurm` submits --shards N array tasks through submitit (one GPU "
    "each), waits and merges; `submitit-local` runs the same array as local processes.", rich_help_panel=PANEL)]
Shards = Annotated[int | None, typer.Option(
    "--shards", min=1, help="With --launcher slurm: the number of shards (array tasks).", rich_help_panel=PANEL)]
SlurmPartition = Annotated[str | None, typer.Option(
    "--slurm-partition", help="Slurm partition of the array tasks.", rich_help_panel=PANEL)]
SlurmTime = Annotated[int, typer.Option(
    "--slurm-time", min=1, help="Time limit of each array task, minutes.", rich_help_panel=PANEL)]
SlurmParam = Annotated[list[str] | None, typer.Option(
    "--slurm-param", help="More of submitit's Slurm parameters as KEY=VALUE (account=..., qos=..., "
    "constraint=...). Repeatable.", rich_help_panel=PANEL)]


def submit_and_wait(plan: ScalePlan, config: SweepConfig, resume: bool, overwrite: bool, partition: str | None,
                    time_min: int, params: list[str] | None) -> None:
    """Submit the array, show its progress until every task has finished, then merge into --out-dir. Exits:
    0 when every shard's cases are there, 2 with the list of what is missing."""
    extra = slurm.parse_params(params or [])
    if partition:
        extra["partition"] = partition
    gpus = 0 if all(d == "cpu" for d in config.devices) else 1  # 'auto' means the GPU of the task's node
    jobs = slurm.submit(config, plan.root, plan.shards or 1, plan.launcher, gpus, time_min, extra, resume,
                        overwrite)
    job_id = str(jobs[0].job_id).split("_")[0]
    console.print(f"submitted {len(jobs)} shard(s) as {plan.launcher} job {job_id}; logs in {plan.root / 'slurm'}",
                  markup=False)
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("shards", total=len(jobs))

            def show(state: slurm.ArrayState) -> None:
                failed = f", {len(state.failed)} failed" if state.failed else ""
                progress.update(task, completed=len(state.done) + len(state.failed),
                                description=f"job {job_id}: {_rows(plan.root)} rows{failed}")

            state = slurm.wait(jobs, show)
    except KeyboardInterrupt:
        err_console.print(f"stopped waiting; job {job_id} goes on. When it has finished: sparsebench merge "
                          f"{plan.root} --out {plan.root}", markup=False)
        raise typer.Exit(130) from None
    for index, why in sorted(state.failed.items()):
        err_console.print(f"shard {index}/{len(jobs)} failed: {why}", markup=False)
    merge_all(plan.root, required=True)


def _rows(root: Path) -> int:
    """Rows written so far by all shards under root."""
    total = 0
    for path in root.glob("shard-*-of-*/results.csv"):
        try:
            with open(path, "rb") as fh:
                total += max(sum(1 for _ in fh) - 1, 0)
        except OSError:
            continue
    return total


def merge_all(root: Path, required: bool) -> None:
    """Merge root's shards into root/results.csv. `required`: report what is missing and exit 2; otherwise (a
    shard that just finished) merge only once every shard has finished and nothing is missing."""
    try:
        merged = merge.load_merged([root])
        merge.check_out_dir(root, merge.find_results([root]))
    except SparsebenchError as exc:
        if required:
            raise
        console.print(f"not merged: {exc}", markup=False)
        return
    if not required and (merged.unfinished or not merged.complete):
        return
    if not merged.complete:
        for line in merged.problems():
            err_console.print(line, markup=False, highlight=False)
        fail(f"merge {root}: {merged.summary()}; when the missing shards have run: sparsebench merge {root} "
             f"--out {root}")
    path = merge.write(merged, root)
    console.print(f"all {merged.meta['merged']['shards']} shards finished: merged {len(merged.frame)} rows into "
                  f"{path}", markup=False)
