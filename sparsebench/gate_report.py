"""How a gate report reads: a rich table, one line per finding, a headline and the markdown summary."""

from __future__ import annotations

import math
from pathlib import Path

from rich import box
from rich.table import Table
from rich.text import Text

from sparsebench import gate
from sparsebench.results import KEY_COLUMNS, is_dense_reference

STYLE = {gate.REGRESSION: "bold red", gate.WARNING: "yellow", gate.IMPROVEMENT: "green",
         gate.OK: "", gate.MISSING: "dim", gate.NEW: "dim"}


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
    if not raw and is_dense_reference(dict(zip(KEY_COLUMNS, case.key))):
        return "dense reference"
    return ""


def rich_table(report: gate.GateReport) -> Table:
    """Every case: baseline and current latency, ratio, p-value, verdict and why, coloured by verdict."""
    what = "latency (ms)" if report.raw else {"shape": "latency / dense / shape shift",
                                               "sdpa": "latency / SDPA of the round"}.get(report.normalise,
                                                                                        "latency / dense")
    table = Table(title=f"sparsebench gate: {what}", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("case", overflow="fold", ratio=3)
    for column in ("base", "current", "ratio", "p", "verdict"):
        table.add_column(column, no_wrap=True)
    table.add_column("why", overflow="fold", ratio=1)
    for case in report.cases:
        table.add_row(Text(case.name), *_cells(case, report.raw), Text(_details(case, report.raw, short=True)),
                      style=STYLE[case.verdict])  # Text: names are user text, never markup
    return table


def finding_lines(report: gate.GateReport) -> list[tuple[str, str]]:
    """(verdict, line): one line per finding that matters, naming the case, regressions first per case."""
    return [(verdict, f"{verdict.upper()} {case.name}: {message}") for case in report.cases
            for verdict in (gate.REGRESSION, gate.WARNING, gate.IMPROVEMENT) for message in case.messages(verdict)]


def headline(report: gate.GateReport) -> str:
    counts = report.counts()
    text = ", ".join(f"{verdict}: {n}" for verdict, n in sorted(counts.items(), key=lambda kv: -gate.SEVERITY[kv[0]]))
    verdict = "FAIL" if report.failed else "PASS"
    line = f"gate {verdict}: {len(report.cases)} cases ({text}); " \
           f"{report.latency_kind} latency"
    if report.fail_missing and report.missing:
        line += f"; {len(report.missing)} baseline case(s) not measured (--fail-missing)"
    if report.improvements and report.baseline_hint:
        line += "; improvements found: refresh the baseline with --update-baseline"
    return line


def render_markdown(report: gate.GateReport, baseline: Path, current: Path) -> str:
    """The --summary report: headline, then a table of every case (regressions first)."""
    what = "latency ms" if report.raw else "latency / dense"
    verdict = "❌ regression" if report.regressions else "❌ baseline cases missing" if report.failed \
        else "✅ no regression"
    lines = [f"## sparsebench gate: {verdict}", "",
             f"`{current}` against `{baseline}`. {headline(report)}.", ""]
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
