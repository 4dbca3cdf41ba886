"""One run at a time per output directory: an flock on a lock file that holds the owner's pid.

The kernel drops an flock when its process dies, however it dies, so a crashed or killed run never leaves a
stale lock behind, and `--resume` can follow a `kill -9` at once. A run that ends normally also removes the
file, so a finished results directory holds results only (a killed run leaves the file, unlocked). Removing it
races with a run that opened it and waits for its flock: that run would lock a file no longer in the directory
while a third creates and locks a new one. So a run that gets the flock checks that the path still names the file
it locked, and opens the path again when it does not (the usual remove-on-release recipe for flock files).
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
        while True:
            fh = self._open()
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _owner(fh)
                if not wait:
                    fh.close()
                    raise SparsebenchError(f"another sparsebench run (pid {owner}) is writing to {self.path.parent}; "
                                           "wait for it to finish (or add --wait), or choose another --out-dir"
                                           ) from None
                if on_wait:
                    on_wait(owner)
                    on_wait = None  # said once, however many runs come before this one
                fcntl.flock(fh, fcntl.LOCK_EX)
            if _same_file(fh, self.path):
                break
            fh.close()  # the run before removed the file while this one waited: lock the path's file
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def _open(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return open(self.path, "a+")
        except OSError as exc:
            raise SparsebenchError(f"cannot write to --out-dir {self.path.parent}: {exc.strerror or exc}") from None

    def release(self) -> None:
        if self._fh is not None:
            try:
                self.path.unlink(missing_ok=True)  # while still locked: see the module docstring
            except OSError:  # a directory made read-only or removed meanwhile: the flock still goes below
                pass
            self._fh.close()  # closing the file drops the flock
            self._fh = None


def _same_file(fh, path: Path) -> bool:
    """Whether `path` still names the open file `fh`."""
    try:
        return os.path.samestat(os.fstat(fh.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _owner(fh) -> str:
    """The pid that the lock's holder wrote (it may not have written it yet)."""
    fh.seek(0)
    return fh.read().strip() or "unknown"
