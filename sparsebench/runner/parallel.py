"""Measure shape groups in parallel, one worker process per slot (a GPU, or a share of the CPU).

Each slot takes whole shape groups from one shared queue, largest first, and measures them in its own worker
processes as `launcher.run_cases` does; finished rows go to the caller's `on_row` one at a time (a lock
serializes them, so one writer in the main process streams every slot's rows into one results.csv).
"""

from __future__ import annotations

import itertools
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sparsebench.runner.cases import Case, MeasureSettings
from sparsebench.runner.gpus import Slot
from sparsebench.runner.launcher import SweepStats, run_cases
from sparsebench.runner.shard import group_order, group_work

OnRow = Callable[[Case, dict[str, Any]], None]


class _Stopped(Exception):
    """Raised in a slot's thread to end its work (another slot failed, or the user pressed Ctrl-C)."""


def run_parallel(cases: list[Case], settings: MeasureSettings, on_row: OnRow, slots: list[Slot],
                 on_start: Callable[[Case], None] | None = None, timeout_s: float = 600.0,
                 run_id: str | None = None, device_names: dict[str, str] | None = None,
                 ceilings: bool = True) -> SweepStats:
    """Measure `cases` (ordered by group, each group's dense reference first) on `slots` in parallel.

    A group runs on one slot from start to end, so its rows and their dense reference come from one GPU. Rows get
    the slot's gpu_index and gpu_name where the worker did not report them itself. Ctrl-C stops every worker."""
    run_id = run_id or uuid.uuid4().hex[:12]
    groups = {key: list(group) for key, group in itertools.groupby(cases, key=Case.group)}
    todo: queue.Queue[list[Case]] = queue.Queue()
    for key in group_order(group_work(cases)):
        todo.put(groups[key])
    lock, stop = threading.Lock(), threading.Event()
    errors: list[BaseException] = []
    per_slot = [SweepStats() for _ in slots]
    done_groups = [0] * len(slots)
    t_start = time.perf_counter()

    def work(i: int) -> None:
        slot = slots[i]
        names = {d: (slot.gpu.name if slot.gpu and d.startswith("cuda") else name)
                 for d, name in (device_names or {}).items()}

        def row_done(case: Case, row: dict[str, Any]) -> None:
            with lock:
                if stop.is_set():
                    raise _Stopped
                if slot.gpu is not None and row.get("gpu_index") is None:
                    row.update(gpu_index=slot.gpu.index, gpu_name=slot.gpu.name)
                on_row(case, row)

        def started(case: Case) -> None:
            with lock:
                if stop.is_set():
                    raise _Stopped
                if on_start:
                    on_start(case)

        try:
            while not stop.is_set():
                try:
                    group = todo.get_nowait()
                except queue.Empty:
                    return
                run_cases(group, settings, row_done, on_start=started, timeout_s=timeout_s, run_id=run_id,
                          device_names=names, ceilings=ceilings, stats=per_slot[i], env=slot.env,
                          free_memory=slot.free_bytes)
                done_groups[i] += 1
        except _Stopped:
            return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=work, args=(i,), daemon=True, name=slot.label)
               for i, slot in enumerate(slots)]
    for thread in threads:
        thread.start()
    try:
        _join(threads)
    except KeyboardInterrupt:
        stop.set()
        while any(t.is_alive() for t in threads):  # a slot may have started a worker since the last look
            _kill_workers()
            _join(threads, timeout=0.5)
        raise
    if errors:
        _kill_workers()
        raise errors[0]
    stats = _combine(slots, per_slot, done_groups)
    stats.wall_s = time.perf_counter() - t_start
    return stats


def _join(threads: list[threading.Thread], timeout: float | None = None) -> None:
    """Wait for the threads in short steps, so that Ctrl-C reaches the main thread."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for thread in threads:
        while thread.is_alive() and (deadline is None or time.monotonic() < deadline):
            thread.join(0.2)


def _kill_workers() -> None:
    """Kill the worker processes this process started (each leads its own process group)."""
    import psutil

    for child in psutil.Process().children():
        try:
            if "sparsebench.runner.worker" in " ".join(child.cmdline()):
                os.killpg(child.pid, signal.SIGKILL)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue


def _combine(slots: list[Slot], per_slot: list[SweepStats], done_groups: list[int]) -> SweepStats:
    """One SweepStats for the sweep; each slot's ceilings and work in `gpus`. The sweep-wide ceilings are kept
    only where every slot is the same GPU model: a roof of one model is no roof for another."""
    stats = SweepStats()
    models = {slot.gpu.name if slot.gpu else "" for slot in slots}
    for slot, part, groups in zip(slots, per_slot, done_groups):
        stats.worker_starts_s += part.worker_starts_s
        stats.ceiling_notes += [f"{slot.label}: {note}" for note in part.ceiling_notes]
        if len(models) == 1:
            for device, by_dtype in part.ceilings.items():
                for dtype, values in by_dtype.items():
                    stats.ceilings.setdefault(device, {}).setdefault(dtype, values)
        stats.gpus.append({**slot.to_dict(), "groups": groups, "workers": len(part.worker_starts_s),
                           "ceilings": part.ceilings})
    return stats
