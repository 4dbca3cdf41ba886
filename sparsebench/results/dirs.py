"""A result set named on the command line: a results.csv, or the directory `run --out-dir` wrote it to."""

from __future__ import annotations

from pathlib import Path

from sparsebench.errors import SparsebenchError

RESULTS_NAME = "results.csv"


def results_file(path: Path) -> Path:
    """The results.csv that `path` names (itself, or the one inside a directory); a clear error otherwise."""
    path = Path(path)
    if path.is_dir():
        inside = path / RESULTS_NAME
        if not inside.is_file():
            raise SparsebenchError(f"{path}: no {RESULTS_NAME} in this directory (not a sparsebench result "
                                   "directory; `sparsebench run --out-dir` writes one)")
        return inside
    if not path.exists():
        raise SparsebenchError(f"{path}: no such file or directory")
    return path
