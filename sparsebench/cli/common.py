"""Shared CLI plumbing: one-line errors on stderr with exit codes, consoles, Annotated options."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

from sparsebench.errors import NotComparable, SparsebenchError

# Progress and run summaries go to stderr; stdout is kept for data and for what a command is asked to show
# (`list`, `info`). Logs and CI are wider than 80 columns. No emoji codes: user text such as `--impl mod:smile`
# prints as given (markup=False, rich.markup.escape or Text objects keep it out of rich's markup).
console = Console(stderr=True, width=None if sys.stderr.isatty() else 140, emoji=False)
stdout_console = Console(width=None if sys.stdout.isatty() else 140, emoji=False)
err_console = Console(stderr=True, style="bold red", highlight=False, soft_wrap=True, emoji=False)

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
        err_console.print(f"interrupted by {exc.args[0]}" if isinstance(exc, Interrupted) else "interrupted",
                          markup=False)
        sys.exit(interrupt_exit_code(exc))


def check_output_file(path: Path, option: str) -> None:
    """Raise SparsebenchError unless the file `option` names can be written, before the work whose output goes
    there. One rule for every output file (gate --summary, export --out): missing folders are made, as for
    `run --out-dir`; a folder that cannot be made or written is refused. An existing file is left as it is."""
    path = Path(path)
    if path.is_dir():
        raise SparsebenchError(f"{option} {path}: is a directory; name a file")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise SparsebenchError(f"{option} {path}: {blocker} is not a directory")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):  # appending nothing: the file's contents stay
            pass
        if not existed:
            path.unlink()
    except OSError as exc:
        raise SparsebenchError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None


@contextmanager
def not_comparable() -> Iterator[None]:
    """Turn NotComparable (other device, machine or schema) into one line and exit code 3; inside user_errors."""
    try:
        yield
    except NotComparable as exc:
        if state["debug"]:
            raise
        fail(str(exc), EXIT_INCOMPARABLE)
