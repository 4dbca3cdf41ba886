"""The worker protocol is versioned: a message of another version is refused with one clear line, never
misread; a stray line on the worker's stdout is skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsebench.runner import protocol

ROOT = Path(__file__).resolve().parents[1]


def test_events_round_trip_with_their_version() -> None:
    line = protocol.event("result", index=2, measurement={"status": "ok"}, start_s=float("nan"))
    assert line.endswith("\n") and "NaN" not in line  # JSON has no NaN: null
    assert protocol.read_event(line) == {protocol.KEY: protocol.VERSION, "event": "result", "index": 2,
                                         "measurement": {"status": "ok"}, "start_s": None}


def test_a_stray_line_is_skipped_and_another_version_refused() -> None:
    assert protocol.read_event("some library printed this\n") is None
    assert protocol.read_event("[1, 2]\n") is None
    other = json.dumps({protocol.KEY: protocol.VERSION + 1, "event": "start", "index": 0})
    with pytest.raises(protocol.ProtocolError, match="different installs"):
        protocol.read_event(other)
    unversioned = json.dumps({"event": "start", "index": 0})  # what a worker before the versioning sent
    with pytest.raises(protocol.ProtocolError, match="protocol None"):
        protocol.read_event(unversioned)
    with pytest.raises(protocol.ProtocolError, match="missing: index"):
        protocol.read_event(json.dumps({protocol.KEY: protocol.VERSION, "event": "start"}))
    with pytest.raises(protocol.ProtocolError, match="different installs"):
        protocol.read_job(json.dumps({"cases": [], "settings": {}}))
    assert protocol.read_job(protocol.job(cases=[], settings={}))["cases"] == []


@pytest.mark.slow  # a worker process
def test_a_worker_refuses_a_job_of_another_version() -> None:
    done = subprocess.run([sys.executable, "-m", "sparsebench.runner.worker"], input=json.dumps({"cases": []}),
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert f"speaks protocol {protocol.VERSION}, the job was written for None" in done.stderr


def test_a_pattern_spec_round_trips_through_the_csv_text_and_the_worker_json() -> None:
    """Parsed once, carried typed: a Case's params go to the worker as a JSON object, to the CSV as 'k=v;k=v',
    and come back from either equal."""
    from sparsebench.results import PatternSpec
    from sparsebench.runner.cases import Case

    spec = PatternSpec("bigbird", {"random_blocks": 3, "block": 64})
    assert spec.params == (("block", 64), ("random_blocks", 3)) and spec.kwargs == {"block": 64, "random_blocks": 3}
    assert spec.params_text() == "block=64;random_blocks=3" and spec.label() == "bigbird(block=64,random_blocks=3)"
    assert PatternSpec.from_text("bigbird", spec.params_text()) == spec
    assert PatternSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec

    case = Case.of(spec, "eager", "cpu", "float32", "fwd", 1, 2, 2, 128, 128, 16)
    (sent,) = protocol.read_job(protocol.job(cases=[case.to_dict()], settings={}))["cases"]
    assert sent["params"] == {"block": 64, "random_blocks": 3}
    assert Case(**sent) == case and Case(**sent).spec == spec
    assert case.row()["params"] == "block=64;random_blocks=3" and Case.from_row(case.row()) == case
    assert Case("local", "window=8", "eager", "cpu", "float32", "fwd", 1, 2, 2, 64, 64, 16).params == (("window", 8),)
    dense = case.reference()
    assert dense.params == () and Case.from_row({**dense.row(), "params": float("nan")}) == dense  # an empty cell


def test_a_measurement_is_frozen_and_round_trips_through_its_json() -> None:
    from sparsebench.results import Measurement

    m = Measurement("ok", latency_ms=1.5, samples=[1.0, 2.0], launch_overhead_ms=-0.01, extra={"recall": 0.9})
    assert Measurement.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    with pytest.raises(AttributeError):
        m.status = "error"  # type: ignore[misc]


@pytest.mark.parametrize("data, words", [
    ({"status": "fine"}, "unknown status"),
    ({"status": "ok", "latency_ms": -1.0}, "latency_ms"),
    ({"status": "ok", "peak_mem_mib": "12"}, "peak_mem_mib"),
    ({"status": "ok", "nnz": True}, "nnz"),
    ({"status": "ok", "samples": [1.0, float("inf")]}, "samples"),
    ({"status": "ok", "latency": 1.0}, "not measurement fields: latency"),
])
def test_a_message_that_is_not_a_measurement_is_refused_where_it_is_read(data, words) -> None:
    from sparsebench.results import Measurement

    with pytest.raises(ValueError, match=words):
        Measurement.from_dict(data)
