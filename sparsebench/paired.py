"""Pure statistics of the same-job A/B gate: base and head measured in alternating rounds of one job.

Each round measures every case of one side once (its median latency). Rounds come in pairs, one of each side
(A B, then B A: the order alternates so that a drift that is linear in time cancels over two pairs), and a case's
evidence is the log ratio head/base of each pair. A shift that both sides of a pair share (a busier minute of
the host) cancels in that ratio; the noise left is the change from one round to the next. Per case: the
geometric mean of the pair ratios, a Student t confidence interval on the mean log ratio, and a one-sided
p-value, Holm-corrected across the cases of the gate (a family of tests: without a correction, one of 14 cases
would cross p < 0.05 by chance in half of all A/A runs).

Latency per round is the raw median, or the median divided by a reference measured in the same worker (the same
round, side and shape, seconds apart): `normalise="dense"`, the dense-SDPA median; `normalise="sdpa"` (the
default), the geometric mean of every SDPA case of the worker, the dense reference and the masked-SDPA cases (a
masked-SDPA case leaves itself out). A round-to-round shift of the host is shared by every case of a worker; the
more SDPA cases measure it, the less of their own noise the reference adds. On the 2-core VM, over the 20 stored
A/A runs of configs/ci.toml (10 pairs each, 3 SDPA cases and the dense reference per worker), the mean sd of a
case's pair log ratio was 0.191 dense-normalised, 0.166 raw and 0.147 SDPA-normalised (docs/gate/same-job.md). Like
the dense reference, the SDPA cases are assumed unchanged by the change under test: a change that slows torch's
SDPA path (or every implementation alike) moves the reference with it; gate `--raw` for such a change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
from scipy.stats import t as student_t

from sparsebench import gate
from sparsebench.errors import SparsebenchError
from sparsebench.results import KEY_COLUMNS, SHAPE_COLUMNS, as_float, case_key, complete_columns, is_dense_reference
from sparsebench.results.schema import DENSE_REFERENCE

Key = tuple[str, ...]

BASE, HEAD = "base", "head"
# A case is a latency regression when head/base is both significant (Holm-corrected one-sided p < alpha) and
# beyond this factor: a change of a few percent that many rounds make significant is not worth a red build.
DEFAULT_MIN_EFFECT = 1.05
DEFAULT_ALPHA = 0.05
# Pairs of rounds (each side measured this many times). With a per-pair sd of the log ratio of 0.1, 10 pairs
# give a standard error of 0.032: a 1.15x change is 4.4 of them, past Holm's bar for 12 cases (t > 3.4 with 9
# degrees of freedom). One round of configs/ci.toml takes 7-10 s on the 2-core VM at a load of 2 (13-20 s at a
# load of 5), the first of each side (accuracy, memory) 13-40 s: 10 pairs took 3 min 11 s (6 min 41 s at 5).
DEFAULT_ROUNDS = 10
# Fresh pairs that re-measure a flagged case. Confirming takes about as long per pair as the main rounds (a
# flagged case comes with its shape's SDPA cases, most of a round): 10 pairs put a confirmed 1.15x gate of
# configs/ci.toml at up to 415 s. Judged again on the first k of their 10 confirmation pairs, the 10 stored 1.15x
# gates still fail 9 at k = 6, 7 at k = 5 (scripts/same_job_experiments.py, docs/gate/same-job.md).
DEFAULT_CONFIRM_PAIRS = 6
NORMALISATIONS = ("raw", "dense", "sdpa")
DEFAULT_NORMALISE = "sdpa"
# Peak memory is exact on both devices (CUDA's allocator peak, CPU's peak of live tensor bytes), and in one job
# both sides are measured by the same machine and torch: no floor under the relative tolerance. The committed-
# baseline gate's 1 MiB floor would hide a 10% larger allocation of every configs/ci.toml case (2-7 MiB peaks).
MEM_FLOOR_MIB = 0.0
MIN_PAIRS = 3  # fewer pairs than this: no interval, no verdict


def schedule(pairs: int) -> list[str]:
    """The order of the rounds: A B B A A B B A ... (`pairs` rounds of each side)."""
    order: list[str] = []
    for i in range(pairs):
        order += [BASE, HEAD] if i % 2 == 0 else [HEAD, BASE]
    return order


@dataclass(frozen=True)
class PairedResult:
    """One case's paired comparison: head/base as a geometric mean, its confidence interval, p-values."""

    ratio: float  # geometric mean of the pair ratios head/base
    low: float  # confidence interval of the ratio (two-sided, 1 - alpha)
    high: float
    p_slower: float  # one-sided p-value of "head is slower" (uncorrected)
    p_faster: float  # one-sided p-value of "head is faster"
    pairs: int
    sd_log: float  # standard deviation of the pair log ratios

    @property
    def tested(self) -> bool:
        return self.pairs >= MIN_PAIRS and not math.isnan(self.p_slower)


def log_ratios(base: Sequence[float], head: Sequence[float]) -> list[float]:
    """log(head_i / base_i) of each pair whose two values are positive and finite."""
    return [math.log(h / b) for b, h in zip(base, head)
            if b > 0 and h > 0 and math.isfinite(b) and math.isfinite(h)]


def paired(base: Sequence[float], head: Sequence[float], alpha: float = DEFAULT_ALPHA) -> PairedResult:
    """The paired comparison of one case: `base[i]` and `head[i]` are the values of pair i."""
    d = log_ratios(base, head)
    n = len(d)
    if n == 0:
        return PairedResult(math.nan, math.nan, math.nan, math.nan, math.nan, 0, math.nan)
    mean = sum(d) / n
    if n < MIN_PAIRS:
        return PairedResult(math.exp(mean), math.nan, math.nan, math.nan, math.nan, n, math.nan)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    se = sd / math.sqrt(n)
    if se == 0:  # identical ratios in every pair: the sign of the mean decides
        p_slower = 0.0 if mean > 0 else 1.0
        p_faster = 0.0 if mean < 0 else 1.0
        return PairedResult(math.exp(mean), math.exp(mean), math.exp(mean), p_slower, p_faster, n, 0.0)
    t = mean / se
    half = student_t.ppf(1 - alpha / 2, n - 1) * se
    return PairedResult(math.exp(mean), math.exp(mean - half), math.exp(mean + half),
                        float(student_t.sf(t, n - 1)), float(student_t.cdf(t, n - 1)), n, sd)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count as a test)."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(order)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def verdict(result: PairedResult, p_slower_adj: float, p_faster_adj: float, alpha: float,
            min_effect: float) -> str:
    """'regression', 'improvement', 'warning' (beyond the factor and significant alone, but not once corrected
    for the number of cases) or 'ok'."""
    if not result.tested:
        return "ok"
    if result.ratio > min_effect:
        if p_slower_adj < alpha:
            return "regression"
        return "warning" if result.p_slower < alpha else "ok"
    if result.ratio < 1 / min_effect and p_faster_adj < alpha:
        return "improvement"
    return "ok"


def normalised(latency: float, dense: float, normalise: str) -> float:
    """A case's value in one round: its raw latency, or latency / dense of the same round and shape."""
    if normalise == "raw":
        return latency
    return latency / dense if dense and dense > 0 else math.nan


# --- from the rounds' result rows to a gate report -------------------------------------------------------------

Rows = list[dict[str, Any]]


def pair_values(rounds: Sequence[tuple[str, Rows]], normalise: str) -> dict[Key, tuple[list[float], list[float]]]:
    """Case key -> (base values, head values), pair by pair: the i-th round of each side make pair i (with
    `schedule`'s order they are neighbours). A case not ok in a round has NaN there (its pair is left out)."""
    if normalise not in NORMALISATIONS:
        raise SparsebenchError(f"unknown normalisation {normalise!r}; choose from: {', '.join(NORMALISATIONS)}")
    by_side: dict[str, list[dict[Key, float]]] = {BASE: [], HEAD: []}
    for side, rows in rounds:
        by_side[side].append(round_values(rows, normalise))
    pairs = min(len(by_side[BASE]), len(by_side[HEAD]))
    keys = {k for values in by_side[BASE][:pairs] + by_side[HEAD][:pairs] for k in values}
    return {k: ([r.get(k, math.nan) for r in by_side[BASE][:pairs]],
                [r.get(k, math.nan) for r in by_side[HEAD][:pairs]]) for k in keys}


def round_values(rows: Rows, normalise: str) -> dict[Key, float]:
    """Case key -> its value in one round (NaN where not ok or without a reference), normalised as NORMALISATIONS
    say: `sdpa` divides by the geometric mean of the round's other ok SDPA rows of the same shape."""
    records = complete_columns(pd.DataFrame(rows)).to_dict("records") if rows else []  # keys as the gate's
    keys = [case_key(r) for r in records]
    latency = [as_float(r.get("latency_ms")) if r.get("status") == "ok" else math.nan for r in records]
    if normalise != "sdpa":
        return {key: normalised(ms, as_float(r.get("dense_latency_ms")), normalise)
                for key, ms, r in zip(keys, latency, records)}
    sdpa: dict[tuple, list[tuple[Key, float]]] = {}
    for key, ms in zip(keys, latency):
        if key[KEY_COLUMNS.index("impl")] == DENSE_REFERENCE[1] and ms > 0:
            sdpa.setdefault(_shape(key), []).append((key, math.log(ms)))
    values = {}
    for key, ms in zip(keys, latency):
        logs = [v for k, v in sdpa.get(_shape(key), []) if k != key]
        values[key] = ms / math.exp(sum(logs) / len(logs)) if logs else math.nan
    return values


def _shape(key: Key) -> tuple:
    """A case's shape, from its key (normalised text: an empty cell is '', never a NaN unequal to itself)."""
    return tuple(key[KEY_COLUMNS.index(c)] for c in SHAPE_COLUMNS)


def first_rows(rounds: Sequence[tuple[str, Rows]], side: str) -> Rows:
    """The rows of a side's first round (deterministic metrics are the same in every round)."""
    return next((rows for s, rows in rounds if s == side), [])


def with_memory_floor(thresholds: gate.Thresholds) -> gate.Thresholds:
    """The thresholds with MEM_FLOOR_MIB as the default peak-memory floor, unless they set one."""
    if thresholds.default.peak_mem_floor_mib is not None:
        return thresholds
    return replace(thresholds, default=replace(thresholds.default, peak_mem_floor_mib=MEM_FLOOR_MIB))


def ab_report(rounds: Sequence[tuple[str, Rows]], thresholds: gate.Thresholds, *, normalise: str = DEFAULT_NORMALISE,
              min_effect: float = DEFAULT_MIN_EFFECT, deterministic: bool = True) -> gate.GateReport:
    """The gate report of head against base from alternating rounds: flops, density, memory, status and quality
    compared as `gate.compare` does (first round of each side), latency from the paired ratios of every pair
    of rounds. `deterministic=False`: their differences are warnings (two implementations may differ there)."""
    base, head = pd.DataFrame(first_rows(rounds, BASE)), pd.DataFrame(first_rows(rounds, HEAD))
    report = gate.compare(base, head, with_memory_floor(thresholds), raw=True, gate_latency=False)
    report.notes = [n for n in report.notes if "peak memory" in n]  # latency notes are the paired test's below
    report.raw, report.normalise, report.baseline_hint = normalise == "raw", normalise, False
    values = pair_values(rounds, normalise)
    gated = [c for c in report.cases if not c.presence and c.key in values
             and (normalise == "raw" or not is_dense_reference(dict(zip(KEY_COLUMNS, c.key))))]
    results = {c.key: paired(*values[c.key], alpha=thresholds.alpha) for c in gated}
    slower = holm([results[c.key].p_slower for c in gated])
    faster = holm([results[c.key].p_faster for c in gated])
    for case in report.cases:
        case.findings = [f for f in case.findings if f.metric != "latency"]
        case.base_latency = case.cur_latency = case.ratio = case.p_value = math.nan  # `compare`'s: not paired
        if not deterministic:
            for f in case.findings:
                if f.metric in ("flops_executed", "peak_mem_mib") and f.verdict == gate.REGRESSION:
                    f.verdict = gate.WARNING
    for case, p_slow, p_fast in zip(gated, slower, faster):
        result = results[case.key]
        b, h = values[case.key]
        case.base_latency, case.cur_latency = geomean(b), geomean(h)
        case.ratio = result.ratio
        case.p_value = p_slow if result.ratio >= 1 else p_fast
        found = verdict(result, p_slow, p_fast, thresholds.alpha, min_effect)
        if found != gate.OK:
            case.findings.append(gate.Finding("latency", found, describe(result, case.p_value, thresholds.alpha,
                                                                         min_effect)))
    untested = [c for c in gated if not results[c.key].tested]
    report.notes.append(f"latency: paired ratios head/base over {max((r.pairs for r in results.values()), default=0)}"
                        f" pairs of rounds ({report.latency_kind}), a regression "
                        f"beyond {min_effect:g}x with Holm-corrected p < {thresholds.alpha:g} over {len(gated)} "
                        "case(s)")
    if untested:
        report.notes.append(f"{len(untested)} case(s) had fewer than {MIN_PAIRS} pairs of ok rounds: latency not "
                            "gated for them")
    return report


def describe(result: PairedResult, p_adjusted: float, alpha: float, min_effect: float) -> str:
    """One line: the ratio, its interval, the corrected p-value and the pairs."""
    what = f"{result.ratio:.3f}x slower" if result.ratio >= 1 else f"{1 / result.ratio:.3f}x faster"
    return f"latency {what} (head/base {result.ratio:.3f}, {1 - alpha:.0%} CI {result.low:.3f}-{result.high:.3f}, " \
        f"Holm p={p_adjusted:.2g}, {result.pairs} pairs, factor {min_effect:g})"


def geomean(values: Sequence[float]) -> float:
    good = [math.log(v) for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(good) / len(good)) if good else math.nan


def confirm(report: gate.GateReport, rounds: Sequence[tuple[str, Rows]], alpha: float, normalise: str,
            min_effect: float) -> gate.GateReport:
    """Judge the latency regressions again on fresh rounds of those cases alone (Holm over them): a regression
    stands only when the new rounds show it too, otherwise it becomes a warning."""
    flagged = gate.latency_regressions(report)
    if not flagged:
        return report
    values = pair_values(rounds, normalise)
    results = [paired(*values.get(c.key, ([], [])), alpha=alpha) for c in flagged]
    adjusted = holm([r.p_slower for r in results])
    for case, result, p in zip(flagged, results, adjusted):
        again = verdict(result, p, 1.0, alpha, min_effect) == gate.REGRESSION
        text = describe(result, p, alpha, min_effect)
        if again:
            case.findings.append(gate.Finding("confirm", gate.REGRESSION, f"confirmed on fresh rounds: {text}"))
        else:
            for finding in case.findings:
                if finding.verdict == gate.REGRESSION:
                    finding.verdict = gate.WARNING
            case.findings.append(gate.Finding("confirm", gate.WARNING, f"not confirmed on fresh rounds: {text}"))
    return report
