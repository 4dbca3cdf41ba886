"""What `gate`, `run --gate` and `export` print and write: the gate's report on stderr, its markdown summary,
exports on stdout or in a file, and the gate's exit code. The workflow itself is `services.gate`'s."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from sparsebench import export, gate
from sparsebench.cli.common import (
    EXIT_INCOMPARABLE,
    EXIT_OK,
    EXIT_REGRESSION,
    check_output_file,
    console,
    err_console,
    fail,
    interrupt_on_stop_signals,
    state,
    user_errors,
)
from sparsebench.cli.progress import Reporter, case_line
from sparsebench.errors import NotComparable, SparsebenchError
from sparsebench.gate_report import finding_lines, headline, render_markdown, rich_table
from sparsebench.merge import has_shards, materialize
from sparsebench.results import ResultSet
from sparsebench.runner.cases import Case
from sparsebench.services import gate as gating
from sparsebench.services.run import RunReporter


def gate_and_exit(baseline: Path, current: Path, *, raw: bool = False, latency: bool = True,
                  threshold: float | None = None, mem_tolerance: float | None = None, alpha: float | None = None,
                  thresholds_file: Path | None = None, confirm: int = gate.DEFAULT_CONFIRM,
                  normalise: str = "shape", summary: Path | None = None, update_baseline: bool = False,
                  strict_machine: bool = False, export_format: str | None = None, export_out: Path | None = None,
                  quiet: bool = False, fail_missing: bool = False) -> NoReturn:
    """`sparsebench gate BASELINE CURRENT` with these options: print the report, write the summary and export,
    and exit 0 (no regression), 1 (regression), 2 (bad input) or 3 (not comparable)."""
    # SIGTERM and SIGHUP stop --confirm's re-runs as Ctrl-C does: workers killed, the temporary folder removed
    with user_errors(), interrupt_on_stop_signals(), tempfile.TemporaryDirectory(prefix="sparsebench-gate-") as tmp:
        check_report_outputs(summary, export_format, export_out)  # found out before the comparison, not after
        shown = (baseline, current)  # as given, for the report
        if update_baseline and baseline.is_dir() and has_shards(baseline):
            raise SparsebenchError(f"--update-baseline writes one results.csv: {baseline} is a directory of shards")
        baseline, notes = materialize(baseline, Path(tmp) / "baseline")  # a directory of shards: merged in tmp
        current, more = materialize(current, Path(tmp) / "current")
        for note in notes + more:
            console.print(f"note: {note}", markup=False, soft_wrap=True)
        thresholds = gate.Thresholds.from_toml(thresholds_file, latency=threshold, peak_mem=mem_tolerance,
                                               alpha=alpha)
        try:
            current_set = ResultSet.read(current)
        except NotComparable as exc:  # another schema version
            _not_comparable(exc)
        if update_baseline and not baseline.exists():
            _update(baseline, current, "created")
            raise typer.Exit(EXIT_OK)
        if not baseline.exists():
            raise SparsebenchError(f"{baseline}: no such file (create the baseline with --update-baseline)")
        try:
            baseline_set = ResultSet.read(baseline)
            report = gating.compare(baseline_set, current_set, thresholds, raw=raw, gate_latency=latency,
                                    normalise=normalise, strict_machine=strict_machine and not update_baseline)
        except NotComparable as exc:
            if not update_baseline:
                _not_comparable(exc)
            console.print(f"not comparable ({exc}): replacing the baseline", markup=False, soft_wrap=True)
            _update(baseline, current, "replaced")
            raise typer.Exit(EXIT_OK) from None
        to_confirm = gate.latency_regressions(report)
        if confirm and to_confirm and not update_baseline:
            if not quiet:
                console.print(f"re-running {len(to_confirm)} case(s) whose latency regressed, {confirm} time(s), to "
                              "confirm", markup=False)
            report = gating.confirm(report, baseline_set, current_set, confirm, RerunProgress(confirm, quiet))
        report.fail_missing = fail_missing
        print_report(report)
        markdown = render_markdown(report, *shown)
        if summary is not None:
            write_summary(summary, markdown, append=False)
        if os.environ.get("GITHUB_STEP_SUMMARY"):
            write_summary(Path(os.environ["GITHUB_STEP_SUMMARY"]), markdown, append=True)
        if export_format is not None:
            emit(export.render(export_format, current_set.frame, current, report, baseline, current_set.meta),
                 export_out)
        if update_baseline:
            _update(baseline, current, "updated")
            if report.failed:
                console.print("exit 0 all the same: --update-baseline accepts the current numbers as the new "
                              "baseline", markup=False)
            raise typer.Exit(EXIT_OK)
    raise typer.Exit(EXIT_REGRESSION if report.failed else EXIT_OK)


class RerunProgress(RunReporter):
    """Each of the gate's `times` re-runs reported as `run`'s cases are."""

    def __init__(self, times: int, quiet: bool) -> None:
        self.times = times
        self.quiet = quiet
        self.runs = 0
        self.report: Reporter | None = None

    @contextmanager
    def measuring(self, to_measure: int, unsupported: int, csv_path: Path | None) -> Iterator[None]:
        self.runs += 1
        header = f"gate --confirm, re-run {self.runs}/{self.times}: {to_measure} case(s)"
        with Reporter(to_measure, header, self.quiet) as self.report:
            yield

    def begin(self, case: Case) -> None:
        self.report.begin(case.label())

    def done(self, case: Case, row: dict[str, Any]) -> None:
        self.report.done(*case_line(row))


def _not_comparable(exc: NotComparable) -> NoReturn:
    if state["debug"]:
        raise exc
    fail(str(exc), EXIT_INCOMPARABLE)


def _update(baseline: Path, current: Path, how: str) -> None:
    gating.update_baseline(baseline, current)
    console.print(f"baseline {how}: {baseline} (from {current})", markup=False)


def write_summary(path: Path, text: str, append: bool) -> None:
    """Write (or append) a markdown summary; a failure is one line (SparsebenchError)."""
    try:
        with open(path, "a" if append else "w") as fh:
            fh.write(text)
    except OSError as exc:
        raise SparsebenchError(f"{path}: cannot write the summary ({exc.strerror})") from None


def print_report(report: gate.GateReport) -> None:
    """The table and notes on stderr, regressions as red lines, then the headline."""
    # CI logs are no terminal (rich would assume 80 columns): give the table the width it needs there.
    (console if console.is_terminal else Console(stderr=True, width=200, emoji=False)).print(rich_table(report))
    for note in report.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    for verdict, line in finding_lines(report):
        out = err_console if verdict == gate.REGRESSION else console
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(headline(report), markup=False, highlight=False, soft_wrap=True)


def emit(text: str, out: Path | None) -> None:
    """Write `text` to `out`, or to stdout (data only: the reports go to stderr)."""
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except OSError as exc:
        raise SparsebenchError(f"{out}: cannot write the export ({exc.strerror or exc})") from None


def check_report_outputs(summary: Path | None, export_format: str | None, export_out: Path | None) -> Path | None:
    """A gate's report options: a known export format, and every output file writable (SparsebenchError).
    Returns $GITHUB_STEP_SUMMARY's file, where the markdown report is also appended (None outside Actions)."""
    if export_format is not None:
        export.check_format(export_format)
    elif export_out is not None:
        raise SparsebenchError("--export-out needs --export FORMAT")
    step_summary = Path(os.environ["GITHUB_STEP_SUMMARY"]) if os.environ.get("GITHUB_STEP_SUMMARY") else None
    for path, option in ((summary, "--summary"), (export_out, "--export-out"),
                         (step_summary, "$GITHUB_STEP_SUMMARY")):
        if path is not None:
            check_output_file(path, option)
    return step_summary
