"""Checks that a results.csv holds what sparsebench writes, before anything reads its numbers.

Every row complete, numbers finite and in range, statuses known, one row per case in each run (a resumed run
adds rows of its own run_id; two rows of one case in the same run mean two writers or an edit). A bad file is
one SparsebenchError naming the file, line and column, never a traceback or a silently wrong plot or gate.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

from sparsebench.errors import NotComparable, SparsebenchError

# Integers: the schema version and the shape (at least 1), and counts (at least 0).
POSITIVE_INTS = ("schema_version", "batch", "heads", "kv_heads", "seq_len", "q_len", "head_dim")
COUNTS = ("nnz", "n_samples", "steps", "corpus_bytes")
FRACTIONS = ("density", "block_density")
# Times are never zero; these are rates, sizes and errors, at least 0.
POSITIVE = ("latency_ms", "dense_latency_ms", "speedup_vs_dense")
NON_NEGATIVE = ("flops_useful", "flops_executed", "latency_iqr_ms", "latency_min_ms", "tflops_useful",
                "pct_of_peak", "pct_of_vendor_peak", "bytes_moved", "gbps", "pct_of_bandwidth", "nvml_peak_mib",
                "nvml_context_mib", "setup_ms", "first_call_s", "max_abs_err", "tolerance", "val_ppl", "train_s",
                "tokens_per_s")
# Peak memory is measured above what the inputs hold, so a call that frees memory can come out below 0.
ANY_FINITE = ("peak_mem_mib", "mem_ratio_vs_dense")
NAMES = ("pattern", "impl", "device", "dtype", "mode", "status")
RANGES: list[tuple[tuple[str, ...], Callable[[float], bool], str]] = [
    (FRACTIONS, lambda v: 0 <= v <= 1, "in [0, 1]"),
    (POSITIVE, lambda v: v > 0, "> 0"),
    (NON_NEGATIVE, lambda v: v >= 0, ">= 0"),
    (ANY_FINITE, lambda v: True, "finite"),
]


def check_csv(path: Path, required: list[str], statuses: tuple[str, ...], readable_versions: tuple[int, ...],
              key_columns: list[str]) -> None:
    """Raise SparsebenchError (NotComparable for another schema version) unless `path` is a sound results file."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise SparsebenchError(f"{path}: empty file, not a sparsebench result")
            rows = [(reader.line_num, record) for record in reader if record]
    except UnicodeDecodeError as exc:
        raise SparsebenchError(f"{path}: not a readable CSV (not UTF-8 text at byte {exc.start})") from None
    except csv.Error as exc:
        raise SparsebenchError(f"{path}: not a readable CSV ({exc})") from None
    _check_version(path, header, rows, readable_versions)  # another version may have other columns
    missing = [c for c in required if c not in header]
    if missing:
        raise SparsebenchError(f"{path}: not a sparsebench result, missing columns: {', '.join(missing)}")
    index = {name: i for i, name in enumerate(header)}
    seen: dict[tuple[str, ...], int] = {}
    for line, record in rows:
        if len(record) != len(header):
            what = "cut short" if len(record) < len(header) else "too long"
            raise SparsebenchError(f"{path}, line {line}: {len(record)} fields where the header has "
                                   f"{len(header)} (a row {what}: written by two runs at once, or edited)")
        row = dict(zip(header, record))
        problem = _row_problem(row, statuses)
        if problem:
            column, what = problem
            raise SparsebenchError(f"{path}, line {line}, column {column}: {what}")
        run = row.get("run_id", "")
        if run:
            key = (run, *(_canonical(row[c]) for c in key_columns if c in index))
            if key in seen:
                raise SparsebenchError(f"{path}, line {line}: the same case as line {seen[key]} in the same run "
                                       f"({run}); a file written by two runs at once, or edited")
            seen[key] = line


def _check_version(path: Path, header: list[str], rows: list[tuple[int, list[str]]],
                   readable: tuple[int, ...]) -> None:
    if "schema_version" not in header:
        return
    column = header.index("schema_version")
    versions = {record[column] for _, record in rows if len(record) > column and record[column]}
    numbers = {int(float(v)) for v in versions if _number(v) is not None}
    if numbers - set(readable):
        raise NotComparable(f"{path}: result schema version {', '.join(map(str, sorted(numbers)))}, this "
                            f"sparsebench reads version {max(readable)}; measure it again (a gate baseline: "
                            "refresh it with --update-baseline)")


def _row_problem(row: dict[str, str], statuses: tuple[str, ...]) -> tuple[str, str] | None:
    """(column, what is wrong) for the first bad value of a row, or None."""
    for column in NAMES:
        if column in row and not row[column].strip():
            return column, "empty"
    if row["status"] not in statuses:
        return "status", f"unknown status {row['status']!r}; known: {', '.join(statuses)}"
    for column in (*POSITIVE_INTS, *COUNTS):
        text = row.get(column, "")
        if text:
            value = _number(text)
            low = 1 if column in POSITIVE_INTS else 0
            if value is None or not value.is_integer() or value < low:
                return column, f"{text!r} is not an integer >= {low}"
    for columns, in_range, bound in RANGES:
        for column in columns:
            text = row.get(column, "")
            if not text:
                continue
            value = _number(text)
            if value is None:
                return column, f"{text!r} is not a finite number"
            if not in_range(value):
                return column, f"{text} is not {bound}"
    for sample in row.get("samples_ms", "").split():
        value = _number(sample)
        if value is None or value < 0:
            return "samples_ms", f"{sample!r} is not a time in ms (space-separated numbers >= 0 expected)"
    if row.get("params") and not _params_ok(row["params"]):
        return "params", f"{row['params']!r} is not key=INT;key=INT"
    if row["status"] == "ok" and not row.get("latency_ms"):
        return "latency_ms", "empty in an ok row"
    return None


def _number(text: str) -> float | None:
    """The finite float in `text`, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _params_ok(text: str) -> bool:
    for item in text.split(";"):
        key, eq, value = item.partition("=")
        if not (key and eq and value.lstrip("-").isdigit()):
            return False
    return True


def _canonical(text: str) -> str:
    """Key text as results.key_text gives it for a parsed value: '8.0' and '8' are the same case."""
    value = _number(text)
    return str(int(value)) if value is not None and value.is_integer() else text
