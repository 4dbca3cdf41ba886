"""Run cases in isolated worker processes; a crash, OOM kill or timeout becomes a status row."""

from __future__ import annotations

import itertools
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

from sparsebench.errors import is_oom_message
from sparsebench.measure.quality import full_is_causal
from sparsebench.results import Measurement, dense_ratios, make_row, speedup
from sparsebench.runner import protocol
from sparsebench.runner.cases import Case, MeasureSettings
from sparsebench.runner.preflight import free_bytes, skip_reason

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
# A worker's start-up (interpreter, torch import) and the device's ceilings, measured once per (device type,
# dtype) before the first case, are outside every case's timeout. Ceilings past their limit are left out
# (no roof in the figures), and no case is charged for them.
START_TIMEOUT_S = 120.0
CEILINGS_TIMEOUT_S = 120.0
PARENT_PID_ENV = "SPARSEBENCH_PARENT_PID"  # the worker exits when this pid is no longer its parent

Ceilings = dict[str, dict[str, dict[str, float]]]  # device type -> dtype -> {metric: value}


@dataclass(frozen=True)
class WorkerSource:
    """The code a worker imports: sparsebench from `root` (first on its PYTHONPATH), user modules and plugin
    files from `cwd` (its working directory). The default: this process's sparsebench and directory. The
    same-job A/B gate points each side's workers at that side's checkout."""

    root: str = PACKAGE_ROOT
    cwd: str | None = None


THIS_PROCESS = WorkerSource()


@dataclass
class SweepStats:
    """What the harness itself cost: worker start-ups (process + imports) and wall time; the ceilings."""

    worker_starts_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    ceilings: Ceilings = field(default_factory=dict)
    ceiling_notes: list[str] = field(default_factory=list)  # ceilings that could not be measured, and why
    gpus: list[dict[str, Any]] = field(default_factory=list)  # parallel slots: each GPU's work and ceilings

    def has_ceilings(self, case: Case) -> bool:
        return case.dtype in self.ceilings.get(case.device_type, {})


class _Worker:
    """One worker process for a list of cases of the same group."""

    def __init__(self, cases: list[Case], settings: MeasureSettings, ceilings: bool,
                 extra_env: dict[str, str] | None = None, source: WorkerSource = THIS_PROCESS,
                 latency_only: bool = False) -> None:
        env = {**os.environ, **(extra_env or {})}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source.root, env.get("PYTHONPATH")]))
        env[PARENT_PID_ENV] = str(os.getpid())  # the worker exits when this process is gone
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.spawned = time.perf_counter()
        # A new session, so a timeout kills compile sub-processes too.
        self.proc = subprocess.Popen([sys.executable, "-m", "sparsebench.runner.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env,
                                     cwd=source.cwd, start_new_session=True)
        self.protocol_error: str | None = None
        try:
            self.events: queue.Queue = queue.Queue()
            threading.Thread(target=self._read, daemon=True).start()
            from sparsebench import plugins as loaded

            plugins = loaded.LOADED.used({c.impl for c in cases}, {c.pattern for c in cases})
            job = protocol.job(cases=[c.to_dict() for c in cases], settings=settings.to_dict(), ceilings=ceilings,
                               plugins=plugins.specs,  # the user code these cases need, imported again there
                               **({"latency_only": True} if latency_only else {}))
            self.proc.stdin.write(job)
            self.proc.stdin.close()
        except BaseException:  # e.g. Ctrl-C or SIGTERM right after the start: no worker is left behind
            self.kill()
            raise

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                event = protocol.read_event(line)
            except protocol.ProtocolError as exc:  # a worker of another install: its answers cannot be read
                self.protocol_error = str(exc)
                self.kill()
                break
            if event is not None:
                self.events.put(event)
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

    def death(self) -> Measurement:
        """Status of the case that was running when the process died."""
        self.proc.wait()
        if self.protocol_error:
            return Measurement("error", self.protocol_error)
        code = self.proc.returncode
        self.stderr.seek(0)
        lines = [ln.strip() for ln in self.stderr.read().splitlines() if ln.strip()]
        last = lines[-1][:300] if lines else ""
        if code < 0:  # killed by a signal: say which, and keep it in the row
            name = _signal_name(-code)
            if code == -signal.SIGKILL:  # the kernel's OOM killer sends SIGKILL, and so does `kill -9`
                return Measurement("oom", f"worker killed by signal 9 ({name}); out of memory is the usual cause")
            return Measurement("error", f"worker killed by signal {-code} ({name})" + (f": {last}" if last else ""))
        if is_oom_message(last):
            return Measurement("oom", last)
        return Measurement("error", f"worker exited with code {code}: {last}".strip())


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def run_cases(cases: list[Case], settings: MeasureSettings, on_row: Callable[[Case, dict[str, Any]], None],
              on_start: Callable[[Case], None] | None = None, timeout_s: float = 600.0,
              run_id: str | None = None, device_names: dict[str, str] | None = None,
              ceilings: bool = True, stats: SweepStats | None = None, env: dict[str, str] | None = None,
              free_memory: Callable[[str], int] = free_bytes, source: WorkerSource = THIS_PROCESS,
              latency_only: bool = False) -> SweepStats:
    """Measure `cases` group by group (cases of a group share inputs and one worker process).

    `on_row(case, row)` gets every finished row (CSV columns) at once, so the caller can write it before the
    next case. A group's dense reference, when it is among the cases, runs first and gives the group's rows
    their speed-up. `ceilings`: measure the device's matmul and copy ceilings once per (device, dtype), unless
    `stats` (carried over from earlier calls) has them. `env`: set in every worker's environment (a GPU's pin).
    `source`: the code the workers import (default: this process's). `latency_only`: see `measure_case.measure`.
    """
    run_id = run_id or uuid.uuid4().hex[:12]
    device_names = device_names or {}
    stats = stats if stats is not None else SweepStats()
    t_start = time.perf_counter()

    reference: dict[str, Any] = {}  # the current group's dense reference row, once measured
    full: dict[str, dict[str, Any]] = {}  # the group's dense and causal SDPA rows, by pattern: speedup_vs_full

    def finish(case: Case, measured: Measurement) -> None:
        name = device_names.get(case.device, "")
        peaks = stats.ceilings.get(case.device_type, {}).get(case.dtype)
        if case == case.reference():
            row = make_row(case.row(), measured, run_id, name, ceilings=peaks)
            if measured.status == "ok":
                reference.update(row)
                row.update(dense_ratios(row, row))
        else:
            row = make_row(case.row(), measured, run_id, name, reference or None, ceilings=peaks)
        if case.impl == "sdpa" and case.pattern in ("dense", "causal") and measured.status == "ok":
            full[case.pattern] = row
        row.update(full_speedup(case, row, full))
        on_row(case, row)

    for _, group_iter in itertools.groupby(cases, key=Case.group):
        group = list(group_iter)
        reference.clear()
        full.clear()
        free = free_memory(group[0].device)
        runnable = []
        for case in group:
            reason = skip_reason(case, timeout_s, free)
            if reason:
                finish(case, Measurement("skipped", reason))
            else:
                runnable.append(case)
        want_ceilings = ceilings and bool(runnable) and not stats.has_ceilings(group[0])
        _run_group(runnable, settings, timeout_s, finish, on_start, stats, want_ceilings, env, source, latency_only)
    stats.wall_s = time.perf_counter() - t_start
    return stats


def _run_group(pending: list[Case], settings: MeasureSettings, timeout_s: float,
               finish: Callable[[Case, Measurement], None], on_start: Callable[[Case], None] | None,
               stats: SweepStats, ceilings: bool, env: dict[str, str] | None = None,
               source: WorkerSource = THIS_PROCESS, latency_only: bool = False) -> None:
    """Measure `pending` in a worker; after a crash or timeout, the rest in a fresh one."""
    limits = {"start": START_TIMEOUT_S, "ceilings": CEILINGS_TIMEOUT_S, "cases": timeout_s}
    while pending:
        phase = "start"  # then "ceilings" (when asked for), then "cases"
        running: int | None = None
        done = 0
        worker: _Worker | None = None
        try:
            worker = _Worker(pending, settings, ceilings, env, source, latency_only)
            while True:
                try:
                    event = worker.next_event(timeout=limits[phase])
                except queue.Empty:
                    event, failed = None, Measurement("timeout", f"no result within {limits[phase]:.0f} s")
                    worker.kill()
                else:
                    failed = worker.death() if event is None else None
                if failed is not None:  # the worker hung or died
                    if phase == "ceilings":  # no case is charged: measure the cases without the ceilings
                        _no_ceilings(stats, pending[0], failed.error)
                        ceilings = False
                        break
                    if phase == "start":
                        failed = Measurement("error", f"the worker did not start: {failed.error}")
                    index = running if running is not None else done
                    finish(pending[index], failed)
                    done = index + 1
                    break
                if event["event"] == "ready":
                    stats.worker_starts_s.append(time.perf_counter() - worker.spawned)
                    phase = "ceilings" if ceilings else "cases"
                elif event["event"] == "ceilings":
                    case = pending[0]
                    stats.ceilings.setdefault(case.device_type, {})[case.dtype] = event["values"]
                    phase, ceilings = "cases", False
                elif event["event"] == "start":
                    running = event["index"]
                    if on_start:
                        on_start(pending[running])
                elif event["event"] == "result":
                    try:
                        measured = Measurement.from_dict(event["measurement"])
                    except (TypeError, ValueError) as exc:
                        measured = Measurement("error", f"the worker sent an invalid measurement: {exc}")
                    finish(pending[event["index"]], measured)
                    running, done = None, event["index"] + 1
                    if done == len(pending):
                        break
        finally:  # also on Ctrl-C, SIGTERM or a failed write: the worker's process group never outlives this
            if worker is not None:
                worker.kill()
                worker.stderr.close()
        pending = pending[done:]


def _no_ceilings(stats: SweepStats, case: Case, why: str) -> None:
    """Record that this (device, dtype) has no ceilings, so they are not tried again in this sweep."""
    stats.ceilings.setdefault(case.device_type, {})[case.dtype] = {}
    stats.ceiling_notes.append(f"{case.device_type} {case.dtype}: ceilings {why}".strip())


def full_speedup(case: Case, row: dict[str, Any], references: dict[str, dict]) -> dict[str, float]:
    """speedup_vs_full of a row: the latency of full attention (causal SDPA for a causal pattern, dense SDPA
    otherwise; rows of the same run and shape, in `references` by pattern name) over the row's latency."""
    try:
        causal = full_is_causal(case.build_pattern())
    except Exception:  # a pattern this process cannot build: no ratio rather than no row
        return {}
    ref = references.get("causal" if causal else "dense")
    ms, ref_ms = row.get("latency_ms"), (ref or {}).get("latency_ms")
    if row.get("status") not in ("ok", "inaccurate") or not ms or not ref_ms:
        return {}
    return {"speedup_vs_full": speedup(ref_ms, ms)}
