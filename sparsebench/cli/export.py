"""`sparsebench export RESULTS --format FORMAT`: results (and gate verdicts) for the CI tools teams use."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sparsebench import export, gate
from sparsebench.cli.common import check_output_file, not_comparable, user_errors
from sparsebench.cli.output import emit
from sparsebench.errors import SparsebenchError
from sparsebench.merge import open_result_set
from sparsebench.services import gate as gating

FORMAT_HELP = ("markdown (default: the gate's summary, or a table of the results), github-action-benchmark "
               "(customSmallerIsBetter JSON), bencher (Bencher Metric Format JSON), junit (gate verdicts; needs "
               "--baseline)")


def export_cmd(
    results: Annotated[Path, typer.Argument(help="A results.csv, or the directory `run --out-dir` wrote.",
                                            show_default=False)],
    fmt: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "markdown",
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout.", show_default=False)] = None,
    baseline: Annotated[Path | None, typer.Option(
        "--baseline", help="Gate RESULTS against this baseline (a results.csv or its directory) for junit and "
        "markdown, as `sparsebench gate` does without re-runs (the JSON formats export RESULTS alone).",
        show_default=False)] = None,
    thresholds_file: Annotated[Path | None, typer.Option(
        "--thresholds", help="TOML file of gate thresholds (see configs/gate.toml).", show_default=False)] = None,
) -> None:
    """Write RESULTS as markdown, github-action-benchmark or Bencher JSON, or the gate's verdicts as JUnit XML:
    exit 2 on bad input, 3 when RESULTS and --baseline cannot be compared."""
    with user_errors():
        export.check_format(fmt)
        if out is not None:
            check_output_file(out, "--out")
        report = base = None
        if baseline is None or fmt not in export.REPORT_FORMATS:
            found = open_result_set(results)  # another schema version: exit 2, there is nothing to compare
            if fmt in export.METRIC_FORMATS and not export.has_metrics(found.frame):
                raise SparsebenchError(f"{found.path}: no ok case to export (every case failed or did not run)")
        else:
            with not_comparable():
                found = open_result_set(results)
                base = open_result_set(baseline)
                report = gating.compare(base, found, gate.Thresholds.from_toml(thresholds_file))
        emit(export.render(fmt, found.frame, found.path, report, base.path if base else None, found.meta), out)
