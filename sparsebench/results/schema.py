"""The result format: one tidy CSV row per case (versioned schema) plus meta.json for the environment."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from sparsebench.errors import SparsebenchError, WriteFailed
from sparsebench.measure.flops import tflops
from sparsebench.measure.peaks import vendor_peak_tflops
from sparsebench.results.check import check_csv

# 2: kv_heads and q_len (GQA/MQA and decode) join the case key; bytes_moved, gbps and the % of peak columns.
# Version 1 files are read as version 2 (kv_heads = heads, q_len = seq_len: what they measured).
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)

# Columns that identify a case: two rows with equal keys measure the same thing.
_FIRST_KEY_COLUMNS = ["pattern", "params", "impl", "device", "dtype", "mode", "batch", "heads", "kv_heads", "seq_len",
                      "q_len", "head_dim"]
# Serving cases (sparsebench/serving): a batch of sequences of different lengths, packed for prefill or decoded
# over a paged KV cache. seq_lens: the lengths as a list ('512,4096,8192') or 'uniform:LO-HI:COUNT' drawn from
# seq_lens_seed; page_size: decode's KV-cache page in tokens. Empty in every other row and in files written before
# them (so those keep their keys); batch is then the number of sequences and seq_len the longest.
SERVING_KEY_COLUMNS = ["seq_lens", "seq_lens_seed", "page_size"]
KEY_COLUMNS = [*_FIRST_KEY_COLUMNS, *SERVING_KEY_COLUMNS]
# Columns that fix a case's shape: its dense reference is the row of the same run with the same shape.
SHAPE_COLUMNS = ["device", "dtype", "mode", "batch", "heads", "kv_heads", "seq_len", "q_len", "head_dim",
                 *SERVING_KEY_COLUMNS]

# Optional columns added after the first files of this schema version, in order: empty when read from those,
# left out of the rows a resumed run appends to them. gpu_index, gpu_name: the GPU a row was measured on
# (physical NVML index and NVML name; empty on CPU); n_calls: every call of the implementation in the case;
# rel_err: max_abs_err over the largest |reference| on the same rows (what `tolerance` applies to); grad_err:
# fwdbwd, the worst relative error of dQ, dK, dV; rss_peak_mib: CPU, the RSS high-water mark of one call above
# its start (information: peak_mem_mib is the exact peak of live tensor bytes; in rows without rss_peak_mib it was
# this RSS figure); launch_overhead_ms: CUDA, a call under 0.1 ms is timed with CUDA graphs, and this is its
# event-timed median minus the graph-timed one (latency_ms).
# Selection and quality (measure/quality.py): select_ms, density_min/max (density varies by head and input),
# recall and err_vs_full against full attention, speedup_vs_full (against causal SDPA for causal patterns), and
# the inputs measured on (random, structured, or a file).
# Serving (above): the key columns, total_tokens (the batch's tokens: the packed stream, or the cached context in
# decode), padding_waste (padded baselines: the share of padded token slots that are padding); tokens_per_s is
# total_tokens per second in prefill and batch / latency (new tokens per second) in decode.
# input_id: what tells inputs of one kind apart (runner/inputs.py: the seed, or a file's content hash), so that
# the gate and --resume never take rows measured on other inputs for the same ones.
LATER_COLUMNS = ["gpu_index", "gpu_name", "n_calls", "rel_err", "grad_err", "rss_peak_mib", "launch_overhead_ms",
                 "select_ms", "density_min", "density_max", "recall", "err_vs_full", "speedup_vs_full", "inputs",
                 *SERVING_KEY_COLUMNS, "total_tokens", "padding_waste", "input_id"]
COLUMNS = [
    "schema_version", "run_id",
    *_FIRST_KEY_COLUMNS,
    "device_name", "density", "block_density", "nnz",
    "flops_useful", "flops_executed",
    "latency_ms", "latency_iqr_ms", "latency_min_ms", "n_samples", "samples_ms",
    "tflops_useful", "pct_of_peak", "pct_of_vendor_peak", "bytes_moved", "gbps", "pct_of_bandwidth",
    "dense_latency_ms", "speedup_vs_dense",
    "peak_mem_mib", "mem_ratio_vs_dense", "nvml_peak_mib", "nvml_context_mib",
    "setup_ms", "first_call_s", "max_abs_err", "tolerance",
    "status", "error",
    # `sparsebench train` rows (mode == "train"); empty for attention benchmarks
    "val_ppl", "train_s", "tokens_per_s", "corpus", "corpus_bytes", "steps",
    *LATER_COLUMNS,
]

# The columns every result file has; a file without them is not a sparsebench result.
REQUIRED_COLUMNS = [
    "pattern", "impl", "device", "dtype", "mode", "batch", "heads", "seq_len", "head_dim", "density",
    "flops_useful", "flops_executed", "latency_ms", "latency_iqr_ms", "tflops_useful", "peak_mem_mib",
    "max_abs_err", "status", "error",
]

# (pattern, impl) of the dense reference that every run measures beside its cases, on the same inputs.
DENSE_REFERENCE = ("dense", "sdpa")
# The fastest of the dense SDPA rows (sdpa and its forced backends, sdpa[cudnn], ...) of a run and shape.
BEST_DENSE_REFERENCE = ("dense", "sdpa*")


def is_dense_reference(row: dict[str, Any]) -> bool:
    """True for a dense reference case (dense SDPA; for `train` rows, the dense variant of the same run)."""
    return row["pattern"] == DENSE_REFERENCE[0] and (row["impl"] == DENSE_REFERENCE[1] or is_train(row))


# `sparsebench train` writes its rows in this schema with mode "train": runs of a model, not attention calls.
TRAIN_MODE = "train"


def is_train(row: Any) -> bool:
    """True for a row `sparsebench train` wrote."""
    return row["mode"] == TRAIN_MODE


def benchmark_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The attention benchmark rows of a frame (the `train` rows left out)."""
    return frame[frame["mode"] != TRAIN_MODE]


STATUSES = ("ok", "unsupported", "skipped", "oom", "timeout", "error", "inaccurate")
FAILED_STATUSES = ("oom", "timeout", "error", "inaccurate")


def key_text(value: Any) -> str:
    """A key value as canonical text: 8, 8.0 and "8" read the same, NaN and None read ''."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value)


GENERATED_INPUTS = ("random", "structured")  # the kinds of inputs a seed makes; anything else is a file


def recall_applies(pattern: Any, inputs: Any) -> bool:
    """Whether a row's recall and speed-up against full attention mean something: a selection pattern, or inputs
    other than random (on random q and k every pattern keeps about its share of the attention)."""
    from sparsebench.patterns import SELECTIONS

    return pattern in SELECTIONS or (isinstance(inputs, str) and inputs not in ("", "random"))


def text_cell(row: Any, column: str) -> str:
    """A text column of a row (dict): "" where missing or empty (an empty cell reads as NaN)."""
    value = row.get(column)
    return value if isinstance(value, str) else ""


def same_inputs(a: Any, b: Any) -> bool:
    """Whether two rows (dicts) were measured on the same inputs, as far as both say: where both have an
    `input_id`, the same one and the same kind (random, structured or a file, wherever the file lies); else the
    same `inputs`. A row that names no inputs (written before these columns, or an unsupported case) matches any."""
    inputs_a, inputs_b = text_cell(a, "inputs"), text_cell(b, "inputs")
    if not inputs_a or not inputs_b:
        return True
    id_a, id_b = text_cell(a, "input_id"), text_cell(b, "input_id")
    if id_a and id_b:
        def kind(inputs: str) -> str:
            return inputs if inputs in GENERATED_INPUTS else "file"

        return kind(inputs_a) == kind(inputs_b) and id_a == id_b
    return inputs_a == inputs_b


def case_key(row: Any, columns: list[str] = KEY_COLUMNS) -> tuple[str, ...]:
    """The case key of a row (dict, Series or record) as canonical text: equal keys measure the same case."""
    return tuple(key_text(_key_cell(row, c)) for c in columns)


def _key_cell(row: Any, column: str) -> Any:
    """row[column]; a serving key column that a row does not have (written before them, or by hand) is empty."""
    try:
        return row[column]
    except KeyError:
        if column in SERVING_KEY_COLUMNS:
            return None
        raise


def shape_key(row: Any) -> tuple[str, ...]:
    """The shape key: rows with equal run_id and shape key share a dense reference."""
    return case_key(row, SHAPE_COLUMNS)


def dense_ratios(row: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, float]:
    """The dense-reference columns of a row: the reference's latency, and the row's speed-up and memory ratio
    against it. Empty when either did not run."""
    ref_ms, ms = _positive(reference, "latency_ms"), _positive(row, "latency_ms")
    if not (ref_ms and ms) or reference.get("status", "ok") != "ok":
        return {}
    out = {"dense_latency_ms": ref_ms, "speedup_vs_dense": speedup(ref_ms, ms)}
    ref_mib, mib = _positive(reference, "peak_mem_mib"), _number(row, "peak_mem_mib")
    if ref_mib and mib is not None:
        out["mem_ratio_vs_dense"] = mib / ref_mib
    return out


def speedup(reference_ms: Any, latency_ms: Any) -> Any:
    """How many times faster than the reference (numbers, or pandas Series element by element)."""
    return reference_ms / latency_ms


def number(value: Any, finite: bool = False) -> float | None:
    """A cell as a number: None when it is empty, not a number or NaN (with `finite`, also when infinite)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) or (finite and math.isinf(number)) else number


def as_float(value: Any) -> float:
    """A cell as a float: NaN when it is empty or not a number (for arithmetic that carries NaN along)."""
    found = number(value)
    return math.nan if found is None else found


def _number(row: dict[str, Any] | None, column: str) -> float | None:
    return number(row.get(column)) if row is not None else None


def _positive(row: dict[str, Any] | None, column: str) -> float | None:
    value = _number(row, column)
    return value if value is not None and value > 0 else None


def latest(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per case: the last one written (a resumed run re-measures the dense reference of a shape)."""
    if frame.empty:
        return frame
    keys = frame.apply(case_key, axis=1)
    return frame[~keys.duplicated(keep="last")]


def reference_rows(frame: pd.DataFrame, reference: tuple[str, str] = DENSE_REFERENCE) -> pd.DataFrame:
    """For each row of `frame`, the ok `reference` (pattern, impl) row of the same run (run_id) and shape, indexed
    like `frame`; all NaN where that run measured no such reference. The default is the dense reference."""
    if reference == DENSE_REFERENCE:
        is_ref = frame.apply(is_dense_reference, axis=1) if len(frame) else pd.Series(dtype=bool)
    elif reference == BEST_DENSE_REFERENCE:
        is_ref = (frame["pattern"] == reference[0]) & frame["impl"].astype(str).str.startswith("sdpa")
    else:
        is_ref = (frame["pattern"] == reference[0]) & (frame["impl"] == reference[1])
    keys = [c for c in ("run_id", *SHAPE_COLUMNS) if c in frame.columns]  # hand-made frames may lack some
    refs = frame[is_ref.astype(bool) & (frame["status"] == "ok")]
    if reference == BEST_DENSE_REFERENCE:  # the fastest first
        refs = refs.sort_values("latency_ms", kind="stable").drop_duplicates(keys, keep="first")
    else:
        refs = refs.drop_duplicates(keys, keep="last")
    matched = frame[keys].merge(refs, on=keys, how="left")
    return matched.set_axis(frame.index)


def with_dense_reference(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with dense_latency_ms, speedup_vs_dense, mem_ratio_vs_dense and tflops_useful filled where they
    are empty, each row against the dense reference of its own run and shape (ratios never mix runs)."""
    out = frame.copy()
    for column in ("dense_latency_ms", "speedup_vs_dense", "mem_ratio_vs_dense", "tflops_useful", "run_id"):
        if column not in out.columns:
            out[column] = math.nan
    refs = reference_rows(out).to_dict("records")
    for i, (row, ref) in enumerate(zip(out.to_dict("records"), refs)):
        ratios = dense_ratios(row, ref if _positive(ref, "latency_ms") else None)
        for column, value in ratios.items():
            if _number(row, column) is None:
                out.iat[i, out.columns.get_loc(column)] = value
        if _number(row, "tflops_useful") is None and row["status"] == "ok":
            flops, ms = _number(row, "flops_useful"), _positive(row, "latency_ms")
            if flops is not None and ms:
                out.iat[i, out.columns.get_loc("tflops_useful")] = tflops(flops, ms)
    return out


@dataclass(frozen=True)
class Measurement:
    """What was measured for one case, named as the CSV names it (the raw samples as a tuple). Frozen, and
    checked when made (ValueError): a known status, numbers that are numbers and never negative (NaN: not
    measured), samples finite. So a worker's message that is not a measurement is found where it
    is read, not as a wrong cell in a CSV.

    A case that did not run has only `status` and `error`. `extra` holds columns of other row kinds (the
    `train` command's val_ppl, train_s, ...); `make_row` checks that they are schema columns.
    """

    status: str
    error: str = ""
    density: float | None = None
    block_density: float | None = None
    nnz: int | None = None
    flops_useful: float | None = None
    flops_executed: float | None = None
    latency_ms: float | None = None
    latency_iqr_ms: float | None = None
    latency_min_ms: float | None = None
    samples: tuple[float, ...] = ()
    tflops_useful: float | None = None
    bytes_moved: float | None = None  # decode: K and V bytes read
    peak_mem_mib: float | None = None
    nvml_peak_mib: float | None = None
    nvml_context_mib: float | None = None
    setup_ms: float | None = None
    first_call_s: float | None = None
    max_abs_err: float | None = None
    tolerance: float | None = None
    n_calls: int | None = None  # first call, warm-up, memory and timed calls together (calls made from Python: a
    #                              CUDA graph's captured calls count once, its replays not at all)
    rel_err: float | None = None
    grad_err: float | None = None  # fwdbwd only
    rss_peak_mib: float | None = None  # CPU only
    launch_overhead_ms: float | None = None  # CUDA calls timed with CUDA graphs only
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")
        if not isinstance(self.error, str):
            raise ValueError(f"error must be text, got {self.error!r}")
        object.__setattr__(self, "samples", tuple(self.samples))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("status", "error", "samples", "extra") or value is None:
                continue
            signed = f.name == "launch_overhead_ms"  # eager minus graphed latency: a graph can be the slower
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (value < 0 and not signed):
                raise ValueError(f"{f.name} must be a number{'' if signed else ' of at least 0'} or None, got "
                                 f"{value!r}")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < math.inf
                   for x in self.samples):
            raise ValueError("samples must be finite numbers of at least 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as None): what a worker sends."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else list(v) if k == "samples" else v)
                for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """A measurement from its JSON (ValueError on unknown fields or values that are not a measurement)."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"not measurement fields: {', '.join(sorted(unknown))}")
        return cls(**data)


def make_row(case: dict[str, Any], measured: Measurement, run_id: str, device_name: str = "",
             reference: dict[str, Any] | None = None, ceilings: dict[str, float] | None = None) -> dict[str, Any]:
    """The CSV row of a case: its key columns (`case`), the run, what was measured and, when `reference` (the
    dense reference row of the same run and shape) is given, the ratios against it. `ceilings`: the device's
    measured ceilings for the case's dtype ({'matmul_tflops': .., 'copy_gbps': ..}), for the % of peak."""
    unknown = set(measured.extra) - set(COLUMNS)
    if unknown:
        raise ValueError(f"not result columns: {', '.join(sorted(unknown))}")
    values = {k: v for k, v in asdict(measured).items() if k not in ("samples", "extra")}
    row = {**case, "run_id": run_id, "device_name": device_name, **values, **measured.extra}
    if measured.samples:
        row["n_samples"] = len(measured.samples)
        row["samples_ms"] = format_samples(measured.samples)
    row.update(dense_ratios(row, reference))
    row.update(peak_fractions(row, ceilings or {}))
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def peak_fractions(row: dict[str, Any], ceilings: dict[str, float]) -> dict[str, float]:
    """gbps, and the row's rate as a fraction of the measured ceilings (pct_of_peak: matmul TFLOP/s,
    pct_of_bandwidth: copy GB/s) and of the vendor's datasheet peak for known GPUs (pct_of_vendor_peak)."""
    out: dict[str, float] = {}
    rate, moved, ms = _number(row, "tflops_useful"), _number(row, "bytes_moved"), _positive(row, "latency_ms")
    if moved is not None and ms:
        out["gbps"] = moved / (ms * 1e-3) / 1e9
    if rate is not None and ceilings.get("matmul_tflops"):
        out["pct_of_peak"] = 100 * rate / ceilings["matmul_tflops"]
    vendor = vendor_peak_tflops(str(row.get("device_name") or ""), str(row.get("dtype")))
    if rate is not None and vendor:
        out["pct_of_vendor_peak"] = 100 * rate / vendor
    # Serving rows on a CPU: no % of bandwidth. Its peak bandwidth is not known (the copy ceiling measured there
    # shares the cores and caches with the call); GPUs' is.
    serving_on_cpu = bool(row.get("seq_lens")) and str(row.get("device")) == "cpu"
    if "gbps" in out and ceilings.get("copy_gbps") and not serving_on_cpu:
        out["pct_of_bandwidth"] = 100 * out["gbps"] / ceilings["copy_gbps"]
    return out


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
    """Appends rows to results.csv as each case finishes, one write and fsync per row (Ctrl-C loses nothing).

    A write that fails (disk full, I/O error) is cut back to the last complete row and raises WriteFailed, so
    the file stays readable and `--resume` carries on from it once there is space again.
    """

    def __init__(self, path: Path, append: bool = False) -> None:
        self.path = Path(path)
        self.rows_written = 0  # by this writer (a resumed file holds more)
        new = not (append and self.path.exists() and self.path.stat().st_size > 0)
        self.header = COLUMNS if new else check_header(self.path)  # an older file keeps its columns
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if new else os.O_APPEND), 0o644)
        except OSError as exc:
            raise WriteFailed(f"cannot write {self.path}: {exc.strerror or exc}") from None
        if new:
            self._append(COLUMNS)

    def write(self, row: dict[str, Any]) -> None:
        full = {"schema_version": SCHEMA_VERSION, **row}
        self._append(["" if full.get(c) is None else full[c] for c in self.header], row=True)

    def _append(self, values: list[Any], row: bool = False) -> None:
        """Write one CSV record and fsync it; on failure, cut the file back to where the record began. A row
        that is in the file is counted in rows_written, also when a signal arrives after its last byte."""
        text = io.StringIO()
        csv.writer(text).writerow(values)
        data = memoryview(text.getvalue().encode())
        start = os.lseek(self._fd, 0, os.SEEK_END)
        counted = self.rows_written
        try:
            rest = data
            while rest:
                rest = rest[os.write(self._fd, rest):]
            os.fsync(self._fd)
            self.rows_written = counted + row
        except BaseException as exc:
            # A signal between two partial writes leaves half a record: cut it too. An OSError (ENOSPC)
            # leaves at most part of a record, maybe not on disk: always cut. A whole record (a signal during
            # the fsync) stays, and counts.
            if isinstance(exc, OSError) or os.fstat(self._fd).st_size != start + len(data):
                os.ftruncate(self._fd, start)
            else:
                self.rows_written = counted + row
            if isinstance(exc, OSError):
                raise WriteFailed(f"cannot write {self.path}: {exc.strerror or exc}") from None
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def recover_partial_row(path: Path) -> int:
    """Move an unfinished last line of `path` (a write cut off by a crash or a kill) to `path`.partial, so that
    the file ends with its last complete row; returns the bytes moved (0 when the file ends cleanly)."""
    if not path.is_file():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    cut = data.rfind(b"\n") + 1  # 0 when not even the header is complete
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "ab") as fh:
            fh.write(data[cut:] + b"\n")
        with open(path, "r+b") as fh:
            fh.truncate(cut)
    except OSError as exc:
        raise WriteFailed(f"cannot move the unfinished last row of {path} aside: {exc.strerror or exc}") from None
    return len(data) - cut


def check_header(path: Path) -> list[str]:
    """The file's columns: this schema's, or the first of them (a file written before optional columns were
    added at the end); raise for any other header, which is another schema: rows cannot be appended to it."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
    except (UnicodeDecodeError, csv.Error):
        header = []
    if not header or header != COLUMNS[:len(header)] or len(header) < len(COLUMNS) - len(LATER_COLUMNS):
        raise SparsebenchError(f"{path}: written with a different result schema (its header differs); "
                               "use a new --out-dir")
    return header


def read_results(path: str | Path, allow_empty: bool = False) -> pd.DataFrame:
    """Read a results.csv and check it is one (check.py): a one-line SparsebenchError otherwise."""
    path = Path(path)
    if path.is_dir():
        raise SparsebenchError(f"{path}: is a directory, not a results file (give {path / 'results.csv'})")
    if not path.is_file():
        raise SparsebenchError(f"{path}: no such file")
    check_csv(path, REQUIRED_COLUMNS, STATUSES, READABLE_VERSIONS, KEY_COLUMNS)
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""],
                            dtype={"params": str, "error": str, "samples_ms": str, "corpus": str, "inputs": str,
                                   "input_id": str, "seq_lens": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SparsebenchError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    if frame.empty and not allow_empty:
        raise SparsebenchError(f"{path}: no result rows")
    frame = complete_columns(frame)
    for col in ("params", "error", "samples_ms"):
        if col in frame.columns:
            frame[col] = frame[col].fillna("")
    frame["params"] = [_current_params(p, t) for p, t in zip(frame["pattern"], frame["params"])]
    return frame


def _current_params(pattern: str, text: str) -> str:
    """A row's params under the pattern's current parameter names (e.g. bigbird's seed, now mask_seed), so
    rows written before a rename keep their case key."""
    from sparsebench.patterns import PATTERNS, current_names

    if pattern not in PATTERNS or not text:
        return text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return format_params(current_names(pattern, parse_params(text)))


def complete_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Every schema column, in place: version 1 rows read as version 2 (multi-head attention over the full
    sequence: kv_heads = heads, q_len = n), and the other columns a frame lacks empty."""
    if "kv_heads" not in frame.columns:
        frame.insert(frame.columns.get_loc("heads") + 1, "kv_heads", frame["heads"])
    if "q_len" not in frame.columns:
        frame.insert(frame.columns.get_loc("seq_len") + 1, "q_len", frame["seq_len"])
    frame["kv_heads"] = frame["kv_heads"].fillna(frame["heads"])  # rows written without them
    frame["q_len"] = frame["q_len"].fillna(frame["seq_len"])
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = "" if column in ("params", "error", "samples_ms", "corpus", "inputs", "input_id",
                                             "seq_lens") \
                else math.nan
    frame["schema_version"] = SCHEMA_VERSION
    return frame


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    """Write meta.json whole or not at all (a temporary file renamed over it): a full disk never leaves half."""
    text = json.dumps({"schema_version": SCHEMA_VERSION, **meta}, indent=2, default=str) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WriteFailed(f"cannot write {path}: {exc.strerror or exc}") from None


Ceilings = dict[str, dict[str, dict[str, float]]]  # device type -> dtype -> {metric: value}


def ceilings_for(meta: dict[str, Any], device: str, dtype: str) -> dict[str, float]:
    """The device's measured ceilings for a dtype ({'matmul_tflops': .., 'copy_gbps': ..}) from a meta.json.

    Reads meta["ceilings"] as {device: {dtype: {metric: value}}}, and the older {metric: {dtype: value}}
    layout (which did not name the device: taken as the ceilings of the run's only device).
    """
    ceilings = meta.get("ceilings")
    if not isinstance(ceilings, dict):
        return {}
    by_dtype = ceilings.get(device)
    if isinstance(by_dtype, dict):
        values = by_dtype.get(dtype)
        return {k: float(v) for k, v in values.items() if _is_number(v)} if isinstance(values, dict) else {}
    # older layouts: {metric: {dtype: value}} or {metric: value}
    old = {metric: values.get(dtype) if isinstance(values, dict) else values for metric, values in ceilings.items()
           if metric.endswith(("_tflops", "_gbps"))}
    devices = (meta.get("config") or {}).get("devices") if isinstance(meta.get("config"), dict) else None
    if isinstance(devices, list) and len(devices) == 1 and str(devices[0]).split(":")[0] not in (device, "auto"):
        return {}
    return {k: float(v) for k, v in old.items() if _is_number(v)}


def merge_ceilings(old: Any, new: Ceilings) -> Ceilings:
    """device -> dtype -> metrics, the new measurements over the old (old files' layout is dropped)."""
    merged: Ceilings = {}
    for source in (old if isinstance(old, dict) else {}, new):
        for device, by_dtype in source.items():
            if isinstance(by_dtype, dict) and all(isinstance(v, dict) for v in by_dtype.values()):
                for dtype, values in by_dtype.items():
                    if values:
                        merged.setdefault(device, {})[dtype] = dict(values)
    return merged


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_writable(out_dir: Path, option: str = "--out-dir") -> None:
    """Raise SparsebenchError unless files can be created in `out_dir` (made when missing): checked before the
    work whose results would go there."""
    probe = Path(out_dir) / f".sparsebench-write-test-{os.getpid()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise SparsebenchError(f"cannot write to {option} {out_dir}: {exc.strerror or exc}") from None


# meta.json keys that readers use, and the JSON type each must have.
META_TYPES = {"config": dict, "ceilings": dict, "earlier_runs": list}


def read_meta(results_csv: str | Path) -> dict[str, Any]:
    """meta.json beside a results.csv, or {} when there is none; SparsebenchError when it is not one."""
    path = Path(results_csv).with_name("meta.json")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SparsebenchError(f"{path}: not readable JSON ({str(exc).splitlines()[0]}); fix or delete it") from None
    if not isinstance(meta, dict):
        raise SparsebenchError(f"{path}: a JSON {type(meta).__name__}, not an object; fix or delete it")
    for key, kind in META_TYPES.items():
        if key in meta and not isinstance(meta[key], kind):
            raise SparsebenchError(f"{path}: {key!r} must be a JSON {'object' if kind is dict else kind.__name__}"
                                   f", got {json.dumps(meta[key])[:40]}; fix or delete it")
    return meta
