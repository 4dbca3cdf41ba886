"""Progress on stderr: one plain line per finished case where stderr is no terminal (CI logs, files)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sparsebench.cli import app
from sparsebench.cli.progress import Reporter, case_line, clock
from sparsebench.results import read_results

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^\[(\d+)/(\d+)\] (.*)$")
# seed runs only local and strided: these cases are unsupported rows, written without a worker process
NO_WORKER = ["--pattern", "dilated", "--pattern", "bigbird", "--impl", "seed", "--seq", "64"]


def case_lines(text: str) -> list[re.Match]:
    return [m for m in map(LINE.match, text.splitlines()) if m]


def row(**kw) -> dict:
    base = {"pattern": "strided", "params": "stride=8", "impl": "flex", "seq_len": 8192, "mode": "fwd",
            "heads": 8, "kv_heads": 8, "q_len": 8192, "dtype": "float32", "device": "cpu", "status": "ok",
            "error": "", "latency_ms": 6006.4, "speedup_vs_dense": 0.4612}
    return {**base, **kw}


def test_case_line_says_what_a_case_gave():
    assert case_line(row()) == ("strided(stride=8) flex 8192 fwd: 6006 ms (0.46x dense) ok", False, True)
    dense = row(pattern="dense", params="", impl="sdpa", latency_ms=2.7431, speedup_vs_dense=1.0)
    assert case_line(dense)[0] == "dense sdpa 8192 fwd: 2.74 ms (dense reference) ok"
    text, failed, timed = case_line(row(status="unsupported", latency_ms=None, error="inference only"))
    assert text.endswith("fwd: unsupported: inference only") and not failed and not timed
    text, failed, _ = case_line(row(status="inaccurate", error="max_abs_err 0.1 > tolerance 1e-04"))
    assert text.endswith("6006 ms (0.46x dense) inaccurate: max_abs_err 0.1 > tolerance 1e-04") and failed
    assert case_line(row(status="oom", latency_ms=None, error="killed"))[1]
    gpu = row(dtype="bfloat16", device="cuda", mode="decode", q_len=16, kv_heads=2)
    assert case_line(gpu)[0].startswith("strided(stride=8) flex 8192 decode(q_len=16) kv_heads=2 bfloat16 cuda:")


def test_lines_count_the_cases_and_estimate_the_time_left(capsys):
    with Reporter(3, "3 cases, results in out/results.csv") as report:
        assert report.mode == "lines"  # pytest's stderr is no terminal
        report.done("a: unsupported", timed=False)
        report.begin("b")
        report.done("b: 1 ms ok")
        report.done("c: error: boom", failed=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "3 cases, results in out/results.csv"
    assert [m.group(1, 2) for m in case_lines("\n".join(lines))] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert "left" not in lines[1]  # no timed case yet: no estimate
    assert lines[2].startswith("[2/3] b: 1 ms ok  (") and "left)" in lines[2]
    assert lines[3].startswith("[3/3] c: error: boom  (") and "left" not in lines[3]  # nothing left


def test_quiet_reports_only_failures(capsys):
    with Reporter(2, "header", quiet=True) as report:
        report.done("a: 1 ms ok")
        report.done("b: oom: killed", failed=True)
    assert capsys.readouterr().err.splitlines() == ["[2/2] b: oom: killed"]


def test_clock():
    assert [clock(s) for s in (0, 65.4, 3600 + 61)] == ["0:00", "1:05", "1:01:01"]


def test_run_prints_one_line_per_case_and_quiet_none(tmp_path):
    result = CliRunner().invoke(app, ["run", *NO_WORKER, "--out-dir", str(tmp_path / "loud")])
    assert result.exit_code == 0, result.stderr
    lines = case_lines(result.stderr)
    assert [m.group(3).split(":")[0] for m in lines] == ["dilated(dilation=2,window=64) seed 64 fwd",
                                                         "bigbird(block=64,global_blocks=1,mask_seed=0,"
                                                         "random_blocks=3) seed 64 fwd"]
    assert f"2 unsupported, results in {tmp_path / 'loud' / 'results.csv'}" in result.stderr
    quiet = CliRunner().invoke(app, ["run", *NO_WORKER, "--out-dir", str(tmp_path / "quiet"), "--quiet"])
    assert quiet.exit_code == 0, quiet.stderr
    assert not case_lines(quiet.stderr) and "results in" not in quiet.stderr and "wrote" not in quiet.stderr
    assert "unsupported" in quiet.stderr  # the final table
    assert len(read_results(tmp_path / "quiet" / "results.csv")) == 2


@pytest.mark.slow  # a real run: the CLI's process and a worker process
def test_a_run_into_a_file_logs_each_case_as_it_finishes(tmp_path):
    """stderr redirected to a file, as in a CI job: a first line, then one line per case, then the table."""
    log = tmp_path / "stderr.log"
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "w") as stderr:
        proc = subprocess.run([sys.executable, "-m", "sparsebench", "run", "--out-dir", str(out), "--pattern",
                               "local", "--pattern", "strided", "--seq", "128", "--impl", "eager", "--impl",
                               "structured", "--impl", "flex", "--mode", "fwdbwd", "--heads", "2",
                               "--min-run-time", "0.05"], stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    text = log.read_text()
    assert proc.returncode == 0, text
    frame = read_results(out / "results.csv")
    lines = case_lines(text)
    assert len(lines) == len(frame) == 7  # dense, 2 x eager and structured measured, 2 x flex unsupported
    assert [int(m.group(1)) for m in lines] == list(range(1, 8)) and {m.group(2) for m in lines} == {"7"}
    assert text.splitlines()[0] == f"sparsebench run: 5 case(s) to measure, 2 unsupported, results in {out}/results.csv"
    for m, r in zip(lines, frame.to_dict("records")):  # in the order the rows were written
        assert m.group(3).startswith(f"{r['pattern']}") and f" {r['impl']} 128 fwdbwd: " in m.group(3)
        assert m.group(3).split("  (")[0].endswith(r["status"] if r["status"] == "ok" else r["error"][:160])
    assert "~" in lines[3].group(3) and "left)" in lines[3].group(3)  # an estimate once cases have run
    assert "\x1b[" not in text  # no terminal codes in a file
