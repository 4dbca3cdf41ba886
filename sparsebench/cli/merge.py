"""`sparsebench merge DIR_OR_FILES... --out DIR`: shard results into one results.csv and meta.json; with
`--median`, repeated runs of one sweep into the median run of each case (a gate baseline)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sparsebench import merge
from sparsebench.cli.common import console, err_console, fail, user_errors


def merge_cmd(
    inputs: Annotated[list[Path], typer.Argument(
        help="Directories of shards (their shard-K-of-N/ subdirectories, or their results.csv) or results.csv "
        "files.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Directory for the merged results.csv and meta.json.",
                                      show_default=False)],
    partial: Annotated[bool, typer.Option("--partial", help="Write what there is even when shards or cases are "
                                          "missing (they are listed; duplicates still fail).")] = False,
    median: Annotated[bool, typer.Option("--median", help="The inputs are repeated runs of one sweep on one machine "
                                         f"(at least {merge.MIN_REPEATS}): keep, per case, the run whose latency "
                                         "over its dense reference is the median (a gate baseline that one busy "
                                         "minute cannot move).")] = False,
) -> None:
    """Combine shard results into one result set; exit 2 with the list of missing shards, missing cases or
    duplicate cases."""
    with user_errors():
        paths = merge.find_results(inputs)
        parts = merge.load(paths)
        merged = merge.median_runs(parts) if median else merge.merge(parts)
        for line in merged.problems():
            err_console.print(line, markup=False, highlight=False)
        if merged.duplicates or (not merged.complete and not partial):
            fail(f"{merged.summary()}; nothing written" + ("" if merged.duplicates else " (--partial writes what "
                                                            "there is)"))
        merge.check_out_dir(out, paths)
        path = merge.write(merged, out)
    hosts, gpus = merged.meta.get("hosts", []), [] if median else merged.meta["gpus"]
    where = f"; hosts: {', '.join(hosts)}" if hosts else ""
    if gpus:
        where += "; GPUs: " + ", ".join(f"{g['host']}:{g['index']} {g['name']}".lstrip(":") for g in gpus)
    how = f"the median run of each case over {len(paths)} runs" if median else f"{len(paths)} input(s)"
    console.print(f"merged {len(merged.frame)} rows from {how}{where}", markup=False)
    if not merged.complete:
        console.print(f"partial: {merged.summary()}", markup=False)
    typer.echo(path)
