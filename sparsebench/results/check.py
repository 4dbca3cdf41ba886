"""Checks that a results.csv holds what sparsebench writes, before anything reads its numbers.

Every row complete, every value in its column's domain (DOMAINS: numbers finite and in range, names known),
one row per case in each run (a resumed run adds rows of its own run_id; two rows of one case in the same run
mean two writers or an edit). A bad file is one SparsebenchError naming the file, line and column, never a
traceback or a silently wrong plot or gate.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sparsebench.errors import NotComparable, SparsebenchError

# The names a results file may hold (runner.cases.DTYPES and MODES, and `train`'s rows; a test keeps them equal).
DTYPE_NAMES = ("float32", "bfloat16", "float16")
MODE_NAMES = ("fwd", "fwdbwd", "decode", "train")


@dataclass(frozen=True)
class Domain:
    """What a column may hold: `problem(column, text)` says what is wrong with a non-empty cell, or None;
    `required`: an empty cell is wrong too."""

    problem: Callable[[str, str], str | None]
    required: bool = False


def integer(low: int) -> Domain:
    """A whole number >= low."""
    def problem(_column: str, text: str) -> str | None:
        value = _number(text)
        return None if value is not None and value.is_integer() and value >= low else \
            f"{text!r} is not an integer >= {low}"
    return Domain(problem)


def number(in_range: Callable[[float], bool], bound: str) -> Domain:
    """A finite number for which in_range holds (`bound` says it in words)."""
    def problem(_column: str, text: str) -> str | None:
        value = _number(text)
        if value is None:
            return f"{text!r} is not a finite number"
        return None if in_range(value) else f"{text} is not {bound}"
    return Domain(problem)


def one_of(*names: str) -> Domain:
    """One of `names`, never empty."""
    return Domain(lambda column, text: None if text in names else
                  f"unknown {column} {text!r}; known: {', '.join(names)}", required=True)


def matching(regex: str, what: str) -> Domain:
    """Text that matches `regex` whole, never empty; `what` names the form."""
    compiled = re.compile(regex)
    return Domain(lambda _column, text: None if compiled.fullmatch(text) else f"{text!r} is not {what}",
                  required=True)


FINITE = number(lambda _v: True, "finite")
TEXT = Domain(lambda _column, _text: None)  # free text (names of machines, errors, corpora)
NAME = Domain(lambda _column, _text: None, required=True)  # a name that must be there (plugins add their own)
FRACTION = number(lambda v: 0 <= v <= 1, "in [0, 1]")
POSITIVE = number(lambda v: v > 0, "> 0")  # times are never zero
NON_NEGATIVE = number(lambda v: v >= 0, ">= 0")  # rates, sizes, errors, and peak memory (measured above the
#                                                  inputs, and never below 0: measure.memory clamps it)


def _samples_problem(_column: str, text: str) -> str | None:
    for sample in text.split():
        value = _number(sample)
        if value is None or value < 0:
            return f"{sample!r} is not a time in ms (space-separated numbers >= 0 expected)"
    return None


SAMPLES = Domain(_samples_problem)
PARAMS = Domain(lambda _column, text: None if _params_ok(text) else f"{text!r} is not key=INT;key=INT")

# Every column of the result schema (results.COLUMNS) and its domain: a new column is one line here. Columns a
# file has beyond these (a newer sparsebench's, a user's) are not checked. `status` is checked against the
# statuses check_csv is given.
DOMAINS: dict[str, Domain] = {
    "schema_version": integer(1),
    "run_id": TEXT,
    "pattern": NAME,
    "params": PARAMS,
    "impl": NAME,
    "device": matching(r"cpu|cuda(:[0-9]+)?", "a device (cpu, cuda or cuda:N)"),
    "dtype": one_of(*DTYPE_NAMES),
    "mode": one_of(*MODE_NAMES),
    "batch": integer(1),
    "heads": integer(1),
    "kv_heads": integer(1),
    "seq_len": integer(1),
    "q_len": integer(1),
    "head_dim": integer(1),
    "device_name": TEXT,
    "density": FRACTION,
    "block_density": FRACTION,
    "nnz": integer(0),
    "flops_useful": NON_NEGATIVE,
    "flops_executed": NON_NEGATIVE,
    "latency_ms": POSITIVE,
    "latency_iqr_ms": NON_NEGATIVE,
    "latency_min_ms": NON_NEGATIVE,
    "n_samples": integer(0),
    "samples_ms": SAMPLES,
    "tflops_useful": NON_NEGATIVE,
    "pct_of_peak": NON_NEGATIVE,
    "pct_of_vendor_peak": NON_NEGATIVE,
    "bytes_moved": NON_NEGATIVE,
    "gbps": NON_NEGATIVE,
    "pct_of_bandwidth": NON_NEGATIVE,
    "dense_latency_ms": POSITIVE,
    "speedup_vs_dense": POSITIVE,
    "peak_mem_mib": NON_NEGATIVE,
    "mem_ratio_vs_dense": NON_NEGATIVE,
    "nvml_peak_mib": NON_NEGATIVE,
    "nvml_context_mib": NON_NEGATIVE,
    "setup_ms": NON_NEGATIVE,
    "first_call_s": NON_NEGATIVE,
    "max_abs_err": NON_NEGATIVE,
    "tolerance": NON_NEGATIVE,
    "status": NAME,  # and one of the statuses check_csv is given
    "error": TEXT,
    "val_ppl": NON_NEGATIVE,
    "train_s": NON_NEGATIVE,
    "tokens_per_s": NON_NEGATIVE,
    "corpus": TEXT,
    "corpus_bytes": integer(0),
    "steps": integer(0),
    "gpu_index": integer(0),
    "gpu_name": TEXT,
    "n_calls": integer(0),
    "rel_err": NON_NEGATIVE,
    "grad_err": NON_NEGATIVE,
    "rss_peak_mib": NON_NEGATIVE,
    "launch_overhead_ms": FINITE,  # a difference of two medians: noise can make it negative
    "select_ms": NON_NEGATIVE,
    "density_min": FRACTION,
    "density_max": FRACTION,
    "recall": FRACTION,
    "err_vs_full": NON_NEGATIVE,
    "speedup_vs_full": POSITIVE,
    "inputs": TEXT,  # random, structured, or the file measured on
    "input_id": Domain(lambda _column, text: None if re.fullmatch(r"(sha256=[0-9a-f]{16};)?seed=\d+", text) else
                       f"{text!r} is not seed=N or sha256=(16 hex digits);seed=N"),
    "seq_lens": Domain(lambda _column, text: None if re.fullmatch(r"uniform:\d+-\d+:\d+|\d+(,\d+)*", text) else
                       f"{text!r} is not lengths (512,4096) or uniform:LO-HI:COUNT"),
    "seq_lens_seed": integer(0),
    "page_size": integer(1),
    "total_tokens": integer(1),
    "padding_waste": FRACTION,
}


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
    domains = {**DOMAINS, "status": one_of(*statuses)}
    seen: dict[tuple[str, ...], int] = {}
    for line, record in rows:
        if len(record) != len(header):
            what = "cut short" if len(record) < len(header) else "too long"
            raise SparsebenchError(f"{path}, line {line}: {len(record)} fields where the header has "
                                   f"{len(header)} (a row {what}: written by two runs at once, or edited)")
        row = dict(zip(header, record))
        problem = _row_problem(row, domains)
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


def _row_problem(row: dict[str, str], domains: dict[str, Domain]) -> tuple[str, str] | None:
    """(column, what is wrong) for the first bad value of a row, or None."""
    for column, domain in domains.items():
        text = row.get(column, "")
        if domain.required and column in row and not text.strip():
            return column, "empty"
        problem = domain.problem(column, text) if text else None
        if problem:
            return column, problem
    if row["status"] == "ok" and not row.get("latency_ms"):
        return "latency_ms", "empty in an ok row"
    samples = [float(s) for s in row.get("samples_ms", "").split()]
    if samples and row.get("latency_ms"):  # latency_ms is the samples' median, which the gate's test reads
        median = statistics.median(samples)
        latency = float(row["latency_ms"])
        if abs(latency - median) > 1e-4 * max(abs(median), 1e-9):  # the samples are written to 6 digits
            return "latency_ms", f"{row['latency_ms']} is not the median of samples_ms ({median:.6g}): an edit?"
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
