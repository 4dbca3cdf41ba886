"""A sweep from its configuration to its result files: cases, resume, meta.json and the measuring workers.

`Sweep` is what `run` and `gate --confirm` share (the cases of a config, measured with its settings);
`ResultsDir` is one --out-dir: what a resumed run keeps, the meta.json it merges, the row writer.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparsebench import environment, plugins
from sparsebench.errors import SparsebenchError
from sparsebench.results import (
    RESULTS_NAME,
    Meta,
    ResultWriter,
    case_key,
    check_header,
    merge_ceilings,
    read_meta,
    read_results,
    recover_partial_row,
    same_inputs,
    write_meta,
)
from sparsebench.runner.cases import Case, MeasureSettings
from sparsebench.runner.config import SweepConfig, expand
from sparsebench.runner.gpus import Slot
from sparsebench.runner.inputs import input_id
from sparsebench.runner.launcher import THIS_PROCESS, SweepStats, WorkerSource, run_cases
from sparsebench.runner.lock import DirLock
from sparsebench.runner.shard import Shard

OnRow = Callable[[Case, dict[str, Any]], None]


class Sweep:
    """The cases of one configuration and the settings they are measured with; `shard`: only that part of the
    sweep; `slots`: measure on these GPUs (or CPU shares) in parallel instead of one group after another."""

    def __init__(self, config: SweepConfig, shard: Shard | None = None, slots: list[Slot] | None = None) -> None:
        self.config = config
        self.shard = shard
        self.slots = slots or []

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Sweep:
        """The timing settings and the inputs a results file was measured with (its meta.json's config),
        defaults elsewhere."""
        plugins.load_recorded(meta)  # user code the results were measured with: its cases must build again
        saved = (meta if isinstance(meta, Meta) else Meta(meta)).config
        names = ("timeout", "min_run_time", "min_samples", "warmup", "inputs", "input_seed")
        return cls(SweepConfig(**{k: saved[k] for k in names if k in saved}))

    @property
    def settings(self) -> MeasureSettings:
        c = self.config
        return MeasureSettings(min_run_time=c.min_run_time, min_samples=c.min_samples, warmup=c.warmup,
                               inputs=c.inputs, input_seed=c.input_seed)

    @property
    def inputs(self) -> dict[str, str]:
        """The row columns naming the inputs measured on: their kind (a file's path) and `input_id`."""
        return {"inputs": self.config.inputs, "input_id": input_id(self.config.inputs, self.config.input_seed)}

    def cases(self, done: set[tuple] = frozenset()) -> tuple[list[Case], list[tuple[Case, str]]]:
        """(cases to measure, (case, reason) of unsupported ones), leaving out the keys in `done`.

        A shape group with any case left to measure keeps its dense reference, measured again even when it is
        done: every speed-up compares two measurements of the same run.
        """
        cases, unsupported = expand(self.config)
        if self.shard is not None:
            cases, unsupported = self.shard.select(cases, unsupported)
        left = {c.group() for c in cases if c.key() not in done}
        cases = [c for c in cases if c.key() not in done or (c == c.reference() and c.group() in left)]
        return cases, [(c, r) for c, r in unsupported if c.key() not in done]

    def measure(self, cases: list[Case], on_row: OnRow, on_start: Callable[[Case], None] | None = None,
                run_id: str | None = None, ceilings: bool = True,
                source: WorkerSource = THIS_PROCESS, latency_only: bool = False) -> SweepStats:
        """Measure `cases` (grouped by shape, each group's dense reference first) in worker processes (that
        import `source`'s code; parallel slots: this process's; `latency_only`: see `measure_case.measure`)."""
        names = {d: environment.device_name(d) for d in {c.device for c in cases}}
        inputs, given = self.inputs, on_row

        def on_row(case: Case, row: dict[str, Any]) -> None:
            # every row names its inputs, a failed one too (here, not in the worker: a worker of another
            # checkout, the gate's base side, need not know the column)
            given(case, {**row, **inputs})

        if self.slots:
            from sparsebench.runner.parallel import run_parallel

            return run_parallel(cases, self.settings, on_row, self.slots, on_start=on_start,
                                timeout_s=self.config.timeout, run_id=run_id or new_run_id(), device_names=names,
                                ceilings=ceilings)
        return run_cases(cases, self.settings, on_row, on_start=on_start, timeout_s=self.config.timeout,
                         run_id=run_id or new_run_id(), device_names=names, ceilings=ceilings, source=source,
                         latency_only=latency_only)


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class ResultsDir:
    """One output directory: results.csv (rows appended and fsynced as they finish) and meta.json.

    `open` locks the directory and checks what it holds before anything is written; a sweep that fails
    validation leaves the directory as it was, and an existing results.csv is only ever replaced on request.
    """

    def __init__(self, out_dir: Path, resume: bool, overwrite: bool = False) -> None:
        if resume and overwrite:
            raise SparsebenchError("--resume keeps results.csv and --overwrite replaces it: give one of them")
        self.out_dir = Path(out_dir)
        self.resume = resume
        self.overwrite = overwrite
        self.csv_path = self.out_dir / RESULTS_NAME
        self.meta_path = self.out_dir / "meta.json"
        self.lock = DirLock(self.out_dir)

    def open(self, wait: bool = False, on_wait: Callable[[str], None] | None = None) -> int:
        """Lock the directory (held until the process ends) and check its results.csv: refused when it holds
        rows and neither --resume nor --overwrite is given. When resuming, an unfinished last row (a write cut
        off by a crash) moves to results.csv.partial; returns its size in bytes (0: none)."""
        self.lock.acquire(wait, on_wait)
        if not self.resume:
            if not self.overwrite and _lines(self.csv_path) > 1:
                raise SparsebenchError(f"{self.csv_path} already holds results: add --resume to continue that run, "
                                       "or --overwrite to replace it (or choose another --out-dir)")
            return 0
        if _lines(self.csv_path):  # not a cut-off header: a file of another schema is left as it is
            check_header(self.csv_path)
        read_meta(self.csv_path)  # a broken meta.json stops the run here, before anything is moved
        return recover_partial_row(self.csv_path)

    def done(self, inputs: dict[str, str] | None = None) -> set[tuple]:
        """Keys of the cases already in results.csv (when resuming) that were measured on `inputs` (the row
        columns `Sweep.inputs` gives; default: random, seed 0): a case measured on others is measured again. A
        row that names no inputs (unsupported rows, files written before these columns) counts for any."""
        if not (self.resume and self.csv_path.exists() and self.csv_path.stat().st_size > 0):
            return set()
        inputs = inputs or {"inputs": "random", "input_id": "seed=0"}
        rows = read_results(self.csv_path, allow_empty=True).to_dict("records")
        return {case_key(row) for row in rows if same_inputs(row, inputs)}

    def writer(self) -> ResultWriter:
        return ResultWriter(self.csv_path, append=self.resume)

    def check_serving(self, serving: bool) -> None:
        """A serving sweep cannot resume a file whose header predates the serving key columns: its rows would
        lose their lengths."""
        if serving and self.resume and _lines(self.csv_path) and "seq_lens" not in check_header(self.csv_path):
            raise SparsebenchError(f"{self.csv_path} was written before the serving columns (seq_lens, ...): run "
                                   "--seq-lens into another --out-dir")

    def start_meta(self, config: SweepConfig, config_file: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """This run's meta.json, written before the first case; a resumed run keeps the earlier runs' meta
        under `earlier_runs` and their ceilings. `extra`: more keys (the
        shard and its cases, the rank, the GPUs)."""
        patterns = {spec.partition(":")[0] for spec in config.patterns}
        used = plugins.LOADED.used(set(config.impls), patterns).origins
        meta = environment.collect({"config": dataclasses.asdict(config), "config_file": config_file,
                                    "plugins": used, **(extra or {})})
        old = read_meta(self.csv_path) if self.resume else {}
        if old:
            runs = old.pop("earlier_runs", [])
            old.pop("schema_version", None)
            meta["earlier_runs"] = [*runs, old]
            meta["ceilings"] = merge_ceilings(old.get("ceilings"), {})
        write_meta(self.meta_path, meta)
        return meta

    def finish_meta(self, meta: dict[str, Any], stats: SweepStats) -> None:
        """Add what the sweep measured about the device and itself."""
        starts = stats.worker_starts_s
        meta["ceilings"] = merge_ceilings(meta.get("ceilings"), stats.ceilings)
        if stats.ceiling_notes:
            meta["ceiling_notes"] = stats.ceiling_notes
        if stats.gpus:
            meta["gpus_used"] = stats.gpus
        meta["harness"] = {"wall_s": round(stats.wall_s, 2), "workers": len(starts),
                           "worker_start_mean_s": round(sum(starts) / len(starts), 3) if starts else None}
        write_meta(self.meta_path, meta)


def _lines(path: Path) -> int:
    """Complete (newline-ended) non-blank lines of a file; 0 when there is none. More than one: it holds rows."""
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.endswith(b"\n") and line.strip())
    except FileNotFoundError:
        return 0
