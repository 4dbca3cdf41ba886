"""Run cases in isolated worker processes; a crash, OOM kill or timeout becomes a status row."""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsebench.results import format_samples
from sparsebench.runner.cases import Case
from sparsebench.runner.preflight import free_bytes, skip_reason

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass
class SweepStats:
    """What the harness itself cost: worker start-ups (process + imports) and wall time."""

    worker_starts_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    ceilings: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> dtype -> value


class _Worker:
    """One worker process for a list of cases of the same group."""

    def __init__(self, cases: list[Case], settings: dict[str, Any]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.spawned = time.perf_counter()
        # A new session, so a timeout kills compile sub-processes too.
        self.proc = subprocess.Popen([sys.executable, "-m", "sparsebench.runner.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env,
                                     start_new_session=True)
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.proc.stdin.write(json.dumps({"cases": [c.to_dict() for c in cases], "settings": settings}))
        self.proc.stdin.close()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                continue
        self.events.put(None)  # end of stream: the process exited

    def next_event(self, timeout: float) -> dict | None:
        """The next event; None when the process died; raises queue.Empty on timeout."""
        return self.events.get(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def death_row(self) -> dict[str, str]:
        """Status row for the case that was running when the process died."""
        self.proc.wait()
        code = self.proc.returncode
        self.stderr.seek(0)
        lines = [ln.strip() for ln in self.stderr.read().splitlines() if ln.strip()]
        last = lines[-1][:300] if lines else ""
        if code == -signal.SIGKILL:
            return {"status": "oom", "error": "worker killed by SIGKILL (out of memory, most likely)"}
        if "out of memory" in last.lower() or "MemoryError" in last:
            return {"status": "oom", "error": last}
        return {"status": "error", "error": f"worker exited with code {code}: {last}".strip()}


def _status_row(status: str, error: str) -> dict[str, Any]:
    return {"status": status, "error": error}


def run_cases(cases: list[Case], settings: dict[str, Any], on_row: Callable[[Case, dict[str, Any]], None],
              on_start: Callable[[Case], None] | None = None, timeout_s: float = 600.0,
              run_id: str | None = None, device_names: dict[str, str] | None = None,
              dense: dict[tuple, dict[str, Any]] | None = None) -> SweepStats:
    """Measure `cases` group by group (cases of a group share inputs and one worker process).

    `on_row(case, row)` gets every finished row at once, so the caller can write it before the next case.
    `dense` maps a baseline case key to its row (e.g. from a resumed results.csv).
    """
    run_id = run_id or uuid.uuid4().hex[:12]
    device_names = device_names or {}
    stats = SweepStats()
    t_start = time.perf_counter()
    dense = dict(dense or {})

    def finish(case: Case, measured: dict[str, Any]) -> None:
        row = {**case.row(), "run_id": run_id, "device_name": device_names.get(case.device, ""), **measured}
        row["samples_ms"] = format_samples(row.pop("samples", []) or [])
        base = dense.get(case.baseline().key())
        if case == case.baseline() and row.get("status") == "ok":
            dense[case.key()] = base = row
        if base is not None and row.get("latency_ms"):
            row["dense_latency_ms"] = base["latency_ms"]
            row["speedup_vs_dense"] = base["latency_ms"] / row["latency_ms"]
            if row.get("peak_mem_mib") is not None and base.get("peak_mem_mib"):
                row["mem_ratio_vs_dense"] = row["peak_mem_mib"] / base["peak_mem_mib"]
        on_row(case, row)

    for _, group_iter in itertools.groupby(cases, key=Case.group):
        group = list(group_iter)
        free = free_bytes(group[0].device)
        runnable = []
        for case in group:
            reason = skip_reason(case, timeout_s, free)
            if reason:
                finish(case, _status_row("skipped", reason))
            else:
                runnable.append(case)
        # the device's matmul and copy ceilings, once per dtype
        want = bool(runnable) and group[0].dtype not in stats.ceilings.get("matmul_tflops", {})
        _run_group(runnable, {**settings, "ceilings": want}, timeout_s, finish, on_start, stats)
    stats.wall_s = time.perf_counter() - t_start
    return stats


def _run_group(pending: list[Case], settings: dict[str, Any], timeout_s: float,
               finish: Callable[[Case, dict[str, Any]], None], on_start: Callable[[Case], None] | None,
               stats: SweepStats) -> None:
    while pending:
        worker = _Worker(pending, settings)
        running: int | None = None
        done = 0
        try:
            while True:
                try:
                    event = worker.next_event(timeout=timeout_s)
                except queue.Empty:
                    worker.kill()
                    index = running if running is not None else 0
                    finish(pending[index], _status_row("timeout", f"no result within {timeout_s:.0f} s"))
                    done = index + 1
                    break
                if event is None:  # the process died
                    index = running if running is not None else done
                    finish(pending[index], worker.death_row())
                    done = index + 1
                    break
                if event["event"] == "ready":
                    stats.worker_starts_s.append(time.perf_counter() - worker.spawned)
                elif event["event"] == "ceilings":
                    for metric, value in event["values"].items():
                        stats.ceilings.setdefault(metric, {})[event["dtype"]] = value
                elif event["event"] == "start":
                    running = event["index"]
                    if on_start:
                        on_start(pending[running])
                elif event["event"] == "result":
                    finish(pending[event["index"]], event["row"])
                    running, done = None, event["index"] + 1
                    if done == len(pending):
                        break
        finally:
            worker.kill()
            worker.stderr.close()
        pending = pending[done:]
