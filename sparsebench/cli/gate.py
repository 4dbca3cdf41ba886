"""`sparsebench gate BASELINE.csv CURRENT.csv`: fail CI on a performance regression, not on noise."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, NoReturn

import pandas as pd
import typer
from rich.console import Console

from sparsebench import export, gate, machine
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
from sparsebench.cli.export import emit
from sparsebench.cli.progress import Reporter, case_line
from sparsebench.errors import NotComparable, SparsebenchError
from sparsebench.gate_report import finding_lines, headline, render_markdown, rich_table
from sparsebench.merge import has_shards, materialize
from sparsebench.results import format_params, read_meta, read_results


def gate_cmd(
    baseline: Annotated[Path, typer.Argument(help="Baseline results.csv (e.g. baselines/ci-cpu/results.csv), or a "
                                             "directory (a run's, or of shards).", show_default=False)],
    current: Annotated[Path, typer.Argument(help="Current results.csv to check, or a directory (a run's, or of "
                                            "shards).", show_default=False)],
    raw: Annotated[bool, typer.Option("--raw", help="Gate raw latency (same machine only) instead of latency "
                                      "normalised by the dense-SDPA latency of the same run.")] = False,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="Gate latency; --no-latency still "
                                          "shows it but fails only on flops, density, memory and status.")] = True,
    threshold: Annotated[float | None, typer.Option(
        "--threshold", help="Latency ratio beyond which a case is slower (default 1.15 on CUDA, 1.5 on CPU, or the "
        "TOML file).",
        show_default=False)] = None,
    mem_tolerance: Annotated[float | None, typer.Option(
        "--mem-tolerance", help="Relative tolerance on peak_mem_mib (default 0.05 on CUDA, 1.0 on CPU, or the "
        "TOML file).",
        show_default=False)] = None,
    alpha: Annotated[float | None, typer.Option(
        "--alpha", help="Significance level of the one-sided Mann-Whitney U test (default 0.05).",
        show_default=False)] = None,
    thresholds_file: Annotated[Path | None, typer.Option(
        "--thresholds", help="TOML file of thresholds, with per-pattern and per-impl overrides "
        "(see configs/gate.toml).", show_default=False)] = None,
    confirm: Annotated[int, typer.Option("--confirm", min=0, help="Re-run the cases whose latency regressed N "
                                         "times (with their dense reference, on this machine); fail only on those "
                                         "that regress again in most re-runs. 0: off.")] = gate.DEFAULT_CONFIRM,
    normalise: Annotated[str, typer.Option("--normalise", help="shape: latency / dense, less the shift every case "
                                           "of the shape shares (default); dense: latency / dense only.")]
    = "shape",
    summary: Annotated[Path | None, typer.Option(
        "--summary", help="Write a markdown report here (also appended to $GITHUB_STEP_SUMMARY when set).",
        show_default=False)] = None,
    update_baseline: Annotated[bool, typer.Option(
        "--update-baseline", help="Accept the current results: copy CURRENT over BASELINE and exit 0.")] = False,
    strict_machine: Annotated[bool, typer.Option(
        "--strict-machine", help="Exit 3 when the meta.json files name another CPU model, core count or GPU "
        "(default: gate flops, density, memory and status, latency findings as warnings).")] = False,
    export_format: Annotated[str | None, typer.Option(
        "--export", help="Also write the report as markdown, github-action-benchmark, bencher or junit (see "
        "`sparsebench export`).", show_default=False)] = None,
    export_out: Annotated[Path | None, typer.Option(
        "--export-out", help="File for --export (default: stdout).", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress of the --confirm re-runs: only "
                                        "their failed cases and the report.")] = False,
) -> None:
    """Compare CURRENT against BASELINE case by case: exit 0 no regression, 1 regression, 2 bad input,
    3 not comparable (other device or schema; another machine with --strict-machine)."""
    # SIGTERM and SIGHUP stop --confirm's re-runs as Ctrl-C does: workers killed, the temporary folder removed
    with user_errors(), interrupt_on_stop_signals(), tempfile.TemporaryDirectory(prefix="sparsebench-gate-") as tmp:
        if export_format is not None:
            export.check_format(export_format)
        elif export_out is not None:
            raise SparsebenchError("--export-out needs --export FORMAT")
        step_summary = Path(os.environ["GITHUB_STEP_SUMMARY"]) if os.environ.get("GITHUB_STEP_SUMMARY") else None
        for path, option in ((summary, "--summary"), (export_out, "--export-out"),
                             (step_summary, "$GITHUB_STEP_SUMMARY")):  # found out before the comparison, not after
            if path is not None:
                check_output_file(path, option)
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
            current_frame = read_results(current)
        except NotComparable as exc:  # another schema version
            _not_comparable(exc)
        if update_baseline and not baseline.exists():
            _update(baseline, current, "created")
            raise typer.Exit(EXIT_OK)
        if not baseline.exists():
            raise SparsebenchError(f"{baseline}: no such file (create the baseline with --update-baseline)")
        try:
            baseline_frame = read_results(baseline)
            report = gate.compare(baseline_frame, current_frame, thresholds, raw, gate_latency=latency,
                                  normalise=normalise)
        except NotComparable as exc:
            if not update_baseline:
                _not_comparable(exc)
            console.print(f"not comparable ({exc}): replacing the baseline", markup=False, soft_wrap=True)
            _update(baseline, current, "replaced")
            raise typer.Exit(EXIT_OK) from None
        found = machine.differences(machine.Machine.from_meta(read_meta(baseline)),
                                    machine.Machine.from_meta(read_meta(current)))
        if found and strict_machine and not update_baseline:
            _not_comparable(NotComparable(f"{machine.reason(found)}: --strict-machine refuses to gate latency "
                                          "across machines (without it: latency findings become warnings)"))
        report = machine.latency_as_warnings(report, found)
        report.notes += _environment_notes(baseline, current)
        to_confirm = gate.latency_regressions(report)
        if confirm and to_confirm and not update_baseline:
            if not quiet:
                console.print(f"re-running {len(to_confirm)} case(s) whose latency regressed, {confirm} time(s), to "
                              "confirm", markup=False)
            try:
                report = gate.confirm(report, baseline_frame, current_frame, _runner(current, confirm, quiet),
                                      confirm)
            except SparsebenchError as exc:  # e.g. a plugin of the current run that does not import here
                report.notes.append(f"--confirm could not re-run the cases here ({exc}); their regressions stand")
        print_report(report)
        markdown = render_markdown(report, *shown)
        if summary is not None:
            _write(summary, markdown, append=False)
        if os.environ.get("GITHUB_STEP_SUMMARY"):
            _write(Path(os.environ["GITHUB_STEP_SUMMARY"]), markdown, append=True)
        if export_format is not None:
            emit(export.render(export_format, current_frame, current, report, baseline, read_meta(current)),
                 export_out)
        if update_baseline:
            _update(baseline, current, "updated")
            if report.failed:
                console.print("exit 0 all the same: --update-baseline accepts the current numbers as the new "
                              "baseline", markup=False)
            raise typer.Exit(EXIT_OK)
    raise typer.Exit(EXIT_REGRESSION if report.failed else EXIT_OK)


def _not_comparable(exc: NotComparable) -> NoReturn:
    if state["debug"]:
        raise exc
    fail(str(exc), EXIT_INCOMPARABLE)


def _runner(current: Path, times: int = 1, quiet: bool = False) -> gate.Rerun:
    """The re-run hook of --confirm: the cases measured as `run` measures them, with the timing settings of
    the current run (its meta.json), adapted to gate.Rerun; each of the `times` re-runs reported as `run`'s."""
    from sparsebench.runner import Case, Sweep

    sweep = Sweep.from_meta(read_meta(current))
    done = 0

    def rerun(specs: list[dict]) -> pd.DataFrame:
        nonlocal done
        done += 1
        cases = [Case(**{**s, "params": format_params(s["params"])}) for s in specs]
        cases.sort(key=lambda c: (c.group(), c != c.reference()))  # groups together, dense reference first
        rows: list[dict] = []
        header = f"gate --confirm, re-run {done}/{times}: {len(cases)} case(s)"
        with Reporter(len(cases), header, quiet) as report:

            def on_row(case: Case, row: dict) -> None:
                rows.append(row)
                report.done(*case_line(row))

            sweep.measure(cases, on_row, on_start=lambda c: report.begin(c.label()), ceilings=False)
        return pd.DataFrame(rows)

    return rerun


def _update(baseline: Path, current: Path, how: str) -> None:
    """Copy CURRENT over BASELINE; a baseline named results.csv gets the run's meta.json beside it too."""
    copies = [(current, baseline)]
    if baseline.name == "results.csv" and current.with_name("meta.json").is_file():
        copies.append((current.with_name("meta.json"), baseline.with_name("meta.json")))
    try:
        baseline.parent.mkdir(parents=True, exist_ok=True)
        for src, dst in copies:
            if src.resolve() != dst.resolve():
                shutil.copyfile(src, dst)
    except OSError as exc:
        raise SparsebenchError(f"{baseline}: cannot write the baseline ({exc.strerror})") from None
    console.print(f"baseline {how}: {baseline} (from {current})", markup=False)


def _environment_notes(baseline: Path, current: Path) -> list[str]:
    """What changed in the software between the two runs (from their meta.json, when both have one); the
    hardware is `machine`'s business."""
    old, new = read_meta(baseline), read_meta(current)
    return [f"{key} differs: baseline {old[key]}, current {new[key]}" for key in ("torch", "cuda")
            if key in old and key in new and old[key] != new[key]]


def _write(path: Path, text: str, append: bool) -> None:
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
