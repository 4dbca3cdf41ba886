"""`sparsebench gate BASELINE.csv CURRENT.csv`: fail CI on a performance regression, not on noise."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from pathlib import Path
from typing import Annotated, NoReturn

import pandas as pd
import typer
from rich import box
from rich.console import Console
from rich.table import Table

from sparsebench import gate
from sparsebench.cli.common import (
    EXIT_INCOMPARABLE,
    EXIT_OK,
    EXIT_REGRESSION,
    console,
    err_console,
    fail,
    state,
    user_errors,
)
from sparsebench.errors import SparsebenchError
from sparsebench.results import SCHEMA_VERSION, format_params, read_meta, read_results

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

_STYLE = {gate.REGRESSION: "bold red", gate.WARNING: "yellow", gate.IMPROVEMENT: "green",
          gate.OK: "", gate.MISSING: "dim", gate.NEW: "dim"}


def gate_cmd(
    baseline: Annotated[Path, typer.Argument(help="Baseline results.csv (e.g. baselines/ci-cpu/results.csv).",
                                             show_default=False)],
    current: Annotated[Path, typer.Argument(help="Current results.csv to check.", show_default=False)],
    raw: Annotated[bool, typer.Option("--raw", help="Gate raw latency (same machine only) instead of latency "
                                      "normalised by the dense-SDPA latency of the same run.")] = False,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="Gate latency; --no-latency still "
                                          "shows it but fails only on flops, density, memory and status.")] = True,
    threshold: Annotated[float | None, typer.Option(
        "--threshold", help="Latency ratio beyond which a case is slower (default 1.15, or the TOML file).",
        show_default=False)] = None,
    mem_tolerance: Annotated[float | None, typer.Option(
        "--mem-tolerance", help="Relative tolerance on peak_mem_mib (default 0.05, or the TOML file).",
        show_default=False)] = None,
    alpha: Annotated[float | None, typer.Option(
        "--alpha", help="Significance level of the one-sided Mann-Whitney U test (default 0.05).",
        show_default=False)] = None,
    thresholds_file: Annotated[Path | None, typer.Option(
        "--thresholds", help="TOML file of thresholds, with per-pattern and per-impl overrides "
        "(see configs/gate.toml).", show_default=False)] = None,
    confirm: Annotated[int, typer.Option("--confirm", min=0, help="Re-run the regressed cases N times; fail "
                                         "only on those that regress again in most re-runs.")] = 0,
    summary: Annotated[Path | None, typer.Option(
        "--summary", help="Write a markdown report here (also appended to $GITHUB_STEP_SUMMARY when set).",
        show_default=False)] = None,
    update_baseline: Annotated[bool, typer.Option(
        "--update-baseline", help="Accept the current results: copy CURRENT over BASELINE and exit 0.")] = False,
) -> None:
    """Compare CURRENT against BASELINE case by case: exit 0 no regression, 1 regression, 2 bad input,
    3 not comparable (other device or schema)."""
    with user_errors():
        thresholds = _thresholds(thresholds_file, threshold, mem_tolerance, alpha)
        try:
            _check_schema(current)
        except gate.NotComparable as exc:
            _not_comparable(exc)
        current_frame = read_results(current)
        if update_baseline and not baseline.exists():
            _update(baseline, current, "created")
            raise typer.Exit(EXIT_OK)
        if not baseline.is_file():
            raise SparsebenchError(f"{baseline}: no such file (create the baseline with --update-baseline)")
        try:
            _check_schema(baseline)
            baseline_frame = read_results(baseline)
            report = gate.compare(baseline_frame, current_frame, thresholds, raw, gate_latency=latency)
        except gate.NotComparable as exc:
            if not update_baseline:
                _not_comparable(exc)
            console.print(f"not comparable ({exc}): replacing the baseline", markup=False, soft_wrap=True)
            _update(baseline, current, "replaced")
            raise typer.Exit(EXIT_OK) from None
        report.notes += _environment_notes(baseline, current)
        if confirm and report.regressions and not update_baseline:
            console.print(f"re-running {len(report.regressions)} regressed case(s) {confirm} time(s) to confirm")
            report = gate.confirm(report, baseline_frame, current_frame, _runner(current), confirm)
        _print(report)
        markdown = render_markdown(report, baseline, current)
        if summary is not None:
            _write(summary, markdown, append=False)
        if os.environ.get("GITHUB_STEP_SUMMARY"):
            _write(Path(os.environ["GITHUB_STEP_SUMMARY"]), markdown, append=True)
        if update_baseline:
            _update(baseline, current, "updated")
            if report.failed:
                console.print("exit 0 all the same: --update-baseline accepts the current numbers as the new "
                              "baseline", markup=False)
            raise typer.Exit(EXIT_OK)
    raise typer.Exit(EXIT_REGRESSION if report.failed else EXIT_OK)


def _not_comparable(exc: gate.NotComparable) -> NoReturn:
    if state["debug"]:
        raise exc
    fail(str(exc), EXIT_INCOMPARABLE)


def _thresholds(path: Path | None, latency: float | None, mem: float | None, alpha: float | None) -> gate.Thresholds:
    data = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise SparsebenchError(f"{path}: cannot read thresholds ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise SparsebenchError(f"{path}: not valid TOML ({exc})") from None
        data = data.get("gate", data)  # either a bare file or a [gate] table
    return gate.Thresholds.from_dict(data, latency=latency, peak_mem=mem, alpha=alpha)


def _check_schema(path: Path) -> None:
    """A result file of another schema version is not comparable (exit 3), not a bad file (exit 2)."""
    try:
        versions = pd.read_csv(path, usecols=["schema_version"], dtype=str)["schema_version"].dropna()
    except (OSError, ValueError):  # unreadable, or no such column: read_results gives the clear error
        return
    other = sorted(set(versions) - {str(SCHEMA_VERSION)})
    if other:
        raise gate.NotComparable(f"{path}: result schema version {', '.join(other)}, this sparsebench writes "
                                 f"version {SCHEMA_VERSION}; refresh it with --update-baseline")


def _runner(current: Path) -> gate.Rerun:
    """The re-run hook of --confirm: sparsebench.runner.run_cases with the timing settings of the current
    run (its meta.json), adapted to gate.Rerun."""
    from sparsebench.runner import Case, SweepConfig, run_cases

    config = {**dataclasses.asdict(SweepConfig()), **read_meta(current).get("config", {})}
    settings = {k: config[k] for k in ("min_run_time", "min_samples", "warmup")}

    def rerun(specs: list[dict]) -> pd.DataFrame:
        cases = [Case(**{**s, "params": format_params(s["params"])}) for s in specs]
        cases.sort(key=lambda c: (c.group(), c != c.baseline()))  # groups together, dense first
        rows: list[dict] = []
        run_cases(cases, settings, lambda case, row: rows.append(row), timeout_s=config["timeout"])
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
    """What changed in the environment between the two runs (from their meta.json, when both have one)."""
    old, new = read_meta(baseline), read_meta(current)
    return [f"{key} differs: baseline {old[key]}, current {new[key]}" for key in ("torch", "cuda", "cpu", "gpus")
            if key in old and key in new and old[key] != new[key]]


def _write(path: Path, text: str, append: bool) -> None:
    try:
        with open(path, "a" if append else "w") as fh:
            fh.write(text)
    except OSError as exc:
        raise SparsebenchError(f"{path}: cannot write the summary ({exc.strerror})") from None


def _number(value: float, raw: bool) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.4g} ms" if raw else f"{value:.3f}"


def _cells(case: gate.CaseResult, raw: bool) -> list[str]:
    """Baseline, current, ratio, p-value and verdict of one case, as text."""
    return [_number(case.base_latency, raw), _number(case.cur_latency, raw),
            "-" if math.isnan(case.ratio) else f"{case.ratio:.2f}x",
            "-" if math.isnan(case.p_value) else f"{case.p_value:.2g}", case.verdict]


def _details(case: gate.CaseResult, raw: bool, short: bool) -> str:
    """Why a case is not plain ok: the metrics (short) or the messages of its findings."""
    if case.presence:
        return f"only in the {'current' if case.presence == gate.NEW else 'baseline'} results"
    found = [f for f in case.findings if f.verdict != gate.OK]
    if found:
        return ", ".join(dict.fromkeys(f.metric for f in found)) if short else "; ".join(f.message for f in found)
    if case.base_status != "ok":
        return f"status {case.base_status}"
    if not raw and (case.pattern, case.impl) == gate.DENSE_REF:
        return "dense reference"
    return ""


def _print(report: gate.GateReport) -> None:
    what = "latency (ms)" if report.raw else "latency / dense"
    table = Table(title=f"sparsebench gate: {what}", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("case", overflow="fold", ratio=3)
    for column in ("base", "current", "ratio", "p", "verdict"):
        table.add_column(column, no_wrap=True)
    table.add_column("why", overflow="fold", ratio=1)
    for case in report.cases:
        table.add_row(case.name, *_cells(case, report.raw), _details(case, report.raw, short=True),
                      style=_STYLE[case.verdict])
    # CI logs are no terminal (rich would assume 80 columns): give the table the width it needs there.
    (console if console.is_terminal else Console(stderr=True, width=200)).print(table)
    for note in report.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    for case in report.cases:  # one line per finding that matters, naming the case
        for verdict in (gate.REGRESSION, gate.WARNING, gate.IMPROVEMENT):
            for message in case.messages(verdict):
                line = f"{verdict.upper()} {case.name}: {message}"
                out = err_console if verdict == gate.REGRESSION else console
                out.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(_headline(report), markup=False, highlight=False, soft_wrap=True)


def _headline(report: gate.GateReport) -> str:
    counts = report.counts()
    text = ", ".join(f"{verdict}: {n}" for verdict, n in sorted(counts.items(), key=lambda kv: -gate.SEVERITY[kv[0]]))
    verdict = "FAIL" if report.failed else "PASS"
    line = f"gate {verdict}: {len(report.cases)} cases ({text}); " \
           f"{'raw' if report.raw else 'dense-normalised'} latency"
    if report.improvements:
        line += "; improvements found: refresh the baseline with --update-baseline"
    return line


def render_markdown(report: gate.GateReport, baseline: Path, current: Path) -> str:
    """The --summary report: headline, then a table of every case (regressions first)."""
    what = "latency ms" if report.raw else "latency / dense"
    lines = [f"## sparsebench gate: {'❌ regression' if report.failed else '✅ no regression'}", "",
             f"`{current}` against `{baseline}`. {_headline(report)}.", ""]
    lines += [f"> note: {note}\n" for note in report.notes]
    lines += [f"| case | baseline ({what}) | current | ratio | p | verdict | details |",
              "|---|---|---|---|---|---|---|"]
    cases = sorted(report.cases, key=lambda c: -gate.SEVERITY[c.verdict])
    for case in cases:
        cells = [f"`{case.name}`", *_cells(case, report.raw), _details(case, report.raw, short=False)]
        if case.verdict == gate.REGRESSION:
            cells[5] = f"**{cells[5]}**"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n\n"
