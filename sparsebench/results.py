"""The result format: one tidy CSV row per case (versioned schema) plus meta.json for the environment."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from sparsebench.errors import SparsebenchError

SCHEMA_VERSION = 1

# Columns that identify a case: two rows with equal keys measure the same thing.
KEY_COLUMNS = ["pattern", "params", "impl", "device", "dtype", "mode", "batch", "heads", "seq_len", "head_dim"]

COLUMNS = [
    "schema_version", "run_id",
    *KEY_COLUMNS,
    "device_name", "density", "block_density", "nnz",
    "flops_useful", "flops_executed",
    "latency_ms", "latency_iqr_ms", "latency_min_ms", "n_samples", "samples_ms",
    "tflops_useful", "dense_latency_ms", "speedup_vs_dense",
    "peak_mem_mib", "mem_ratio_vs_dense", "nvml_peak_mib", "nvml_context_mib",
    "setup_ms", "first_call_s", "max_abs_err", "tolerance",
    "status", "error",
    # `sparsebench train` rows (mode == "train"); empty for attention benchmarks
    "val_ppl", "train_s", "tokens_per_s", "corpus", "corpus_bytes", "steps",
]

# The columns every result file has; a file without them is not a sparsebench result.
REQUIRED_COLUMNS = [
    "pattern", "impl", "device", "dtype", "mode", "batch", "heads", "seq_len", "head_dim", "density",
    "flops_useful", "flops_executed", "latency_ms", "latency_iqr_ms", "tflops_useful", "peak_mem_mib",
    "max_abs_err", "status", "error",
]

# (pattern, impl) of the dense-SDPA baseline that every run measures beside its cases.
DENSE_BASELINE = ("dense", "sdpa")


def is_dense_baseline(row: dict[str, Any]) -> bool:
    """True for a measured (status ok) dense-SDPA baseline row."""
    return (row["pattern"], row["impl"]) == DENSE_BASELINE and row["status"] == "ok"


STATUSES = ("ok", "unsupported", "skipped", "oom", "timeout", "error", "inaccurate")
FAILED_STATUSES = ("oom", "timeout", "error", "inaccurate")


def format_params(params: dict[str, Any]) -> str:
    """Canonical 'k=v;k=v' (sorted) so that params compare as plain strings."""
    return ";".join(f"{k}={params[k]}" for k in sorted(params))


def parse_params(text: str) -> dict[str, int]:
    if not isinstance(text, str) or not text:
        return {}
    return {k: int(v) for k, v in (item.split("=", 1) for item in text.split(";"))}


def format_samples(samples_ms: Iterable[float]) -> str:
    return " ".join(f"{s:.6g}" for s in samples_ms)


def parse_samples(text: Any) -> list[float]:
    if not isinstance(text, str) or not text.strip():
        return []
    return [float(s) for s in text.split()]


class ResultWriter:
    """Appends rows to results.csv as each case finishes (flushed and fsynced: Ctrl-C loses nothing)."""

    def __init__(self, path: Path, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not (append and self.path.exists() and self.path.stat().st_size > 0)
        if not new:
            check_header(self.path)
        self._fh = open(self.path, "w" if new else "a", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=COLUMNS, extrasaction="ignore")
        self.rows_written = 0  # by this writer (a resumed file holds more)
        if new:
            self._writer.writeheader()
            self._sync()

    def write(self, row: dict[str, Any]) -> None:
        full = {"schema_version": SCHEMA_VERSION, **row}
        self._writer.writerow({k: ("" if v is None else v) for k, v in full.items()})
        self._sync()
        self.rows_written += 1

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_header(path: Path) -> None:
    with open(path, newline="") as fh:
        header = next(csv.reader(fh), [])
    if header != COLUMNS:
        raise SparsebenchError(f"{path}: written with a different result schema; use a new --out-dir")


def read_results(path: str | Path, allow_empty: bool = False) -> pd.DataFrame:
    """Read a results.csv and check it is one: a clear SparsebenchError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise SparsebenchError(f"{path}: no such file")
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""],
                            dtype={"params": str, "error": str, "samples_ms": str, "corpus": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SparsebenchError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise SparsebenchError(f"{path}: not a sparsebench result, missing columns: {', '.join(missing)}")
    if "schema_version" in frame.columns and len(frame):
        versions = set(frame["schema_version"].dropna().astype(int))
        if versions - {SCHEMA_VERSION}:
            raise SparsebenchError(f"{path}: schema version {sorted(versions)} but this sparsebench reads "
                                   f"version {SCHEMA_VERSION}")
    if frame.empty and not allow_empty:
        raise SparsebenchError(f"{path}: no result rows")
    for col in ("params", "error", "samples_ms"):
        if col in frame.columns:
            frame[col] = frame[col].fillna("")
    return frame


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, **meta}, indent=2, default=str) + "\n")


def read_meta(results_csv: str | Path) -> dict[str, Any]:
    """meta.json beside a results.csv, or {} when there is none."""
    meta = Path(results_csv).with_name("meta.json")
    try:
        return json.loads(meta.read_text())
    except (OSError, ValueError):
        return {}
