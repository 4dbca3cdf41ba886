"""`sparsebench history DIR...`: latency over dense across runs, the gate's regressions marked."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from sparsebench import gate, history
from sparsebench.cli.common import console, fail, not_comparable, user_errors
from sparsebench.merge import open_result_set


def history_cmd(
    inputs: Annotated[list[Path], typer.Argument(
        help="Result directories (or their results.csv), from one device and machine.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Directory for the figures and history.csv.")]
    = Path("sparsebench-history"),
    fmt: Annotated[str, typer.Option("--format", help="Figure format: png or svg.")] = "png",
    by: Annotated[str, typer.Option("--by", help="Order the runs by meta.json's `date`, by the `commit` time of "
                                    "their git_sha in this checkout, or as `given`.")] = "date",
    thresholds_file: Annotated[Path | None, typer.Option(
        "--thresholds", help="TOML file of gate thresholds for the run-to-run verdicts (see configs/gate.toml).",
        show_default=False)] = None,
) -> None:
    """Plot each case's latency over dense SDPA run by run and mark where the gate finds a regression against the
    run before: exit 2 on bad input, 3 for runs of different devices or machines."""
    if fmt not in history.FORMATS:
        fail(f"unknown --format {fmt!r}; choose from: {', '.join(history.FORMATS)}")
    if by not in history.ORDERS:
        fail(f"unknown --by {by!r}; choose from: {', '.join(history.ORDERS)}")
    with user_errors(), not_comparable():
        thresholds = gate.Thresholds.from_toml(thresholds_file)
        sets = [open_result_set(path) for path in inputs]
        for note in (note for found in sets for note in found.notes):
            console.print(f"note: {note}", markup=False, soft_wrap=True)
        runs = [history.HistoryRun(label, found.frame, found.meta)
                for label, found in zip(_labels([found.path for found in sets]), sets)]
        runs = history.order_runs(runs, by, _commit_time)
        try:
            written, table, notes = history.write_history(runs, out, fmt, thresholds)
        except OSError as exc:
            fail(f"cannot write the history to {out}: {exc.strerror or exc}")
    for note in notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)
    for row in table[table["regression"]].itertuples():
        console.print(f"REGRESSION {row.label}: {row.case}: {row.why}", markup=False, highlight=False, soft_wrap=True)
    for path in written:
        typer.echo(path)
    flagged = int(table["regression"].sum())
    console.print(f"{len(runs)} runs, {table['case'].nunique()} cases, {flagged} regression(s) between consecutive "
                  f"runs; wrote {len(written)} files to {out}", style="dim", markup=False)


def _labels(paths: list[Path]) -> list[str]:
    """Each run's name: its directory's name, or the directory as given where two share a name."""
    names = [path.resolve().parent.name for path in paths]
    return [name if names.count(name) == 1 else str(path.parent) for name, path in zip(names, paths)]


def _commit_time(sha: str) -> float | None:
    """The committer time of `sha` in the git checkout of the working directory, None when git does not know it."""
    if not re.fullmatch(r"[0-9a-fA-F]{4,64}", sha):  # never hand git an option read from a file
        return None
    try:
        done = subprocess.run(["git", "show", "-s", "--format=%ct", sha], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return float(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip().isdigit() else None
