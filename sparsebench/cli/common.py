"""Shared CLI plumbing: one-line errors on stderr with exit codes, consoles, Annotated options."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console

from sparsebench.errors import NotComparable, SparsebenchError

# Progress and run summaries go to stderr; stdout is kept for data and for what a command is asked to show
# (`list`, `info`). Logs and CI are wider than 80 columns.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
stdout_console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, style="bold red", highlight=False, soft_wrap=True)

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, EXIT_INCOMPARABLE = 0, 1, 2, 3

state = {"debug": False}


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one line on stderr and exit with `code`."""
    err_console.print(f"error: {message}", markup=False)
    raise typer.Exit(code)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C raises KeyboardInterrupt, so that the same clean-up runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupt_exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a process that a signal ended (Ctrl-C: 130)."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def interrupt_on_stop_signals() -> Iterator[None]:
    """SIGTERM (CI's `timeout`, a scheduler) and SIGHUP (a closed terminal) interrupt like Ctrl-C.

    The first one raises Interrupted in the main thread; later ones are ignored while the clean-up (killing
    the workers, keeping the rows) runs."""
    def handler(signum: int, _frame: object) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn SparsebenchError (bad input, config, files) into one line and exit code 2; an interrupt into
    "interrupted" and 128 + its signal."""
    try:
        yield
    except SparsebenchError as exc:
        if state["debug"]:
            raise
        fail(str(exc))
    except KeyboardInterrupt as exc:
        err_console.print("interrupted", markup=False)
        sys.exit(interrupt_exit_code(exc))


@contextmanager
def not_comparable() -> Iterator[None]:
    """Turn NotComparable (other device, machine or schema) into one line and exit code 3; inside user_errors."""
    try:
        yield
    except NotComparable as exc:
        if state["debug"]:
            raise
        fail(str(exc), EXIT_INCOMPARABLE)
