"""One run of a sweep into a results directory: what `sparsebench run`, `sparsebench.benchmark()` and every
shard or Slurm task (each a `sparsebench run --shard`) do.

Opening the directory comes first: its lock (one run per directory: refused, or waited for), then what it holds
(a results.csv with rows is refused unless resuming or overwriting). Then meta.json, then every case, each row
written as it finishes; a run that is interrupted keeps its finished rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsebench import environment
from sparsebench.errors import WriteFailed
from sparsebench.results import Measurement, make_row
from sparsebench.runner.cases import Case
from sparsebench.runner.config import SweepConfig
from sparsebench.runner.launcher import SweepStats
from sparsebench.runner.scale import ScalePlan
from sparsebench.runner.sweep import ResultsDir, Sweep, new_run_id


class RunReporter:
    """What a run tells whoever started it. This one tells nothing (the library's); the CLI prints."""

    def waiting(self, pid: str, out_dir: Path) -> None:
        """Another run (process `pid`) holds `out_dir`: this one waits for it."""

    def recovered(self, csv_path: Path, size: int) -> None:
        """An unfinished last row (`size` bytes, a write cut off) moved to results.csv.partial."""

    @contextmanager
    def measuring(self, to_measure: int, unsupported: int, csv_path: Path | None) -> Iterator[None]:
        """Around the cases: `to_measure` to measure and `unsupported` rows, written to `csv_path`."""
        yield

    def begin(self, case: Case) -> None:
        """A case starts in a worker."""

    def done(self, case: Case, row: dict[str, Any]) -> None:
        """A case's row is written."""

    def interrupted(self, exc: KeyboardInterrupt, rows_written: int, csv_path: Path) -> None:
        """Ctrl-C or a stop signal: the workers are gone, `rows_written` rows of this run are kept."""


@dataclass
class RunResult:
    """The rows of this run (in the order they finished), what the harness cost, where they were written."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    stats: SweepStats = field(default_factory=SweepStats)
    csv_path: Path | None = None


def run_sweep(config: SweepConfig, out_dir: Path | None, reporter: RunReporter | None = None, *,
              resume: bool = False, overwrite: bool = False, wait: bool = False, plan: ScalePlan | None = None,
              config_file: str = "") -> RunResult:
    """Measure `config` into `out_dir` (results.csv and meta.json; None: the rows only, nothing written).

    `plan`: the shard, rank and parallel slots of this process (default: the whole sweep, one worker at a
    time). Raises SparsebenchError before anything is written when the directory is held by another run (unless
    `wait`) or holds results (unless `resume` or `overwrite`).
    """
    reporter = reporter or RunReporter()
    plan = plan or ScalePlan(Path(out_dir or "."))
    sweep = Sweep(config, plan.shard, plan.slots)
    result = RunResult()
    if out_dir is None:
        cases, unsupported = sweep.cases()
        with reporter.measuring(len(cases), len(unsupported), None):
            result.stats = _measure(sweep, cases, unsupported, reporter, result.rows.append)
        return result
    out = ResultsDir(Path(out_dir), resume, overwrite)
    try:
        moved = out.open(wait, on_wait=lambda pid: reporter.waiting(pid, out.out_dir))
        out.check_serving(bool(config.seq_lens))
        if moved:
            reporter.recovered(out.csv_path, moved)
        cases, unsupported = sweep.cases(out.done(sweep.inputs))
        meta = out.start_meta(config, config_file, plan.meta(*sweep.cases()))
        result.csv_path = out.csv_path
        with out.writer() as writer, reporter.measuring(len(cases), len(unsupported), out.csv_path):

            def keep(row: dict[str, Any]) -> None:
                writer.write(row)
                result.rows.append(row)

            try:
                result.stats = _measure(sweep, cases, unsupported, reporter, keep)
            except KeyboardInterrupt as exc:
                reporter.interrupted(exc, writer.rows_written, out.csv_path)
                raise
            except WriteFailed as exc:
                raise WriteFailed(f"{exc}; it ends with its last complete row ({writer.rows_written} of this "
                                  "run); free some space, then run the same command with --resume") from None
        out.finish_meta(meta, result.stats)
    finally:
        out.lock.release()
    return result


def _measure(sweep: Sweep, cases: list[Case], unsupported: list[tuple[Case, str]], reporter: RunReporter,
             keep: Any) -> SweepStats:
    """The unsupported rows, then every case measured in worker processes; each row kept and reported."""
    run_id = new_run_id()

    def on_row(case: Case, row: dict[str, Any]) -> None:
        keep(row)
        reporter.done(case, row)

    for case, reason in unsupported:
        on_row(case, make_row(case.row(), Measurement("unsupported", reason), run_id,
                              environment.device_name(case.device)))
    return sweep.measure(cases, on_row, on_start=reporter.begin, run_id=run_id)
