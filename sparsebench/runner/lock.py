"""One run at a time per output directory: an flock on a lock file that holds the owner's pid.

The kernel drops an flock when its process dies, however it dies, so a crashed or killed run never leaves a
stale lock behind, and `--resume` can follow a `kill -9` at once.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from sparsebench.errors import SparsebenchError

LOCK_NAME = "sparsebench.lock"


class DirLock:
    """An exclusive lock on `out_dir`, held until `release` (or the process ends)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self._fh = None

    def acquire(self, wait: bool = False, on_wait: Callable[[str], None] | None = None) -> None:
        """Take the lock. Held by another run: raise a SparsebenchError naming its pid, or, with `wait`, call
        `on_wait(pid)` and block until that run ends."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+")
        except OSError as exc:
            raise SparsebenchError(f"cannot write to --out-dir {self.path.parent}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(fh)
            if not wait:
                fh.close()
                raise SparsebenchError(f"another sparsebench run (pid {owner}) is writing to {self.path.parent}; "
                                       "wait for it to finish (or add --wait), or choose another --out-dir") from None
            if on_wait:
                on_wait(owner)
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the file drops the flock
            self._fh = None


def _owner(fh) -> str:
    """The pid that the lock's holder wrote (it may not have written it yet)."""
    fh.seek(0)
    return fh.read().strip() or "unknown"
