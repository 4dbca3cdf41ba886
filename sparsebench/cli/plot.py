"""`sparsebench plot`: figures and report.md from one or more results.csv files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sparsebench import plots
from sparsebench.cli.common import console, fail, user_errors
from sparsebench.merge import open_result_set
from sparsebench.results import ResultSet

DEFAULT_RESULTS = Path("sparsebench-results/results.csv")


def plot_cmd(
    inputs: Annotated[list[Path] | None, typer.Argument(
        help=f"results.csv files or directories (a run's, or a directory of shards); two or more overlay (default: "
        f"{DEFAULT_RESULTS}).", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Directory for the figures and report.md (default: plots/ beside the first input).",
        show_default=False)] = None,
    fmt: Annotated[str, typer.Option("--format", help="Figure format: png or svg.")] = "png",
    reference: Annotated[str, typer.Option("--reference", help="Speed-up against `sdpa` (dense SDPA, its default "
                                           "kernel) or `best-dense` (the fastest dense SDPA backend of the run, "
                                           "e.g. sdpa[cudnn]).")] = "sdpa",
) -> None:
    """Plot latency, speed-up, memory and TFLOP/s per pattern, a speed-up heatmap and report.md."""
    if fmt not in plots.FORMATS:
        fail(f"unknown --format {fmt!r}; choose from: {', '.join(plots.FORMATS)}")
    if reference not in plots.REFERENCES:
        fail(f"unknown --reference {reference!r}; choose from: {', '.join(plots.REFERENCES)}")
    paths = inputs or [DEFAULT_RESULTS]
    with user_errors():
        sets = [open_result_set(path) for path in paths]
        for note in (note for found in sets for note in found.notes):
            console.print(f"note: {note}", markup=False)
        runs = [plots.Run(label, found.frame, found.meta) for label, found in zip(_labels(sets), sets)]
        out_dir = out or sets[0].path.parent / "plots"
        try:
            written = plots.write_plots(runs, out_dir, fmt, reference)
        except OSError as exc:
            fail(f"cannot write the plots to {out_dir}: {exc.strerror or exc}")
    for path in written:
        typer.echo(path)
    console.print(f"wrote {len(written)} files to {out_dir}", style="dim", markup=False)


def _labels(sets: list[ResultSet]) -> list[str]:
    """Each run's legend label: meta.json's 'label', else its directory's name, else the path as given."""
    paths = [found.path for found in sets]
    labels = [found.meta.label or path.resolve().parent.name for path, found in zip(paths, sets)]
    labels = [label if labels.count(label) == 1 else str(path) for label, path in zip(labels, paths)]
    return [label if labels.count(label) == 1 else f"{label}#{i + 1}" for i, label in enumerate(labels)]
