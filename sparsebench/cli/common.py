"""Shared CLI plumbing: one-line errors on stderr with exit codes, consoles, Annotated options."""

from __future__ import annotations

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


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn SparsebenchError (bad input, config, files) into one line and exit code 2."""
    try:
        yield
    except SparsebenchError as exc:
        if state["debug"]:
            raise
        fail(str(exc))
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        sys.exit(130)


@contextmanager
def not_comparable() -> Iterator[None]:
    """Turn NotComparable (other device, machine or schema) into one line and exit code 3; inside user_errors."""
    try:
        yield
    except NotComparable as exc:
        if state["debug"]:
            raise
        fail(str(exc), EXIT_INCOMPARABLE)
