"""`sparsebench export` and `gate --export`: each format checked against its tool's published schema or sample."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from gate_data import CASES, FLEX, MACHINE, SEQ_LENS, make_rows, write_run
from typer.testing import CliRunner

from sparsebench import export, gate
from sparsebench.cli import app
from sparsebench.results import read_results, with_dense_reference

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

# github-action-benchmark, `tool: customSmallerIsBetter`: the README's "Examples" section
# (https://github.com/benchmark-action/github-action-benchmark#examples) documents the input as a JSON array of
# objects with `name`, `unit` and `value`, and optional `range` and `extra`; src/extract.ts reads exactly these
# fields (interface BenchmarkResult { name: string; value: number; range?: string; unit: string; extra?: string }).
# This is the README's own sample:
GAB_SAMPLE = [
    {"name": "My Custom Smaller Is Better Benchmark - CPU Load", "unit": "Percent", "value": 50},
    {"name": "My Custom Smaller Is Better Benchmark - Memory Used", "unit": "Megabytes", "value": 100,
     "range": "3", "extra": "Value for Tooltip: 25\nOptional Num #2: 100\nAnything Else!"},
]
GAB_SCHEMA = {  # the same, as a JSON Schema
    "type": "array",
    "items": {"type": "object", "required": ["name", "unit", "value"], "additionalProperties": False,
              "properties": {"name": {"type": "string"}, "unit": {"type": "string"}, "value": {"type": "number"},
                             "range": {"type": "string"}, "extra": {"type": "string"}}},
}

# Bencher Metric Format: the JSON Schema published at https://bencher.dev/bmf.json (linked from
# https://bencher.dev/docs/reference/bencher-metric-format/), and the sample on that page.
BMF_SCHEMA = {
    "$id": "https://bencher.dev/bmf.json",
    "$schema": "http://json-schema.org/draft-07/schema",
    "type": "object",
    "patternProperties": {".+": {
        "type": "object",
        "patternProperties": {".+": {
            "type": "object",
            "properties": {"value": {"type": "number"}, "lower_value": {"type": "number"},
                           "upper_value": {"type": "number"}},
            "required": ["value"],
        }},
    }},
}
BMF_SAMPLE = {
    "benchmark_name": {"latency": {"value": 88.0, "lower_value": 87.42, "upper_value": 88.88},
                       "throughput": {"value": 5.55, "lower_value": 3.14, "upper_value": 6.30}},
    "/bin/sh -c ./my_build_script.sh": {"build-time": {"value": 87.0}},
    "my_binary": {"file-size": {"value": 42.0}},
}

# JUnit XML: the Surefire/Jenkins schema junit-10.xsd (jenkinsci/xunit-plugin,
# src/main/resources/org/jenkinsci/plugins/xunit/types/model/xsd/junit-10.xsd), the format Jenkins, GitLab and the
# GitHub test-report actions read. Per element: the children it may hold, its required and its optional attributes.
JUNIT_XSD = {
    "testsuites": ({"testsuite"}, set(), {"name", "time", "tests", "failures", "errors"}),
    "testsuite": ({"testsuite", "properties", "testcase", "system-out", "system-err"},
                  {"name", "tests", "failures", "errors"},
                  {"group", "time", "skipped", "timestamp", "hostname", "id", "package", "file", "log", "url"}),
    "properties": ({"property"}, set(), set()),
    "property": (set(), {"name", "value"}, set()),
    "testcase": ({"skipped", "error", "failure", "rerunFailure", "rerunError", "flakyFailure", "flakyError",
                  "system-out", "system-err"}, {"name"}, {"time", "classname", "group"}),
    "failure": (set(), set(), {"type", "message"}),
    "error": (set(), set(), {"type", "message"}),
    "skipped": (set(), set(), {"type", "message"}),
    "system-out": (set(), set(), set()),
    "system-err": (set(), set(), set()),
}
SUREFIRE_TIME = re.compile(r"(([0-9]{0,3},)*[0-9]{3}|[0-9]{0,3})*(\.[0-9]*)?")  # the xsd's type of time attributes


def validate_json(value: Any, schema: dict[str, Any], where: str = "$") -> None:
    """The JSON Schema keywords the schemas above use: type, properties, patternProperties, required,
    additionalProperties (false) and items."""
    types = {"object": dict, "array": list, "string": str, "number": (int, float)}
    kind = schema.get("type")
    if kind:
        assert isinstance(value, types[kind]) and not isinstance(value, bool), f"{where}: not a {kind}: {value!r}"
        if kind == "number":
            assert math.isfinite(value), f"{where}: {value} (JSON has no NaN or infinity)"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: {key} missing"
        for key, item in value.items():
            matched = False
            if key in schema.get("properties", {}):
                validate_json(item, schema["properties"][key], f"{where}.{key}")
                matched = True
            for pattern, sub in schema.get("patternProperties", {}).items():
                if re.search(pattern, key):
                    validate_json(item, sub, f"{where}[{key!r}]")
                    matched = True
            assert matched or schema.get("additionalProperties", True), f"{where}: unexpected {key}"
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            validate_json(item, schema["items"], f"{where}[{i}]")


def validate_junit(text: str) -> ET.Element:
    """Parse with the standard library and check every element against junit-10.xsd's rules."""
    root = ET.fromstring(text.encode())
    assert root.tag in ("testsuites", "testsuite")
    for element in root.iter():
        assert element.tag in JUNIT_XSD, f"element {element.tag} is not in junit-10.xsd"
        children, required, optional = JUNIT_XSD[element.tag]
        assert {c.tag for c in element} <= children, f"{element.tag} holds {[c.tag for c in element]}"
        assert required <= set(element.attrib), f"{element.tag} lacks {required - set(element.attrib)}"
        assert set(element.attrib) <= required | optional, f"{element.tag}: {set(element.attrib)}"
        if "time" in element.attrib:
            assert SUREFIRE_TIME.fullmatch(element.attrib["time"])
    return root


def test_validators_accept_the_published_samples() -> None:
    validate_json(GAB_SAMPLE, GAB_SCHEMA)
    validate_json(BMF_SAMPLE, BMF_SCHEMA)
    with pytest.raises(AssertionError):
        validate_json([{"name": "x", "unit": "ms", "value": "1"}], GAB_SCHEMA)  # value must be a number
    with pytest.raises(AssertionError):
        validate_json({"b": {"latency": {"lower_value": 1.0}}}, BMF_SCHEMA)  # value is required
    with pytest.raises(AssertionError):
        validate_junit('<testsuites><testsuite name="s" tests="1" failures="0" errors="0"><testcase name="c">'
                       '<failed/></testcase></testsuite></testsuites>')


def runs(tmp_path: Path, current: list[dict] | None = None, cur_meta: dict | None = None) -> tuple[Path, Path]:
    base = write_run(tmp_path / "base", make_rows(1), {**MACHINE, "date": "2025-01-01T00:00:00+00:00"})
    cur = write_run(tmp_path / "cur", current if current is not None else make_rows(2, slow={FLEX: 2.0}),
                    cur_meta if cur_meta is not None else {**MACHINE, "date": "2025-01-02T00:00:00+00:00"})
    return base, cur


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_github_action_benchmark_entries(tmp_path: Path) -> None:
    _, cur = runs(tmp_path)
    result = invoke("export", cur.parent, "--format", "github-action-benchmark")
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)
    validate_json(entries, GAB_SCHEMA)
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names))
    frame = read_results(cur)
    by_name = {e["name"]: e for e in entries}
    for row in frame.to_dict("records"):
        name = export.benchmark_name(row)
        latency = by_name[f"{name} latency"]
        assert latency["unit"] == "ms" and latency["value"] == pytest.approx(row["latency_ms"])
        assert latency["range"] == f"± {row['latency_iqr_ms'] / 2:.4g}" and "median of 15 calls" in latency["extra"]
        assert by_name[f"{name} peak memory"]["value"] == pytest.approx(row["peak_mem_mib"])
        if row["pattern"] == "dense":
            assert f"{name} latency/dense" not in by_name  # always 1: nothing to watch
        else:
            dense = frame[(frame["pattern"] == "dense") & (frame["seq_len"] == row["seq_len"])]["latency_ms"].iloc[0]
            assert by_name[f"{name} latency/dense"]["value"] == pytest.approx(row["latency_ms"] / dense)
    assert len(entries) == len(CASES) * len(SEQ_LENS) * 3 - len(SEQ_LENS)


def test_names_are_stable_and_unique() -> None:
    row = make_rows(1)[1]
    assert export.benchmark_name(row) == "cpu/local(window=64)/flex/1024/float32/fwd/B1xH8xD64"
    gqa = {**row, "kv_heads": 2, "mode": "decode", "q_len": 1}
    assert export.benchmark_name(gqa) == "cpu/local(window=64)/flex/1024/float32/decode/B1xH8xKV2xD64/q1"


def test_bencher_metric_format(tmp_path: Path) -> None:
    _, cur = runs(tmp_path)
    out = tmp_path / "bmf.json"
    result = invoke("export", cur, "--format", "bencher", "--out", out)
    assert result.exit_code == 0 and result.stdout == "", result.output
    bmf = json.loads(out.read_text())
    validate_json(bmf, BMF_SCHEMA)
    frame = with_dense_reference(read_results(cur))  # the dense columns, as a reader computes them
    assert set(bmf) == {export.benchmark_name(r) for r in frame.to_dict("records")}
    flex = bmf["cpu/local(window=64)/flex/1024/float32/fwd/B1xH8xD64"]
    row = frame[(frame["impl"] == "flex") & (frame["seq_len"] == 1024)].iloc[0]
    latency = flex["latency"]  # Bencher's built-in latency measure is in nanoseconds
    assert latency["value"] == pytest.approx(row["latency_ms"] * 1e6)
    assert latency["lower_value"] <= latency["value"] <= latency["upper_value"]
    assert latency["lower_value"] > min(map(float, row["samples_ms"].split())) * 1e6  # quartiles, not the extremes
    assert flex["latency-vs-dense"]["value"] == pytest.approx(row["latency_ms"] / row["dense_latency_ms"])
    assert flex["peak-memory-mib"] == {"value": pytest.approx(row["peak_mem_mib"])}
    assert flex["useful-tflops"]["value"] == pytest.approx(row["flops_useful"] / (row["latency_ms"] * 1e-3) / 1e12)
    assert all(len(slug) <= 64 for measures in bmf.values() for slug in measures)  # Bencher's slug limit


def test_failed_cases_are_left_out_of_the_metrics(tmp_path: Path) -> None:
    current = make_rows(2, change={FLEX: {"status": "oom", "error": "out of memory", "latency_ms": None,
                                          "samples_ms": "", "peak_mem_mib": None, "latency_iqr_ms": None}})
    _, cur = runs(tmp_path, current)
    bmf = json.loads(invoke("export", cur, "--format", "bencher").stdout)
    validate_json(bmf, BMF_SCHEMA)
    assert "cpu/local(window=64)/flex/1024/float32/fwd/B1xH8xD64" not in bmf and len(bmf) == 7
    table = invoke("export", cur).stdout
    assert "| `cpu/local(window=64)/flex/1024/float32/fwd/B1xH8xD64` | oom (out of memory) | - |" in table


def junit_of(tmp_path: Path, current: list[dict]) -> tuple[ET.Element, str]:
    base, cur = runs(tmp_path, current)
    out = tmp_path / "gate.xml"
    result = invoke("gate", base, cur, "--confirm", "0", "--export", "junit", "--export-out", out)
    return validate_junit(out.read_text()), result


def test_junit_lists_every_case_with_regressions_as_failures(tmp_path: Path) -> None:
    current = [r for r in make_rows(2, slow={FLEX: 2.0}) if not (r["impl"] == "structured" and r["seq_len"] == 2048
                                                                 and r["pattern"] == "strided")]
    current.append({**current[1], "impl": "eager"})  # a case the baseline does not have
    root, result = junit_of(tmp_path, current)
    assert result.exit_code == 1, result.output
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    names = [c.get("name") for c in cases]
    assert len(names) == len(set(names)) == len(CASES) * len(SEQ_LENS) + 1
    assert "local(window=64)/eager/1024/float32/fwd" in names
    failed = {c.get("name"): c.find("failure") for c in cases if c.find("failure") is not None}
    assert list(failed) == [FLEX]
    assert failed[FLEX].get("type") == "regression" and "latency/dense 1." in failed[FLEX].get("message")
    skipped = {c.get("name"): c.find("skipped").get("message") for c in cases if c.find("skipped") is not None}
    assert skipped == {"strided(stride=8)/structured/2048/float32/fwd": "only in the baseline results",
                       "local(window=64)/eager/1024/float32/fwd": "only in the current results"}
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == (
        str(len(cases)), "1", "0", "2")
    assert (root.get("tests"), root.get("failures")) == (str(len(cases)), "1")
    assert suite.get("timestamp") == "2025-01-02T00:00:00+00:00"
    assert "gate FAIL" in suite.find("system-out").text


def test_junit_passes_warnings_and_survives_control_characters(tmp_path: Path) -> None:
    current = make_rows(2, change={FLEX: {"status": "skipped", "error": "too big \x1b[31m\x00 for memory",
                                          "latency_ms": None, "samples_ms": ""}})
    root, result = junit_of(tmp_path, current)
    assert result.exit_code == 0, result.output
    flex = next(c for c in root.iter("testcase") if c.get("name") == FLEX)
    assert flex.find("failure") is None and flex.find("skipped") is None
    assert "warning: status ok -> skipped (too big ?[31m? for memory)" in flex.find("system-out").text


def test_export_with_baseline_matches_gate(tmp_path: Path) -> None:
    base, cur = runs(tmp_path)
    summary = tmp_path / "gate.md"
    gated = invoke("gate", base, cur, "--confirm", "0", "--summary", summary)
    assert gated.exit_code == 1
    exported = invoke("export", cur, "--baseline", base)
    assert exported.exit_code == 0 and exported.stdout == summary.read_text()
    xml = invoke("export", cur, "--baseline", base, "--format", "junit")
    assert xml.exit_code == 0 and validate_junit(xml.stdout).find("testsuite").get("failures") == "1"


def test_gate_export_to_stdout_keeps_stdout_for_data(tmp_path: Path) -> None:
    base, cur = runs(tmp_path)
    result = invoke("gate", base, cur, "--confirm", "0", "--export", "github-action-benchmark")
    assert result.exit_code == 1
    validate_json(json.loads(result.stdout), GAB_SCHEMA)  # the report went to stderr
    assert "gate FAIL" in result.stderr


def test_other_machine_in_junit(tmp_path: Path) -> None:
    base, cur = runs(tmp_path, cur_meta={**MACHINE, "cpu_count": 4, "date": "2025-01-02T00:00:00+00:00"})
    result = invoke("export", cur, "--baseline", base, "--format", "junit")
    suite = validate_junit(result.stdout).find("testsuite")
    assert suite.get("failures") == "0" and "baseline from another machine (cores 2 vs 4)" in \
        suite.find("system-out").text


def test_committed_baseline_exports_in_every_format(tmp_path: Path) -> None:
    """A real result file (the CI baseline), not a synthetic one."""
    baseline = ROOT / "baselines" / "ci-cpu"
    frame = read_results(baseline / "results.csv")
    ok = frame[frame["status"] == "ok"]
    entries = json.loads(invoke("export", baseline, "--format", "github-action-benchmark").stdout)
    validate_json(entries, GAB_SCHEMA)
    assert len([e for e in entries if e["name"].endswith(" latency")]) == len(ok)
    bmf = json.loads(invoke("export", baseline, "--format", "bencher").stdout)
    validate_json(bmf, BMF_SCHEMA)
    assert len(bmf) == len(ok)
    xml = invoke("export", baseline, "--baseline", baseline, "--format", "junit").stdout
    assert len(validate_junit(xml).findall("testsuite/testcase")) == len(frame)
    assert invoke("export", baseline).stdout.count("\n| `cpu/") == len(frame)


def test_markdown_table_without_baseline(tmp_path: Path) -> None:
    _, cur = runs(tmp_path)
    text = invoke("export", cur).stdout
    assert text.startswith(f"## sparsebench results: `{cur}`") and "8 cases (ok: 8)" in text
    assert text.count("\n| `cpu/") == 8


def one_line(result, code: int, *words: str) -> None:
    assert result.exit_code == code, result.output
    assert result.stderr.count("\n") == 1 and result.stdout == "", result.output
    for word in words:
        assert word in result.stderr, result.stderr


def test_bad_inputs_one_line(tmp_path: Path) -> None:
    base, cur = runs(tmp_path)
    one_line(invoke("export", cur, "--format", "csv"), 2, "unknown export format 'csv'", "bencher", "junit")
    one_line(invoke("gate", base, cur, "--export", "xml"), 2, "unknown export format 'xml'")
    one_line(invoke("gate", base, cur, "--export-out", tmp_path / "x.json"), 2, "--export-out needs --export")
    one_line(invoke("export", cur, "--format", "junit"), 2, "--baseline")
    (tmp_path / "empty").mkdir()
    one_line(invoke("export", tmp_path / "empty"), 2, "no results.csv")
    one_line(invoke("export", tmp_path / "nowhere"), 2, "no such file")
    header = tmp_path / "header" / "results.csv"
    write_run(header.parent, [])
    one_line(invoke("export", header.parent, "--format", "bencher"), 2, "no result rows")
    one_line(invoke("export", cur, "--out", tmp_path / "base" / "results.csv" / "x"), 2, "is not a directory")
    failed = write_run(tmp_path / "failed", [dict(r, status="error", error="boom", latency_ms=None, samples_ms="")
                                             for r in make_rows(1)]).parent
    one_line(invoke("export", failed, "--format", "github-action-benchmark"), 2, "no ok case to export")
    assert invoke("export", failed).exit_code == 0  # the markdown table shows the errors


def test_json_formats_export_results_alone(tmp_path: Path) -> None:
    """--baseline is for the gate's formats: a baseline from another device does not stop a metrics export."""
    _, cur = runs(tmp_path)
    cuda = write_run(tmp_path / "cuda", make_rows(1, device="cuda"), {}).parent
    result = invoke("export", cur, "--baseline", cuda, "--format", "bencher")
    assert result.exit_code == 0 and json.loads(result.stdout)
    one_line(invoke("export", cur, "--baseline", cuda, "--format", "junit"), 3, "different devices")


def test_newer_schema_one_line(tmp_path: Path) -> None:
    base, _ = runs(tmp_path)
    newer = tmp_path / "newer" / "results.csv"
    newer.parent.mkdir()
    pd.DataFrame([dict(r, schema_version=3) for r in make_rows(1)]).to_csv(newer, index=False)
    one_line(invoke("export", newer), 2, "schema version 3")  # nothing to compare: a bad input
    one_line(invoke("export", newer, "--baseline", base), 3, "schema version 3")  # as gate says it
    one_line(invoke("gate", base, newer, "--export", "junit"), 3, "schema version 3")


def test_junit_needs_a_report() -> None:
    frame = pd.DataFrame(make_rows(1))
    with pytest.raises(Exception, match="--baseline"):
        export.render("junit", frame, Path("r.csv"))
    report = gate.compare(frame, frame)
    validate_junit(export.render("junit", frame, Path("r.csv"), report, Path("b.csv")))
