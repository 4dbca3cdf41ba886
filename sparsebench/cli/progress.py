"""Progress of `run`, `train` and `gate --confirm` on stderr.

On a terminal, a rich progress bar. Anywhere else (CI logs, `| tee`, a file) a bar never shows, so each
finished item is one plain line as it finishes, with the time left estimated from the items so far:

    sparsebench run: 6 cases, results in sparsebench-results/results.csv
    [3/6] strided(stride=8) flex 8192 fwd: 6006 ms (0.46x dense) ok  (1:05 elapsed, ~1:05 left)

With --quiet, only the items that failed. stdout is never used: it is kept for data.
"""

from __future__ import annotations

import time
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sparsebench.cli.common import console, err_console
from sparsebench.results import FAILED_STATUSES, is_dense_reference, number
from sparsebench.results.labels import row_label

NOT_TIMED = ("unsupported", "skipped")  # rows that cost no measuring time


class Reporter:
    """Reports `total` items as they finish: `begin` one, optionally `step` through it, then `done`.

    The mode follows stderr: "bar" on a terminal, "lines" elsewhere, "quiet" when asked (failures only)."""

    def __init__(self, total: int, header: str, quiet: bool = False) -> None:
        self.total = total
        self.header = header
        self.mode = "quiet" if quiet else ("bar" if console.is_terminal else "lines")
        self.finished = 0
        self.timed = 0  # finished items that took measuring time (the estimate's base)
        self._bar: Progress | None = None
        self._task: Any = None
        self._step_task: Any = None
        self._started = time.monotonic()
        self._first_begin: float | None = None  # the estimate leaves out what came before (worker start-up)

    def __enter__(self) -> Reporter:
        self._started = time.monotonic()
        if self.mode != "quiet":
            console.print(self.header, markup=False, highlight=False, soft_wrap=True)
        if self.mode == "bar":
            self._bar = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), TextColumn("{task.fields[note]}"), console=console)
            self._bar.start()
            self._task = self._bar.add_task("starting", total=self.total, note="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def begin(self, label: str, steps: int | None = None) -> None:
        """An item starts: the bar names it, and with `steps` shows its own steps below."""
        if self._first_begin is None:
            self._first_begin = time.monotonic()
        if self._bar is None:
            return
        self._bar.update(self._task, description=escape(label))  # the column reads it as markup
        if steps:
            self._step_task = self._bar.add_task("  steps", total=steps, note="")

    def step(self, completed: int, note: str = "") -> None:
        """Progress within the current item (bar only: the lines give finished items)."""
        if self._bar is not None and self._step_task is not None:
            self._bar.update(self._step_task, completed=completed, note=note)

    def done(self, text: str, failed: bool = False, timed: bool = True) -> None:
        """An item finished: `text` says what it gave; `timed` is False for items that took no time."""
        self.finished += 1
        self.timed += timed
        line = f"[{self.finished}/{self.total}] {text}"
        if self._bar is not None:
            if self._step_task is not None:
                self._bar.remove_task(self._step_task)
                self._step_task = None
            self._bar.advance(self._task)
            if failed:
                self._bar.console.print(line, markup=False, highlight=False, soft_wrap=True, style="bold red")
        elif self.mode == "lines":
            console.print(f"{line}  ({self.times()})", markup=False, highlight=False, soft_wrap=True)
        elif failed:
            err_console.print(line, markup=False)

    def times(self) -> str:
        """'1:05 elapsed, ~1:05 left': the time left from the mean time of the timed items so far."""
        now = time.monotonic()
        text = f"{clock(now - self._started)} elapsed"
        left = self.total - self.finished
        if left and self.timed:
            per_item = (now - (self._first_begin or self._started)) / self.timed
            text += f", ~{clock(per_item * left)} left"
        return text


def clock(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour."""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def case_line(row: dict[str, Any]) -> tuple[str, bool, bool]:
    """(text, failed, timed) of a finished case's row, e.g.
    'strided(stride=8) flex 8192 fwd: 6006 ms (0.46x dense) ok'."""
    status = row["status"]
    text = f"{case_label(row)}: "
    ms = _number(row.get("latency_ms"))
    if status in ("ok", "inaccurate") and ms is not None:
        speedup = _number(row.get("speedup_vs_dense"))
        text += f"{ms:.0f} ms" if ms >= 100 else f"{ms:.3g} ms"
        if is_dense_reference(row):
            text += " (dense reference)"
        elif speedup is not None:
            text += f" ({speedup:.2f}x dense)"
        text += f" {status}"
    else:
        text += status
    if status != "ok" and row.get("error"):
        text += f": {str(row['error'])[:160]}"
    return text, status in FAILED_STATUSES, status not in NOT_TIMED


def case_label(row: dict[str, Any]) -> str:
    """pattern(params) impl n mode, with dtype, device, GQA heads and decode rows where not the defaults."""
    return row_label(row)


_number = number
