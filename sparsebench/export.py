"""Results and gate verdicts in the formats CI tools read (pure: frames and reports in, text out).

- `github-action-benchmark`: the action's `customSmallerIsBetter` input, a JSON array of
  {name, unit, value, range, extra}, one entry per case and metric (latency, latency/dense, peak memory);
- `bencher`: Bencher Metric Format (BMF) JSON, {benchmark: {measure: {value, lower_value, upper_value}}},
  latency in nanoseconds (the unit of Bencher's built-in `latency` measure);
- `junit`: the gate's verdicts as JUnit XML, one test case per compared case, regressions as failures;
- `markdown`: the gate's summary, or a table of the results when there is nothing to compare.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sparsebench import gate
from sparsebench.errors import SparsebenchError
from sparsebench.gate_report import headline, render_markdown
from sparsebench.results import (
    benchmark_rows,
    complete_columns,
    is_dense_reference,
    key_text,
    latest,
    number,
    parse_samples,
    with_dense_reference,
)

FORMATS = ("markdown", "github-action-benchmark", "bencher", "junit")
METRIC_FORMATS = ("github-action-benchmark", "bencher")  # the measurements of one result set
REPORT_FORMATS = ("markdown", "junit")  # these show the gate's report when there is one
GATE_FORMATS = ("junit",)  # these list the gate's verdicts, so they need a baseline

# Bencher measure slugs: `latency` is built in (nanoseconds); the others are created on first upload.
BENCHER_LATENCY, BENCHER_RATIO, BENCHER_MEMORY, BENCHER_TFLOPS = (
    "latency", "latency-vs-dense", "peak-memory-mib", "useful-tflops")

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # not allowed anywhere in XML 1.0


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise SparsebenchError(f"unknown export format {fmt!r}; choose from: {', '.join(FORMATS)}")
    return fmt


def benchmark_name(row: dict[str, Any]) -> str:
    """A stable, unique name for a case, e.g. cpu/local(window=64)/flex/1024/float32/fwd/B1xH8xD64.

    Every key column is in it (KV heads only when they differ from heads, q_len only when it differs from the
    sequence), and it never depends on which other cases a run holds, so a tool's history stays keyed on it."""
    shape = f"B{key_text(row['batch'])}xH{key_text(row['heads'])}"
    kv, q_len = key_text(row.get("kv_heads")), key_text(row.get("q_len"))
    if kv and kv != key_text(row["heads"]):
        shape += f"xKV{kv}"
    shape += f"xD{key_text(row['head_dim'])}"
    name = f"{key_text(row['device'])}/{gate.case_name(row)}/{shape}"
    if q_len and q_len != key_text(row["seq_len"]):
        name += f"/q{q_len}"
    return name


def _rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The attention rows, one per case (the last written), with their dense reference columns filled."""
    frame = with_dense_reference(latest(complete_columns(frame.copy())))
    return benchmark_rows(frame).to_dict("records")


def _number(row: dict[str, Any], column: str) -> float | None:
    return number(row.get(column), finite=True)


def _quartiles(row: dict[str, Any], value: float) -> tuple[float, float] | None:
    """The 25th and 75th percentiles of the raw samples (ms), widened to hold `value` (the reported median)."""
    samples = parse_samples(row.get("samples_ms"))
    if len(samples) < 2:
        return None
    q1, q3 = (float(q) for q in np.percentile(samples, [25, 75]))
    return min(q1, value), max(q3, value)


def _is_reference(row: dict[str, Any]) -> bool:
    return is_dense_reference(row)


def _ok(row: dict[str, Any]) -> bool:
    return row["status"] == "ok" and (_number(row, "latency_ms") or 0) > 0


def has_metrics(frame: pd.DataFrame) -> bool:
    """Whether any case of `frame` ran ok, i.e. whether the metric formats have anything to say."""
    return any(map(_ok, _rows(frame)))


def github_action_benchmark(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """github-action-benchmark's customSmallerIsBetter entries: per ok case its latency (ms), its latency over
    the dense reference of its run and shape (the number to watch on shared runners) and its peak memory."""
    out: list[dict[str, Any]] = []
    for row in filter(_ok, _rows(frame)):
        name, ms = benchmark_name(row), float(row["latency_ms"])
        iqr, dense = _number(row, "latency_iqr_ms"), _number(row, "dense_latency_ms")
        extra = [f"median of {key_text(row.get('n_samples')) or '?'} calls"]
        if iqr is not None:
            extra.append(f"IQR {iqr:.4g} ms")
        for column, label, unit in (("speedup_vs_dense", "speed-up vs dense SDPA", "x"),
                                    ("tflops_useful", "useful TFLOP/s", ""), ("density", "density", "")):
            value = _number(row, column)
            if value is not None:
                extra.append(f"{label}: {value:.4g}{unit}")
        extra += [f"{label}: {row[column]}" for column, label in (("device_name", "device"), ("run_id", "run"))
                  if isinstance(row.get(column), str) and row[column]]
        entry: dict[str, Any] = {"name": f"{name} latency", "unit": "ms", "value": ms}
        if iqr is not None:
            entry["range"] = f"± {iqr / 2:.4g}"
        entry["extra"] = "\n".join(extra)
        out.append(entry)
        if dense and not _is_reference(row):
            ratio: dict[str, Any] = {"name": f"{name} latency/dense", "unit": "x dense SDPA", "value": ms / dense}
            if iqr is not None:
                ratio["range"] = f"± {iqr / 2 / dense:.4g}"
            ratio["extra"] = f"latency over the dense SDPA latency of the same run and shape ({dense:.4g} ms)"
            out.append(ratio)
        mib = _number(row, "peak_mem_mib")
        if mib is not None:
            out.append({"name": f"{name} peak memory", "unit": "MiB", "value": mib,
                        "extra": "extra memory at the peak of one call, above the inputs"})
    return out


def bencher(frame: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """Bencher Metric Format: per ok case, latency in ns with the samples' quartiles as lower and upper values,
    latency over dense (same bounds, divided), peak memory in MiB and useful TFLOP/s."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in filter(_ok, _rows(frame)):
        ms = float(row["latency_ms"])
        bounds = _quartiles(row, ms)
        measures: dict[str, dict[str, float]] = {BENCHER_LATENCY: _metric(ms, bounds, 1e6)}
        dense = _number(row, "dense_latency_ms")
        if dense and not _is_reference(row):
            measures[BENCHER_RATIO] = _metric(ms, bounds, 1 / dense)
        for column, slug in (("peak_mem_mib", BENCHER_MEMORY), ("tflops_useful", BENCHER_TFLOPS)):
            value = _number(row, column)
            if value is not None:
                measures[slug] = {"value": value}
        out[benchmark_name(row)] = measures
    return out


def _metric(value: float, bounds: tuple[float, float] | None, scale: float) -> dict[str, float]:
    metric = {"value": value * scale}
    if bounds is not None:
        metric["lower_value"], metric["upper_value"] = bounds[0] * scale, bounds[1] * scale
    return metric


def junit(report: gate.GateReport, baseline: str, current: str, timestamp: str | None = None) -> str:
    """JUnit XML (the Surefire/Jenkins junit-10 schema): one test case per case of the report; a regression is a
    failure, a case in one result set only or measured in neither is skipped, the rest pass; every test case's
    system-out gives the latency comparison and any warning."""
    cases = report.cases
    failures = sum(report.fails(c) for c in cases)
    skipped = sum(_skip_reason(c) is not None and not report.fails(c) for c in cases)
    counts = {"tests": str(len(cases)), "failures": str(failures), "errors": "0"}
    root = ET.Element("testsuites", {"name": "sparsebench gate", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": f"sparsebench gate: {current} against {baseline}", **counts,
                                              "skipped": str(skipped)})
    if timestamp:
        suite.set("timestamp", timestamp)
    props = ET.SubElement(suite, "properties")
    limits = report.thresholds.default
    for name, value in (("baseline", baseline), ("current", current),
                        ("latency", report.latency_kind
                         + ("" if report.gate_latency else ", not gated")),
                        ("threshold", "by device" if limits.latency is None else f"{limits.latency:g}"),
                        ("alpha", f"{report.thresholds.alpha:g}")):
        ET.SubElement(props, "property", {"name": name, "value": _xml_text(value)})
    for case in cases:
        pattern = re.sub(r"[^\w-]+", "_", case.pattern)  # dots would read as a package hierarchy
        element = ET.SubElement(suite, "testcase", {"name": _xml_text(case.name),
                                                    "classname": f"sparsebench.gate.{pattern}"})
        regressions = case.messages(gate.REGRESSION)
        if regressions:
            failure = ET.SubElement(element, "failure", {"type": "regression", "message": _xml_text(regressions[0])})
            failure.text = _xml_text("\n".join(regressions))
        elif report.fails(case):  # missing, under --fail-missing
            ET.SubElement(element, "failure", {"type": "missing", "message": "only in the baseline results "
                                                                             "(--fail-missing)"})
        elif (why := _skip_reason(case)) is not None:
            ET.SubElement(element, "skipped", {"message": _xml_text(why)})
        ET.SubElement(element, "system-out").text = _xml_text(_case_text(case, report.raw))
    ET.SubElement(suite, "system-out").text = _xml_text("\n".join([headline(report), *report.notes]))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _skip_reason(case: gate.CaseResult) -> str | None:
    if case.presence:
        return f"only in the {'current' if case.presence == gate.NEW else 'baseline'} results"
    if case.base_status != "ok" and case.cur_status != "ok":
        return f"not measured: status {case.base_status} -> {case.cur_status}"
    return None


def _case_text(case: gate.CaseResult, raw: bool) -> str:
    what = "latency (ms)" if raw else "latency/dense"
    lines = [f"verdict: {case.verdict}", f"status: {case.base_status or '-'} -> {case.cur_status or '-'}"]
    if not math.isnan(case.ratio):
        p = "" if math.isnan(case.p_value) else f", p={case.p_value:.2g}"
        lines.append(f"{what}: {case.base_latency:.4g} -> {case.cur_latency:.4g} ({case.ratio:.3f}x{p})")
    lines += [f"{f.verdict}: {f.message}" for f in case.findings if f.verdict != gate.REGRESSION]
    return "\n".join(lines)


def _xml_text(text: str) -> str:
    return _XML_INVALID.sub("?", str(text))


def results_markdown(frame: pd.DataFrame, source: str) -> str:
    """Every case of one result set as a markdown table (the markdown export when there is no baseline)."""
    rows = _rows(frame)
    statuses = pd.Series([r["status"] for r in rows]).value_counts()
    lines = [f"## sparsebench results: `{source}`", "",
             f"{len(rows)} cases ({', '.join(f'{s}: {n}' for s, n in statuses.items())}).", "",
             "| case | status | latency (ms) | IQR (ms) | speed-up vs dense SDPA | peak memory (MiB) | useful TFLOP/s "
             "|",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [f"`{benchmark_name(row)}`", str(row["status"])]
        cells += [_cell(row, c, "{:.4g}") for c in ("latency_ms", "latency_iqr_ms")]
        cells += [_cell(row, "speedup_vs_dense", "{:.3g}×"), _cell(row, "peak_mem_mib", "{:.1f}"),
                  _cell(row, "tflops_useful", "{:.3g}")]
        if row["status"] != "ok" and isinstance(row.get("error"), str) and row["error"]:
            cells[1] += f" ({row['error'].splitlines()[0]})"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(row: dict[str, Any], column: str, fmt: str) -> str:
    value = _number(row, column)
    return "-" if value is None else fmt.format(value)


def render(fmt: str, frame: pd.DataFrame, current: Path, report: gate.GateReport | None = None,
           baseline: Path | None = None, meta: dict[str, Any] | None = None) -> str:
    """The text of one export of the results `frame` (read from `current`); junit needs the gate `report` of
    `current` against `baseline`, markdown uses it when given."""
    check_format(fmt)
    if fmt == "github-action-benchmark":
        return json.dumps(github_action_benchmark(frame), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    if fmt == "bencher":
        return json.dumps(bencher(frame), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    if report is None or baseline is None:
        if fmt in GATE_FORMATS:
            raise SparsebenchError(f"{fmt} lists the gate's verdicts: give --baseline BASELINE (or run "
                                   f"`sparsebench gate BASELINE CURRENT --export {fmt}`)")
        return results_markdown(frame, str(current))
    if fmt == "junit":
        date = (meta or {}).get("date")
        return junit(report, str(baseline), str(current), date if isinstance(date, str) else None)
    return render_markdown(report, baseline, current)
