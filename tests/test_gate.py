"""`sparsebench gate` on synthetic result sets with realistic noise (15 samples, ±5% jitter)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from gate_data import FLEX, make_rows
from typer.testing import CliRunner

from sparsebench import gate
from sparsebench.cli import app
from sparsebench.results import ResultWriter, format_samples
from sparsebench.runner.cases import Case


def write(path: Path, rows: list[dict]) -> Path:
    with ResultWriter(path) as writer:
        for row in rows:
            writer.write(row)
    return path


def gate_run(tmp_path: Path, baseline: list[dict], current: list[dict], *args: str, env: dict | None = None):
    base = write(tmp_path / "base" / "results.csv", baseline)
    cur = write(tmp_path / "cur" / "results.csv", current)
    confirm = [] if "--confirm" in args else ["--confirm", "0"]  # synthetic rows: nothing to re-run
    threshold = [] if "--threshold" in args or "--thresholds" in args else ["--threshold", "1.15"]
    result = CliRunner().invoke(app, ["gate", str(base), str(cur), *confirm, *threshold, *args], env=env)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_identical_pair_passes(tmp_path: Path) -> None:
    rows = make_rows(0)
    result = gate_run(tmp_path, rows, rows)
    assert result.exit_code == 0, result.output
    assert FLEX in result.output and "gate PASS" in result.output


def test_independent_noisy_runs_pass(tmp_path: Path) -> None:
    result = gate_run(tmp_path, make_rows(1), make_rows(2))
    assert result.exit_code == 0, result.output
    assert FLEX in result.output


def test_one_sparse_case_slower_fails(tmp_path: Path) -> None:
    result = gate_run(tmp_path, make_rows(1), make_rows(2, slow={FLEX: 1.5}))
    assert result.exit_code == 1, result.output
    assert re.search(rf"REGRESSION {re.escape(FLEX)}: latency/dense 1\.[45]\dx slower", result.output)
    assert "local(window=64)/flex/2048/float32/fwd:" not in result.output  # only the slowed case


def test_a_missing_case_is_listed_and_fails_only_with_fail_missing(tmp_path: Path) -> None:
    """A sweep may shrink: a baseline case without a current row is listed as missing; --fail-missing fails it."""
    current = [r for r in make_rows(2) if not (r["impl"] == "flex" and r["seq_len"] == 2048)]
    result = gate_run(tmp_path, make_rows(1), current)
    assert result.exit_code == 0 and "missing: 1" in result.output, result.output
    summary, junit = tmp_path / "gate.md", tmp_path / "gate.xml"
    result = gate_run(tmp_path, make_rows(1), current, "--fail-missing", "--summary", str(summary), "--export",
                      "junit", "--export-out", str(junit))
    assert result.exit_code == 1, result.output
    assert "gate FAIL" in result.output and "1 baseline case(s) not measured (--fail-missing)" in result.output
    assert summary.read_text().startswith("## sparsebench gate: ❌ baseline cases missing")
    assert 'failures="1"' in junit.read_text() and 'type="missing"' in junit.read_text()  # as the exit code says


def test_no_latency_gates_deterministic_metrics_only(tmp_path: Path) -> None:
    result = gate_run(tmp_path, make_rows(1), make_rows(2, slow={FLEX: 1.5}), "--no-latency")
    assert result.exit_code == 0, result.output
    assert f"WARNING {FLEX}: latency/dense" in result.output and "[latency not gated]" in result.output
    current = make_rows(2, slow={FLEX: 1.5}, change={FLEX: {"flops_executed": 1}})
    result = gate_run(tmp_path, make_rows(1), current, "--no-latency")
    assert result.exit_code == 1 and f"REGRESSION {FLEX}: flops_executed" in result.output, result.output


def test_uniformly_slower_machine_passes_normalised(tmp_path: Path) -> None:
    result = gate_run(tmp_path, make_rows(1), make_rows(2, scale=1.5))
    assert result.exit_code == 0, result.output
    assert FLEX in result.output


def test_uniformly_slower_machine_fails_raw(tmp_path: Path) -> None:
    result = gate_run(tmp_path, make_rows(1), make_rows(2, scale=1.5), "--raw")
    assert result.exit_code == 1, result.output
    assert "REGRESSION dense/sdpa/1024/float32/fwd: latency 1.5" in result.output


def test_more_memory_fails(tmp_path: Path) -> None:
    result = gate_run(tmp_path, make_rows(1), make_rows(1, change={FLEX: {"peak_mem_mib": 80.0 * 1.2}}),
                      "--mem-tolerance", "0.05")
    assert result.exit_code == 1, result.output
    assert f"REGRESSION {FLEX}: peak memory 80.0 -> 96.0 MiB (+20.0%" in result.output


@pytest.mark.parametrize("peak, code", [(80.0 * 1.04, 0), (80.0 * 1.1, 1)])
def test_cpu_memory_fails_at_5_percent_by_default(tmp_path: Path, peak: float, code: int) -> None:
    """CPU peak memory is the exact peak of live tensor bytes: gated at 5%, as CUDA's allocator peak."""
    result = gate_run(tmp_path, make_rows(1), make_rows(1, change={FLEX: {"peak_mem_mib": peak}}))
    assert result.exit_code == code, result.output


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("peak, code", [(10.9, 0), (13.0, 1)])
def test_memory_floor_is_1_mib(tmp_path: Path, device: str, peak: float, code: int) -> None:
    """+0.9 MiB (+9%) is under the 1 MiB floor; +3 MiB (+30%) is a regression, on CPU as on CUDA."""
    base = make_rows(1, device=device, change={FLEX: {"peak_mem_mib": 10.0}})
    cur = make_rows(1, device=device, change={FLEX: {"peak_mem_mib": peak}})
    result = gate_run(tmp_path, base, cur)
    assert result.exit_code == code, result.output
    assert (f"REGRESSION {FLEX}: peak memory" in result.output) == bool(code)


def test_cpu_rss_peak_memory_of_an_older_baseline_is_not_compared(tmp_path: Path) -> None:
    """A CPU baseline written before the exact tensor peak (no rss_peak_mib) holds RSS figures: its peak memory is
    not compared with the new figures (one note says so), and everything else is gated as before."""
    base = make_rows(1)
    for row in base:
        row["peak_mem_mib"] = row.pop("rss_peak_mib")  # what the old tracker measured
    cur = make_rows(1, change={FLEX: {"peak_mem_mib": 80.0 * 1.5}})
    result = gate_run(tmp_path, base, cur)
    assert result.exit_code == 0, result.output
    assert f"{FLEX}: peak memory" not in result.output
    assert result.output.count("RSS high-water mark") == 1, result.output
    changed = make_rows(1, change={FLEX: {"flops_executed": 1}})
    assert gate_run(tmp_path, base, changed).exit_code == 1


def test_changed_flops_fails(tmp_path: Path) -> None:
    result = gate_run(tmp_path, make_rows(1), make_rows(1, change={FLEX: {"flops_executed": 123}}))
    assert result.exit_code == 1, result.output
    assert f"REGRESSION {FLEX}: flops_executed changed" in result.output


def test_changed_density_fails(tmp_path: Path) -> None:
    result = gate_run(tmp_path, make_rows(1), make_rows(1, change={FLEX: {"density": 0.07}}))
    assert result.exit_code == 1, result.output
    assert f"REGRESSION {FLEX}: density changed" in result.output


def test_ok_to_oom_fails(tmp_path: Path) -> None:
    current = make_rows(1, change={FLEX: {"status": "oom", "error": "out of memory", "latency_ms": None,
                                          "samples_ms": ""}})
    result = gate_run(tmp_path, make_rows(1), current)
    assert result.exit_code == 1, result.output
    assert f"REGRESSION {FLEX}: status ok -> oom (out of memory)" in result.output


@pytest.mark.parametrize("normalise, code", [("shape", 0), ("dense", 1)])
def test_a_fast_dense_measurement_shared_by_the_shape_is_taken_out(tmp_path: Path, normalise: str, code: int):
    """The one dense reference measured 1.4x fast makes every case of its shape look 1.4x slower per dense:
    a shift the shape shares, not three regressions. Dense normalisation alone flags them all."""
    current = make_rows(2, slow={"dense/sdpa/1024/float32/fwd": 1 / 1.4})
    result = gate_run(tmp_path, make_rows(1), current, "--normalise", normalise)
    assert result.exit_code == code, result.output
    assert ("shape shifts taken out" in result.output) == (normalise == "shape")
    assert result.output.count("REGRESSION ") == (3 if code else 0)


def test_one_case_slower_than_the_rest_of_a_shifted_shape_fails(tmp_path: Path) -> None:
    current = make_rows(2, slow={"dense/sdpa/1024/float32/fwd": 1 / 1.2, FLEX: 1.4})
    result = gate_run(tmp_path, make_rows(1), current)
    assert result.exit_code == 1, result.output
    assert result.output.count("REGRESSION ") == 1 and f"REGRESSION {FLEX}: latency/dense 1." in result.output
    assert "shared shift of 1.2" in result.output


@pytest.mark.parametrize("device, code", [("cpu", 0), ("cuda", 1)])
def test_latency_threshold_depends_on_device(tmp_path: Path, device: str, code: int) -> None:
    """1.3x slower: within the CPU default (1.5x, shared VMs), a regression on CUDA (1.15x)."""
    base = write(tmp_path / "base" / "results.csv", make_rows(1, device=device))
    cur = write(tmp_path / "cur" / "results.csv", make_rows(2, device=device, slow={FLEX: 1.3}))
    result = CliRunner().invoke(app, ["gate", str(base), str(cur), "--confirm", "0"])
    assert result.exit_code == code, result.output
    assert (f"REGRESSION {FLEX}: latency/dense 1." in result.output) == bool(code)
    assert ("threshold 1.15x" in result.output) == bool(code)


def test_unknown_normalisation_gives_2(tmp_path: Path) -> None:
    result = gate_run(tmp_path, make_rows(1), make_rows(2), "--normalise", "median")
    assert result.exit_code == 2 and "unknown normalisation 'median'" in result.stderr


def test_improvement_reported_with_hint(tmp_path: Path) -> None:
    result = gate_run(tmp_path, make_rows(1), make_rows(2, slow={FLEX: 0.6}))
    assert result.exit_code == 0, result.output
    assert f"IMPROVEMENT {FLEX}: latency/dense 1.6" in result.output
    assert "--update-baseline" in result.output


@pytest.mark.parametrize("content", ["", "a,b\n1,2\n", "\x00\xff garbage \x01\n"])
def test_malformed_file_gives_2(tmp_path: Path, content: str) -> None:
    base = write(tmp_path / "base.csv", make_rows(1))
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    for args in ([str(base), str(bad)], [str(bad), str(base)], [str(base), str(tmp_path / "missing.csv")]):
        result = CliRunner().invoke(app, ["gate", *args])
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
        assert "bad.csv" in result.stderr or "missing.csv" in result.stderr


def test_cpu_vs_cuda_gives_3(tmp_path: Path) -> None:
    result = gate_run(tmp_path, make_rows(1), make_rows(1, device="cuda"))
    assert result.exit_code == 3, result.output
    assert "different devices" in result.stderr and "cpu" in result.stderr and "cuda" in result.stderr


def test_other_schema_version_gives_3(tmp_path: Path) -> None:
    current = [dict(row, schema_version=99) for row in make_rows(1)]
    base = write(tmp_path / "base.csv", make_rows(1))
    cur = tmp_path / "cur.csv"
    pd.DataFrame(current).to_csv(cur, index=False)
    result = CliRunner().invoke(app, ["gate", str(base), str(cur)])
    assert result.exit_code == 3, result.output
    assert "schema version 99" in result.stderr


def test_thresholds_file_overrides_per_impl(tmp_path: Path) -> None:
    toml = tmp_path / "gate.toml"
    toml.write_text("latency = 1.15\n[impl.flex]\nlatency = 1.6\n")
    result = gate_run(tmp_path, make_rows(1), make_rows(2, slow={FLEX: 1.5}), "--thresholds", str(toml))
    assert result.exit_code == 0, result.output
    toml.write_text("[pattern.local]\nlatency = 1.6\n[impl.flex]\nlatency = 1.2\n")  # impl wins over pattern
    result = gate_run(tmp_path, make_rows(1), make_rows(2, slow={FLEX: 1.5}), "--thresholds", str(toml))
    assert result.exit_code == 1 and FLEX in result.output, result.output


def test_example_thresholds_file_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).parents[1] / "configs" / "gate.toml"
    result = gate_run(tmp_path, make_rows(1), make_rows(1), "--thresholds", str(example))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("content", ["latency = [", "latncy = 1.2\n", "latency = 0.9\n", "[impl.flex]\nfoo = 1\n"])
def test_bad_thresholds_file_gives_2(tmp_path: Path, content: str) -> None:
    toml = tmp_path / "gate.toml"
    toml.write_text(content)
    result = gate_run(tmp_path, make_rows(1), make_rows(1), "--thresholds", str(toml))
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1


def test_slower_but_not_significant_only_warns() -> None:
    """Ratio beyond the threshold, but the samples overlap: noise, not a regression."""
    base, cur = make_rows(1), make_rows(1)
    for rows, samples in ((base, [1.0, 5.0, 1.1, 4.8, 1.2]), (cur, [1.3, 5.1, 1.4, 4.9, 1.5])):
        flex = next(r for r in rows if gate.case_name(r) == FLEX)
        flex.update(samples_ms=format_samples(samples), latency_ms=samples[2], dense_latency_ms=1.0)
    report = gate.compare(pd.DataFrame(base), pd.DataFrame(cur), gate.Thresholds(gate.Limits(latency=1.15)))
    case = next(c for c in report.cases if c.name == FLEX)
    assert case.ratio > 1.15 and case.p_value > 0.05
    assert case.verdict == gate.WARNING and not report.failed


def test_summary_and_github_step_summary(tmp_path: Path) -> None:
    step = tmp_path / "step.md"
    step.write_text("earlier step\n")
    summary = tmp_path / "gate.md"
    result = gate_run(tmp_path, make_rows(1), make_rows(2, slow={FLEX: 1.5}), "--summary", str(summary),
                      env={"GITHUB_STEP_SUMMARY": str(step)})
    assert result.exit_code == 1, result.output
    text = summary.read_text()
    assert "regression" in text and f"`{FLEX}`" in text and "| **regression** |" in text
    assert step.read_text() == "earlier step\n" + text


def test_update_baseline(tmp_path: Path) -> None:
    result = gate_run(tmp_path, make_rows(1), make_rows(2, slow={FLEX: 1.5}), "--update-baseline")
    assert result.exit_code == 0, result.output
    assert FLEX in result.output and "baseline updated" in result.output and "exit 0 all the same" in result.output
    assert (tmp_path / "base" / "results.csv").read_text() == (tmp_path / "cur" / "results.csv").read_text()
    fresh = tmp_path / "new" / "baseline.csv"  # a missing baseline is created
    result = CliRunner().invoke(app, ["gate", str(fresh), str(tmp_path / "cur" / "results.csv"), "--update-baseline"])
    assert result.exit_code == 0 and fresh.exists(), result.output


def test_update_baseline_directory_keeps_meta(tmp_path: Path) -> None:
    from sparsebench.results import read_meta, write_meta

    cur = write(tmp_path / "cur" / "results.csv", make_rows(2))
    write_meta(cur.with_name("meta.json"), {"torch": "9.9"})
    base = tmp_path / "baselines" / "ci-cpu" / "results.csv"
    result = CliRunner().invoke(app, ["gate", str(base), str(cur), "--update-baseline"])
    assert result.exit_code == 0, result.output
    assert read_meta(base)["torch"] == "9.9"


def test_environment_change_is_noted(tmp_path: Path) -> None:
    from sparsebench.results import write_meta

    base = write(tmp_path / "base" / "results.csv", make_rows(1))
    cur = write(tmp_path / "cur" / "results.csv", make_rows(2))
    write_meta(base.with_name("meta.json"), {"torch": "2.5.0"})
    write_meta(cur.with_name("meta.json"), {"torch": "2.6.0"})
    result = CliRunner().invoke(app, ["gate", str(base), str(cur)])
    assert result.exit_code == 0 and "torch differs: baseline 2.5.0, current 2.6.0" in result.output, result.output


def test_no_common_case_gives_3(tmp_path: Path) -> None:
    current = [dict(row, seq_len=row["seq_len"] * 4) for row in make_rows(1)]
    result = gate_run(tmp_path, make_rows(1), current)
    assert result.exit_code == 3, result.output


@pytest.mark.parametrize("reproduces, code", [(True, 1), (False, 0)])
def test_confirm_reruns_only_regressed_cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             reproduces: bool, code: int) -> None:
    asked: list[list[Case]] = []

    def rerun(cases: list[Case]) -> pd.DataFrame:
        asked.append(cases)
        rows = make_rows(10 + len(asked), slow={FLEX: 1.5} if reproduces else {})
        wanted = {(c.pattern, c.impl, c.seq_len) for c in cases}
        return pd.DataFrame([r for r in rows if (r["pattern"], r["impl"], r["seq_len"]) in wanted])

    monkeypatch.setattr("sparsebench.services.gate.rerunner", lambda current, *_: rerun)
    result = gate_run(tmp_path, make_rows(1), make_rows(2, slow={FLEX: 1.5}), "--confirm", "3")
    assert result.exit_code == code, result.output
    assert len(asked) == 3
    assert {(c.pattern, c.impl, c.seq_len) for c in asked[0]} == {("local", "flex", 1024), ("dense", "sdpa", 1024)}
    assert asked[0][-1].params == (("window", 64),) and asked[0][-1].head_dim == 64  # typed, not the CSV text
    assert f"{FLEX}: {'confirmed' if reproduces else 'not confirmed'}: regression reproduced in " \
           f"{3 if reproduces else 0}/3 re-runs" in result.output


def test_confirm_does_not_clear_a_regression_with_code_other_than_the_results_ran(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CURRENT measured a plugin whose code, as a re-run here would load it, is other code (edited back, or
    another checkout's): re-running cannot confirm or clear what CURRENT measured, so the regression stands, with
    a note; the same content elsewhere (a moved file) is the same code."""
    import json

    from sparsebench import plugins

    asked: list[list[Case]] = []

    def rerun(cases: list[Case]) -> pd.DataFrame:  # today's code: no slowdown
        asked.append(cases)
        wanted = {(c.pattern, c.impl, c.seq_len) for c in cases}
        rows = make_rows(20 + len(asked))
        return pd.DataFrame([r for r in rows if (r["pattern"], r["impl"], r["seq_len"]) in wanted])

    monkeypatch.setattr("sparsebench.services.gate.rerunner", lambda current, *_: rerun)
    plugin = tmp_path / "confirm_probe.py"
    plugin.write_text("def confirm_probe_fn(q, k, v, pattern):\n    return q\n")
    plugins.load_impl(f"{plugin}:confirm_probe_fn")  # what load_recorded gives the re-run
    loaded = plugins.origin_of("impls", "confirm_probe_fn")

    def gate_with(recorded_sha: str, where: str) -> object:
        (tmp_path / where / "cur").mkdir(parents=True)
        (tmp_path / where / "cur" / "meta.json").write_text(json.dumps({"schema_version": 2, "plugins": [
            {"kind": "impl", "name": "confirm_probe_fn", "spec": f"{plugin}:confirm_probe_fn",
             "file": f"/elsewhere/{plugin.name}", "sha256": recorded_sha}]}))
        return gate_run(tmp_path / where, make_rows(1), make_rows(2, slow={FLEX: 1.5}), "--confirm", "3")

    result = gate_with("0" * 16, "edited")
    assert result.exit_code == 1 and not asked, result.output
    assert "--confirm did not re-run the cases" in result.output and "is not the code measured" in result.output
    result = gate_with(loaded["sha256"], "moved")  # the content measured, another path: re-run as usual
    assert len(asked) == 3 and "did not re-run" not in result.output and result.exit_code == 0


@pytest.mark.slow
def test_confirm_runner_measures_real_cases(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The --confirm hook runs cases through sparsebench.runner with the current run's timing settings."""
    from sparsebench.cli.output import RerunProgress
    from sparsebench.results import read_meta, write_meta
    from sparsebench.services.gate import rerunner

    write_meta(tmp_path / "meta.json", {"config": {"min_run_time": 0.05, "min_samples": 5, "warmup": 1}})
    shape = {"device": "cpu", "dtype": "float32", "mode": "fwd", "batch": 1, "heads": 2, "kv_heads": 2,
             "seq_len": 128, "q_len": 128, "head_dim": 16}
    specs = [Case(pattern="local", params="window=16", impl="sdpa", **shape),
             Case(pattern="dense", params="", impl="sdpa", **shape)]
    frame = rerunner(read_meta(tmp_path / "results.csv"), RerunProgress(1, quiet=False))(specs)
    assert list(frame["status"]) == ["ok", "ok"], frame.get("error")
    local = frame[frame["pattern"] == "local"].iloc[0]
    assert local["params"] == "window=16" and local["n_samples"] >= 5 and local["dense_latency_ms"] > 0
    err = capsys.readouterr().err  # reported as `run` reports its cases
    assert "gate --confirm, re-run 1/1: 2 case(s)" in err and "[2/2] local(window=16) sdpa 128 fwd: " in err


def strip_samples(path: Path, how: str) -> None:
    """The timing samples gone from a results file: the column deleted, or its cells emptied."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame = frame.drop(columns=["samples_ms"]) if how == "column deleted" else frame.assign(samples_ms="")
    frame.to_csv(path, index=False)


@pytest.mark.parametrize("how", ["column deleted", "cells empty"])
@pytest.mark.parametrize("where", ["current", "baseline", "both"])
@pytest.mark.parametrize("confirm", [False, True])
def test_missing_samples_never_turn_a_regression_into_a_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             how: str, where: str, confirm: bool) -> None:
    """Without the samples the significance test needs, the latency ratio alone decides, and the report says so;
    --confirm's re-runs (which reproduce the slowdown) confirm it."""
    slow = {name: 3.5 for name in ("local(window=64)/structured/1024/float32/fwd",
                                   "local(window=64)/structured/2048/float32/fwd",
                                   "strided(stride=8)/structured/1024/float32/fwd",
                                   "strided(stride=8)/structured/2048/float32/fwd")}
    base = write(tmp_path / "base" / "results.csv", make_rows(1))
    cur = write(tmp_path / "cur" / "results.csv", make_rows(2, slow=slow))
    for path in {"current": [cur], "baseline": [base], "both": [base, cur]}[where]:
        strip_samples(path, how)

    def rerun(cases: list[Case]) -> pd.DataFrame:
        wanted = {(c.pattern, c.impl, c.seq_len) for c in cases}
        return pd.DataFrame([r for r in make_rows(7, slow=slow) if (r["pattern"], r["impl"], r["seq_len"]) in wanted])

    monkeypatch.setattr("sparsebench.services.gate.rerunner", lambda current, *_: rerun)
    args = ["--confirm", "3"] if confirm else ["--confirm", "0"]
    result = CliRunner().invoke(app, ["gate", str(base), str(cur), "--threshold", "1.5", *args])
    assert result.exit_code == 1, result.output
    regressed = {line.split(":")[0] for line in result.output.splitlines() if line.startswith("REGRESSION ")}
    assert regressed == {f"REGRESSION {name}" for name in slow} and "gate FAIL: 8 cases" in result.output
    assert "significance not tested: " in result.output
    assert "note: the significance test could not run for" in result.output
    if confirm:
        assert result.output.count("confirmed: regression reproduced in 3/3 re-runs") == 4


def test_a_plugin_of_one_name_from_other_code_gets_a_note() -> None:
    """Gating a user's selector against its earlier version is the point, so no refusal: a note says which code
    each side ran, by content (another checkout or a later commit of the same file is the same code)."""
    from types import SimpleNamespace

    from sparsebench.services.gate import environment_notes

    def results(file: str, sha: str, commit: str) -> SimpleNamespace:
        return SimpleNamespace(meta={"torch": "2.13.0", "plugins": [{"kind": "pattern", "name": "select",
                                     "spec": "mymod:select", "file": file, "sha256": sha, "git_commit": commit}]})

    moved = environment_notes(results("/a/mymod.py", "aa11", "0123456789abcdef"),
                              results("/b/mymod.py", "aa11", "fedcba9876543210"))
    assert moved == []
    notes = environment_notes(results("/a/mymod.py", "aa11", "0123456789abcdef"),
                              results("/a/mymod.py", "bb22", "0123456789abcdef+dirty"))
    assert notes == ["pattern 'select' ran other code: baseline /a/mymod.py (sha256 aa11, commit 0123456789ab), "
                     "current /a/mymod.py (sha256 bb22, commit 0123456789ab+dirty)"]
    older = SimpleNamespace(meta={"plugins": [{"kind": "pattern", "name": "select", "file": "/a/mymod.py"}]})
    assert environment_notes(older, results("/a/mymod.py", "bb22", "")) == []  # no hash recorded: cannot tell


def test_a_serving_batch_is_named_by_its_lengths() -> None:
    """A paged-decode batch and a plain decode of its longest length are different cases: different names (the
    gate's table, JUnit and the benchmark exports key on them)."""
    plain = {"pattern": "causal", "params": "", "impl": "sdpa", "seq_len": 1024, "dtype": "float32",
             "mode": "decode", "seq_lens": "", "seq_lens_seed": float("nan"), "page_size": float("nan")}
    batch = {**plain, "seq_lens": "128,512,1024", "seq_lens_seed": 0, "page_size": 16}
    assert gate.case_name(plain) == "causal/sdpa/1024/float32/decode"
    assert gate.case_name(batch) == "causal/sdpa/seq_lens=128,512,1024;page=16/float32/decode"
    drawn = {**batch, "seq_lens": "uniform:256-1024:3", "seq_lens_seed": 2}
    assert gate.case_name(drawn) == "causal/sdpa/seq_lens=uniform:256-1024:3;seed=2;page=16/float32/decode"


def test_code_changes_compare_sparsebench_by_its_source() -> None:
    """A commit says too much (a docs-only commit) and too little (uncommitted edits, an install without git):
    the source's hash decides; older files fall back to the version."""
    from sparsebench import __version__
    from sparsebench.environment import package_digest
    from sparsebench.services.gate import code_changes

    assert code_changes({"sparsebench_sha256": package_digest(), "git_sha": "0" * 40}) == []
    assert "sparsebench's source differs" in code_changes({"sparsebench_sha256": "0" * 16})[0]
    assert code_changes({"sparsebench_version": __version__}) == []
    assert code_changes({"sparsebench_version": "0.0.1"}) == [f"sparsebench {__version__}, not 0.0.1"]
