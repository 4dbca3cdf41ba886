"""The same-job A/B gate under `sparsebench gate --base-ref REF` and `gate --base-impl A --impl B`: base and head
measured in alternating rounds in this job, each side's workers importing that side's code, then judged on the
paired per-round ratios (`paired`), the flagged cases measured again on fresh rounds to confirm.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sparsebench import environment, gate, paired
from sparsebench.errors import SparsebenchError
from sparsebench.resolve import get_impl
from sparsebench.results import RESULTS_NAME, Measurement, ResultWriter, make_row
from sparsebench.results.schema import DENSE_REFERENCE
from sparsebench.runner import protocol
from sparsebench.runner.cases import Case
from sparsebench.runner.config import SweepConfig
from sparsebench.runner.launcher import THIS_PROCESS, WorkerSource
from sparsebench.runner.sweep import Sweep, new_run_id

Rounds = list[tuple[str, list[dict[str, Any]]]]
# Short rounds, many of them: each case's value in a round is the median of its samples, and the noise that
# matters is between rounds (the host's load over minutes), which only more rounds average out.
ROUND_MIN_RUN_TIME = 0.1
ROUND_MIN_SAMPLES = 5


@dataclass(frozen=True)
class Arm:
    """What one side measures: its sweep, the code its workers import, and how the reports name it."""

    config: SweepConfig
    source: WorkerSource
    label: str


class ABReporter:
    """What the A/B gate tells whoever started it (nothing here; the CLI prints)."""

    def round_done(self, index: int, total: int, side: str, seconds: float, failed: int) -> None:
        """Round `index` (1-based) of `total`, of `side`, took `seconds`; `failed` of its cases were not ok."""

    def confirming(self, cases: int, pairs: int) -> None:
        """The latency regressions (`cases`) are measured again in `pairs` fresh pairs of rounds."""


@dataclass
class ABResult:
    report: gate.GateReport
    rounds: Rounds  # every round's rows, confirmation rounds not included
    wall_s: float


def impl_arms(config: SweepConfig, base_impl: str, head_impl: str,
              source: WorkerSource = THIS_PROCESS) -> tuple[Arm, Arm, Callable[[dict], dict]]:
    """Two implementations of one tree: the same sweep run with `base_impl` and with `head_impl`, and the renamer
    of base rows to the head case they are compared with."""
    names = [get_impl(spec).name for spec in (base_impl, head_impl)]  # a bad name or spec: SparsebenchError
    if names[0] == names[1]:
        raise SparsebenchError(f"--base-impl and --impl name the same implementation ({names[1]})")
    return (Arm(replace(config, impls=[base_impl]), source, names[0]),
            Arm(replace(config, impls=[head_impl]), source, names[1]), impl_renamer(*names))


def run_ab(base: Arm, head: Arm, pairs: int, thresholds: gate.Thresholds, *,
           normalise: str = paired.DEFAULT_NORMALISE,
           min_effect: float = paired.DEFAULT_MIN_EFFECT, confirm_pairs: int = 0,
           rename: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
           reporter: ABReporter | None = None, out_dir: Path | None = None) -> ABResult:
    """Measure `pairs` pairs of rounds (A B B A ...), judge them, and confirm the latency regressions on
    `confirm_pairs` fresh pairs of those cases alone. `rename`: maps a base row to the head case it is compared
    with (two implementations: the base impl's rows under the head impl's name); deterministic metrics are then
    warnings, not regressions. `out_dir`: every round's rows are written there as they finish, to
    base/results.csv and head/results.csv (each round a run_id of its own, confirmation rounds included)."""
    if pairs < paired.MIN_PAIRS:
        raise SparsebenchError(f"--rounds must be at least {paired.MIN_PAIRS} (pairs of rounds), got {pairs}")
    reporter = reporter or ABReporter()
    arms = {paired.BASE: base, paired.HEAD: head}
    for arm in arms.values():
        check_protocol(arm)
    sweeps = {side: Sweep(arm.config) for side, arm in arms.items()}
    plans = {side: sweep.cases() for side, sweep in sweeps.items()}
    t0 = time.perf_counter()
    with ExitStack() as stack:
        writers = {side: stack.enter_context(ResultWriter(Path(out_dir) / side / RESULTS_NAME)) for side in arms} \
            if out_dir is not None else {}
        rounds = _rounds(arms, sweeps, plans, pairs, reporter, rename, writers=writers)
        report = paired.ab_report(rounds, thresholds, normalise=normalise, min_effect=min_effect,
                                  deterministic=rename is None)
        flagged = {c.key for c in gate.latency_regressions(report)}
        if flagged and confirm_pairs:
            reporter.confirming(len(flagged), confirm_pairs)
            only = {side: (_with_references(cases, flagged, rename if side == paired.BASE else None,
                                            sdpa=normalise == "sdpa"), [])
                    for side, (cases, _) in plans.items()}
            again = _rounds(arms, sweeps, only, confirm_pairs, reporter, rename, full_first=False, writers=writers)
            report = paired.confirm(report, again, thresholds.alpha, normalise, min_effect)
    return ABResult(report, rounds, time.perf_counter() - t0)


def _with_references(cases: list[Case], keys: set[tuple], rename: Callable | None, sdpa: bool = False) -> list[Case]:
    """The cases whose (renamed) key is in `keys`, with the dense references of their groups (`sdpa`: every SDPA
    case of their groups, the reference of `paired`'s SDPA normalisation), in sweep order."""
    def key(case: Case) -> tuple:
        return Case.from_row(rename(case.row())).key() if rename else case.key()

    chosen = [c for c in cases if key(c) in keys]
    groups = {c.group() for c in chosen}

    def reference(case: Case) -> bool:
        return case.impl == DENSE_REFERENCE[1] if sdpa else case == case.reference()

    return [c for c in cases if c in chosen or (reference(c) and c.group() in groups)]


def _rounds(arms: dict[str, Arm], sweeps: dict[str, Sweep], plans: dict, pairs: int, reporter: ABReporter,
            rename: Callable | None, full_first: bool = True, writers: dict[str, ResultWriter] | None = None) -> Rounds:
    """Measure the rounds of `schedule(pairs)`; each side's first round measures everything (accuracy, memory,
    quality: the deterministic metrics the report compares), unless `full_first` is False, the others the
    latency alone."""
    order = paired.schedule(pairs)
    rounds: Rounds = []
    full = {paired.BASE, paired.HEAD} if full_first else set()
    # one side's workers would measure everything in every round: then both sides do, to measure alike
    latency_only = all(latency_only_workers(arm.source) for arm in arms.values())
    for index, side in enumerate(order, 1):
        cases, unsupported = plans[side]
        run_id = new_run_id()
        rows: list[dict[str, Any]] = []
        writer = (writers or {}).get(side)

        def keep(_case: Case, row: dict[str, Any], rows: list[dict[str, Any]] = rows,
                 writer: ResultWriter | None = writer) -> None:
            rows.append(row)
            if writer is not None:
                writer.write(row)

        for case, why in unsupported:
            keep(case, make_row(case.row(), Measurement("unsupported", why), run_id,
                                environment.device_name(case.device)))
        started = time.perf_counter()
        sweeps[side].measure(cases, keep, run_id=run_id, ceilings=False, source=arms[side].source,
                             latency_only=latency_only and side not in full)
        full.discard(side)
        if rename is not None and side == paired.BASE:
            rows = [rename(row) for row in rows]
        failed = sum(r.get("status") not in ("ok", "unsupported") for r in rows)
        reporter.round_done(index, len(order), side, time.perf_counter() - started, failed)
        rounds.append((side, rows))
    return rounds


def worker_protocol(source: WorkerSource) -> int | None:
    """The worker protocol version of the sparsebench in `source.root` (None: a tree older than the versioned
    protocol)."""
    try:
        text = (Path(source.root) / "sparsebench" / "runner" / "protocol.py").read_text()
    except OSError:
        return None
    found = re.search(r"^VERSION = (\d+)", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def check_protocol(arm: Arm) -> None:
    """SparsebenchError unless the workers of `arm`'s tree speak this sweep's protocol: otherwise every one of its
    cases would fail to start, and a side that never ran would be judged as if it had."""
    found = worker_protocol(arm.source)
    if found != protocol.VERSION:
        speaks = f"protocol {found}" if found is not None else "a protocol older than the versioned one"
        raise SparsebenchError(f"{arm.label}: its sparsebench workers speak {speaks}, this gate's sweep speaks "
                               f"protocol {protocol.VERSION}; run the gate from a checkout whose workers speak the "
                               "same protocol")


def latency_only_workers(source: WorkerSource) -> bool:
    """True when the workers of `source` can measure latency alone (older trees' workers ignore the request and
    measure everything: then neither side asks, so that both measure their rounds the same way)."""
    try:
        return "latency_only" in (Path(source.root) / "sparsebench" / "runner" / "worker.py").read_text()
    except OSError:
        return False


def impl_renamer(base_impl_name: str, head_impl_name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Base rows of `base_impl_name` renamed to `head_impl_name` (the dense reference keeps its name)."""
    def rename(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "impl": head_impl_name} if row.get("impl") == base_impl_name else row

    return rename
