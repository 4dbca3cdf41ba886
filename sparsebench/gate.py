"""Pure comparison logic for `sparsebench gate`: two result frames in, verdicts out (no I/O, no exits).

Deterministic metrics (flops_executed, density, allocator peak memory, status) are gated tightly.
Latency is gated robustly: by default each case's latency is divided by the dense-SDPA latency of
the same run and shape, so that machine speed cancels, and a regression needs both a ratio beyond a
threshold and a significant one-sided Mann-Whitney U test on the (normalised) raw samples; where a file lacks
the samples that test needs, the ratio alone decides (a missing statistic never passes a regression).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd
from scipy.stats import mannwhitneyu

from sparsebench.errors import NotComparable, SparsebenchError
from sparsebench.gate_quality import quality_findings
from sparsebench.results import (
    FAILED_STATUSES,
    KEY_COLUMNS,
    SHAPE_COLUMNS,
    as_float,
    case_key,
    complete_columns,
    is_dense_reference,
    key_text,
    parse_samples,
    shape_key,
    with_dense_reference,
)
from sparsebench.results.labels import pattern_label, serving_text
from sparsebench.runner.cases import Case

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MIN_SAMPLES = 3  # fewer samples than this on either side: no significance test, the ratio alone decides
# How each case's latency is made comparable across runs (`compare(normalise=...)`):
#   dense: divided by the dense-SDPA latency of the same run and shape;
#   shape: that, then divided by the median current/baseline ratio of the shape's cases (the dense reference's
#          own 1.0 included), so that a shift every case of the shape shares (the one dense measurement having
#          been slowed or sped up, a busier machine) is taken out, and a case is flagged only for moving
#          against the rest of its shape. Needs SHAPE_MIN_CASES compared cases in the shape, else: dense.
NORMALISATIONS = ("shape", "dense")
SHAPE_MIN_CASES = 4
# Re-runs of a case whose latency regressed (`confirm`); it stands when it regresses again in most of them.
DEFAULT_CONFIRM = 3
# Default tolerances of the peak-memory check, by device: 5%, and 1 MiB. Both figures are exact, the same in
# every run of a case: CUDA's allocator peak, and on CPU the peak of live tensor bytes that the profiler's memory
# events give (measure/memory.py; docs/accuracy/README.md: 10 runs of a case, one figure). CPU rows written
# before that (no rss_peak_mib column) hold the RSS high-water mark, which depends on the heap's history (one
# case measured 35, 51 and 67 MiB with the same allocations): their peak memory is not compared.
MEM_TOLERANCE = {"cuda": 0.05, "cpu": 0.05}
# Default latency thresholds by device (normalised ratio current/baseline beyond which a case is slower).
# CPU: on this project's shared 2-core VMs a single memory-bound case runs 1.2-1.5x slower against the rest of
# its shape for a minute or more while the host is busy, and re-runs right away reproduce it: 23 fresh A/A runs
# of configs/ci.toml at 1.15 with 3 re-runs gave 5 false alarms, 30 at 1.5 none (docs/gate/README.md).
# CUDA: a dedicated device, 1.15 (no A/A runs made there yet).
LATENCY_THRESHOLD = {"cuda": 1.15, "cpu": 1.5}
MEM_FLOOR_MIB = {"cuda": 1.0, "cpu": 1.0}

OK, IMPROVEMENT, WARNING, REGRESSION = "ok", "improvement", "warning", "regression"
MISSING, NEW = "missing", "new"  # a case in only one of the two result sets (reported, never fails)
SEVERITY = {OK: 0, NEW: 1, MISSING: 1, IMPROVEMENT: 2, WARNING: 3, REGRESSION: 4}

Key = tuple[str, ...]
# Re-runs a list of cases and returns their result rows.
Rerun = Callable[[list[Case]], pd.DataFrame]

__all__ = ["NotComparable", "Thresholds", "Limits", "compare", "confirm"]


@dataclass(frozen=True)
class Limits:
    """Thresholds for one case."""

    latency: float | None = None  # ratio current/baseline beyond which a case is slower (1/x: faster); None: by
    #                               device (LATENCY_THRESHOLD)
    peak_mem: float | None = None  # relative tolerance on peak memory; None: by device (MEM_TOLERANCE)
    peak_mem_floor_mib: float | None = None  # a change below this many MiB is never flagged; None: by device

    def __post_init__(self) -> None:
        if self.latency is not None and not (math.isfinite(self.latency) and self.latency > 1):
            raise SparsebenchError(f"latency threshold must be a ratio > 1 (e.g. 1.15), got {self.latency}")
        floor, tolerance = self.peak_mem_floor_mib or 0, self.peak_mem or 0
        if not (math.isfinite(tolerance) and tolerance >= 0 and math.isfinite(floor) and floor >= 0):
            raise SparsebenchError("peak_mem and peak_mem_floor_mib tolerances must be finite numbers >= 0")

    def mem_floor(self, device: str) -> float:
        if self.peak_mem_floor_mib is not None:
            return self.peak_mem_floor_mib
        return MEM_FLOOR_MIB.get(device.split(":")[0], 1.0)

    def latency_threshold(self, device: str) -> float:
        return self.latency if self.latency is not None else LATENCY_THRESHOLD.get(device.split(":")[0], 1.15)

    def mem_tolerance(self, device: str) -> float:
        return self.peak_mem if self.peak_mem is not None else MEM_TOLERANCE.get(device.split(":")[0], 0.05)


@dataclass(frozen=True)
class Thresholds:
    """Global limits, overridden per pattern, then per impl (the impl wins), and the significance level."""

    default: Limits = Limits()
    alpha: float = 0.05
    patterns: dict[str, dict[str, float]] = field(default_factory=dict)
    impls: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise SparsebenchError(f"alpha must be between 0 and 1, got {self.alpha}")
        for pattern in self.patterns:
            self.for_case(pattern, "")
        for impl in self.impls:
            self.for_case("", impl)

    def for_case(self, pattern: str, impl: str) -> Limits:
        return replace(self.default, **{**self.patterns.get(pattern, {}), **self.impls.get(impl, {})})

    @classmethod
    def from_toml(cls, path: Path | None, **overrides: float | None) -> Thresholds:
        """From a TOML file (a bare table or a [gate] table; see configs/gate.toml), or the defaults when `path`
        is None; non-None `overrides` win (see `from_dict`)."""
        data: dict[str, Any] = {}
        if path is not None:
            try:
                data = tomllib.loads(Path(path).read_text())
            except OSError as exc:
                raise SparsebenchError(f"{path}: cannot read thresholds ({exc.strerror})") from None
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise SparsebenchError(f"{path}: not valid TOML ({exc})") from None
            data = data.get("gate", data)
        return cls.from_dict(data, **overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: float | None) -> Thresholds:
        """Build from a parsed TOML table (see configs/gate.toml); non-None `overrides` win over the file.

        `overrides` may name alpha or any Limits field (e.g. latency=1.2 from a CLI option)."""
        names = {f.name for f in fields(Limits)}
        unknown = set(data) - {"alpha", "pattern", "impl", *names}
        if unknown:
            raise SparsebenchError(f"unknown gate threshold {', '.join(sorted(unknown))}; "
                                   f"known: alpha, {', '.join(sorted(names))}, [pattern.NAME], [impl.NAME]")
        top = {k: _number(k, v) for k, v in data.items() if k in names}
        alpha = _number("alpha", data.get("alpha", 0.05))
        for k, v in overrides.items():
            if v is not None:
                if k == "alpha":
                    alpha = v
                else:
                    top[k] = v
        sections = {}
        for section in ("pattern", "impl"):
            table = data.get(section, {})
            if not isinstance(table, dict) or not all(isinstance(t, dict) for t in table.values()):
                raise SparsebenchError(f"[{section}.NAME] tables expected, e.g. [{section}.x] latency = 1.3")
            for name, limits in table.items():
                bad = set(limits) - names
                if bad:
                    raise SparsebenchError(f"[{section}.{name}]: unknown threshold {', '.join(sorted(bad))}; "
                                           f"known: {', '.join(sorted(names))}")
            sections[section] = {name: {k: _number(k, v) for k, v in t.items()} for name, t in table.items()}
        return cls(Limits(**top), alpha, sections["pattern"], sections["impl"])


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SparsebenchError(f"gate threshold {name} must be a number, got {value!r}")
    return float(value)


@dataclass
class Finding:
    """One metric of one case that is not simply equal: a regression, warning or improvement."""

    metric: str
    verdict: str
    message: str


@dataclass
class CaseResult:
    """The comparison of one case. Latency values are normalised (×dense) unless the gate is raw."""

    key: Key
    name: str
    pattern: str
    impl: str
    base_status: str = ""
    cur_status: str = ""
    base_latency: float = math.nan
    cur_latency: float = math.nan
    ratio: float = math.nan
    p_value: float = math.nan
    findings: list[Finding] = field(default_factory=list)
    presence: str = ""  # MISSING or NEW when the case is in one set only

    @property
    def verdict(self) -> str:
        verdicts = [f.verdict for f in self.findings] + [self.presence or OK]
        return max(verdicts, key=SEVERITY.__getitem__)

    def messages(self, verdict: str) -> list[str]:
        return [f.message for f in self.findings if f.verdict == verdict]


@dataclass
class GateReport:
    cases: list[CaseResult]
    raw: bool
    thresholds: Thresholds
    notes: list[str] = field(default_factory=list)
    gate_latency: bool = True
    normalise: str = "shape"
    baseline_hint: bool = True  # improvements suggest --update-baseline (not in a same-job A/B gate: no file)
    fail_missing: bool = False  # a baseline case with no current row fails the gate (--fail-missing)

    @property
    def latency_kind(self) -> str:
        return "raw" if self.raw else f"{self.normalise}-normalised"

    def with_verdict(self, verdict: str) -> list[CaseResult]:
        return [c for c in self.cases if c.verdict == verdict]

    @property
    def regressions(self) -> list[CaseResult]:
        return self.with_verdict(REGRESSION)

    @property
    def improvements(self) -> list[CaseResult]:
        return self.with_verdict(IMPROVEMENT)

    @property
    def missing(self) -> list[CaseResult]:
        """Baseline cases with no row in the current results."""
        return [c for c in self.cases if c.presence == MISSING]

    def fails(self, case: CaseResult) -> bool:
        """Whether this case fails the gate: a regression, or a missing case under --fail-missing."""
        return case.verdict == REGRESSION or (self.fail_missing and case.presence == MISSING)

    @property
    def failed(self) -> bool:
        return any(self.fails(case) for case in self.cases)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for case in self.cases:
            out[case.verdict] = out.get(case.verdict, 0) + 1
        return out


def case_name(row: Any) -> str:
    """pattern(params)/impl/seq_len/dtype/mode, e.g. local(window=64)/flex/1024/float32/fwd; a serving batch
    names its lengths (a seed other than 0, and its page size: `serving_text`) in place of seq_len, its longest
    length, e.g. causal/sdpa/seq_lens=uniform:512-8192:16;page=16/float32/decode."""
    pattern = pattern_label(row["pattern"], row["params"])
    length = serving_text(row).strip().replace(" ", ";") or key_text(row["seq_len"])
    return f"{pattern}/{row['impl']}/{length}/{row['dtype']}/{row['mode']}"


def _by_key(frame: pd.DataFrame) -> dict[Key, dict[str, Any]]:
    """Rows by case key, each with its dense reference columns filled from its own run; the last row wins when
    a case was written twice (e.g. a resumed run). Columns the frame lacks read as empty."""
    frame = with_dense_reference(complete_columns(frame.copy()))
    return {case_key(row): row for row in frame.to_dict("records")}


_float = as_float


def _is_reference(case: CaseResult) -> bool:
    return is_dense_reference(dict(zip(KEY_COLUMNS, case.key)))


def check_comparable(baseline: pd.DataFrame, current: pd.DataFrame, raw: bool) -> None:
    """Raise NotComparable when the two result sets measure different things (the schema version is checked
    when a file is read: `results.read_results`)."""
    b, c = set(baseline["device"].astype(str)), set(current["device"].astype(str))
    if b != c:
        raise NotComparable(f"different devices: baseline ran on {', '.join(sorted(b))}, current on "
                            f"{', '.join(sorted(c))}; gate against a baseline from the same kind of device")
    if raw and "device_name" in baseline and "device_name" in current:
        b, c = set(baseline["device_name"].dropna().astype(str)), set(current["device_name"].dropna().astype(str))
        if b and c and b != c:
            raise NotComparable(f"--raw compares absolute latency, but the device models differ (baseline "
                                f"{', '.join(sorted(b))}, current {', '.join(sorted(c))}); drop --raw")


def compare(baseline: pd.DataFrame, current: pd.DataFrame, thresholds: Thresholds = Thresholds(),
            raw: bool = False, only: Iterable[Key] | None = None, gate_latency: bool = True,
            normalise: str = "shape") -> GateReport:
    """Compare two result frames case by case. `only`: restrict to these case keys (used by confirm, after
    the full comparison checked that the sets are comparable).
    `gate_latency=False`: latency is still compared and shown, but a slower case is only a warning.
    `normalise`: see NORMALISATIONS (ignored when `raw`)."""
    if normalise not in NORMALISATIONS:
        raise SparsebenchError(f"unknown normalisation {normalise!r}; choose from: {', '.join(NORMALISATIONS)}")
    if only is None:
        check_comparable(baseline, current, raw)
    base_rows, cur_rows = _by_key(baseline), _by_key(current)
    shifts = shape_shifts(base_rows, cur_rows) if normalise == "shape" and not raw else {}
    keys = list(base_rows) + [k for k in cur_rows if k not in base_rows]
    if only is not None:
        wanted = set(only)
        keys = [k for k in keys if k in wanted]
    elif not set(base_rows) & set(cur_rows):
        raise NotComparable("the two result sets have no case in common (different configs?)")
    cases = []
    for key in keys:
        base, cur = base_rows.get(key), cur_rows.get(key)
        row = base if base is not None else cur
        case = CaseResult(key, case_name(row), row["pattern"], row["impl"])
        if base is None or cur is None:
            case.presence = NEW if base is None else MISSING
            case.base_status = base["status"] if base is not None else ""
            case.cur_status = cur["status"] if cur is not None else ""
        else:
            _compare_case(case, base, cur, thresholds, raw, shifts.get(shape_key(cur), 1.0))
            models = other_gpu_models(base, cur)
            for finding in case.findings:
                if finding.metric == "latency" and finding.verdict == REGRESSION and (models or not gate_latency):
                    finding.verdict = WARNING
                    finding.message += f" [measured on {models}: not gated]" if models else " [latency not gated]"
        cases.append(case)
    names = [c.name for c in cases]
    for case in cases:
        if names.count(case.name) > 1:  # same name, other batch/heads/head_dim: say which
            row = base_rows.get(case.key) or cur_rows[case.key]
            case.name += f"/B{key_text(row['batch'])}xH{key_text(row['heads'])}xD{key_text(row['head_dim'])}"
    notes = []
    has_reference = any(_float(r["dense_latency_ms"]) > 0 for r in [*base_rows.values(), *cur_rows.values()])
    if not raw and not has_reference:
        notes.append("no ok dense/sdpa rows of the same shape: latency was not gated (add dense+sdpa to the "
                     "config, or use --raw on one machine)")
    if not gate_latency:
        notes.append("latency is reported but not gated (--no-latency): only flops, density, memory and "
                     "status can fail")
    untested = [c for c in cases if not math.isnan(c.ratio) and math.isnan(c.p_value)]
    if untested:
        notes.append(f"the significance test could not run for {len(untested)} case(s) (fewer than {MIN_SAMPLES} "
                     "timing samples in samples_ms: missing, empty or short): the latency ratio alone decided them")
    for side, rows in (("baseline's", base_rows), ("current results'", cur_rows)):
        old = sum(rss_peak_memory(rows[c.key]) for c in cases if not c.presence and c.key in rows)
        if old:
            notes.append(f"the {side} CPU peak memory is the RSS high-water mark (written before the exact peak "
                         f"of live tensor bytes): peak memory not compared for {old} case(s); re-measure it")
    shifted = {k: v for k, v in shifts.items() if abs(math.log(v)) > math.log(1.02)}
    if shifted:
        notes.append("shape shifts taken out (the median current/baseline ratio of each shape's cases, shared by "
                     "them all): " + ", ".join(f"n={key_text(k[SHAPE_N])} {v:.2f}x" for k, v in shifted.items()))
    return GateReport(cases, raw, thresholds, notes, gate_latency, normalise)


SHAPE_N = SHAPE_COLUMNS.index("seq_len")


def shape_shifts(base_rows: dict[Key, dict[str, Any]], cur_rows: dict[Key, dict[str, Any]]) -> dict[tuple, float]:
    """Per shape: the median of its cases' dense-normalised current/baseline latency ratios (the dense
    reference counts as 1.0), for shapes with at least SHAPE_MIN_CASES cases ok in both runs."""
    ratios: dict[tuple, list[float]] = {}
    for key, cur in cur_rows.items():
        base = base_rows.get(key)
        if base is None or base["status"] != "ok" or cur["status"] != "ok":
            continue
        b = _float(base["latency_ms"]) / _float(base["dense_latency_ms"])
        c = _float(cur["latency_ms"]) / _float(cur["dense_latency_ms"])
        if b > 0 and c > 0:
            ratios.setdefault(shape_key(cur), []).append(c / b)
    return {shape: float(pd.Series(r).median()) for shape, r in ratios.items() if len(r) >= SHAPE_MIN_CASES}


def other_gpu_models(base: dict[str, Any], cur: dict[str, Any]) -> str:
    """'A in the baseline, B now' when the two rows of a case were measured on different GPU models (a sweep
    spread over mixed GPUs), else ''. Their latencies are shown but never gated against each other."""
    names = [row.get("gpu_name") for row in (base, cur)]
    names = ["" if name is None or _is_nan(name) else str(name) for name in names]
    return f"{names[0]} in the baseline, {names[1]} now" if all(names) and names[0] != names[1] else ""


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _compare_case(case: CaseResult, base: dict[str, Any], cur: dict[str, Any], thresholds: Thresholds,
                  raw: bool, shift: float = 1.0) -> None:
    case.base_status, case.cur_status = str(base["status"]), str(cur["status"])
    limits = thresholds.for_case(case.pattern, case.impl)
    if case.base_status == "ok" and case.cur_status != "ok":
        reason = f" ({cur['error']})" if isinstance(cur.get("error"), str) and cur["error"] else ""
        verdict = REGRESSION if case.cur_status in FAILED_STATUSES else WARNING
        case.findings.append(Finding("status", verdict, f"status ok -> {case.cur_status}{reason}"))
    if case.base_status != "ok" and case.cur_status == "ok":
        case.findings.append(Finding("status", IMPROVEMENT, f"status {case.base_status} -> ok"))
    if case.base_status != "ok" or case.cur_status != "ok":
        return
    for metric in ("flops_executed", "density"):
        b, c = _float(base[metric]), _float(cur[metric])
        if not (b == c or (math.isnan(b) and math.isnan(c))):
            case.findings.append(Finding(metric, REGRESSION, f"{metric} changed {b:.6g} -> {c:.6g} (must match "
                                         "exactly; refresh the baseline if intended)"))
    case.findings.extend(Finding(*found) for found in quality_findings(base, cur))  # recall, err_vs_full
    device = str(base["device"])
    if not (rss_peak_memory(base) or rss_peak_memory(cur)):
        _compare_memory(case, _float(base["peak_mem_mib"]), _float(cur["peak_mem_mib"]),
                        limits.mem_tolerance(device), limits.mem_floor(device))
    if raw or not _is_reference(case):
        base_ref = 1.0 if raw else _float(base["dense_latency_ms"])
        cur_ref = 1.0 if raw else _float(cur["dense_latency_ms"]) * shift
        _compare_latency(case, base, cur, base_ref, cur_ref, limits.latency_threshold(device), thresholds.alpha,
                         raw)
        if abs(math.log(shift)) > math.log(1.005):
            for finding in case.findings:
                if finding.metric == "latency":
                    finding.message += f" [after the shape's shared shift of {shift:.2f}x]"


def rss_peak_memory(row: dict[str, Any]) -> bool:
    """True for an ok CPU row whose peak_mem_mib is the RSS high-water mark: one written before the exact peak of
    live tensor bytes, which came with the rss_peak_mib column. It is not compared with either kind."""
    return (str(row["device"]).split(":")[0] == "cpu" and row["status"] == "ok"
            and not math.isnan(_float(row["peak_mem_mib"])) and math.isnan(_float(row.get("rss_peak_mib"))))


def _compare_memory(case: CaseResult, base: float, cur: float, tolerance: float, floor: float) -> None:
    if math.isnan(base) or math.isnan(cur):
        if not math.isnan(base):
            case.findings.append(Finding("peak_mem_mib", WARNING, "peak memory no longer measured"))
        return
    allowed = max(tolerance * abs(base), floor)
    change = f"peak memory {base:.1f} -> {cur:.1f} MiB ({_percent(cur, base)}, tolerance " \
             f"{tolerance:.0%} or {floor:g} MiB)"
    if cur - base > allowed:
        case.findings.append(Finding("peak_mem_mib", REGRESSION, change))
    elif base - cur > allowed:
        case.findings.append(Finding("peak_mem_mib", IMPROVEMENT, change))


def _compare_latency(case: CaseResult, base: dict[str, Any], cur: dict[str, Any], base_ref: float,
                     cur_ref: float, threshold: float, alpha: float, raw: bool) -> None:
    b, c = _float(base["latency_ms"]) / base_ref, _float(cur["latency_ms"]) / cur_ref
    if not (b > 0 and c > 0):  # NaN (no latency or no dense reference) or zero
        if not raw and _float(base["latency_ms"]) > 0 and not (base_ref > 0 and cur_ref > 0):
            case.findings.append(Finding("latency", WARNING, "latency not gated: no dense/sdpa reference of "
                                         "this shape in both runs"))
        return
    case.base_latency, case.cur_latency, case.ratio = b, c, c / b
    what = "latency" if raw else "latency/dense"
    base_samples = [s / base_ref for s in parse_samples(base["samples_ms"])]
    cur_samples = [s / cur_ref for s in parse_samples(cur["samples_ms"])]
    if min(len(base_samples), len(cur_samples)) >= MIN_SAMPLES:  # one-sided, in the direction of the ratio
        side = "greater" if case.ratio >= 1 else "less"
        case.p_value = float(mannwhitneyu(cur_samples, base_samples, alternative=side).pvalue)
    # Without the samples the test needs (a file whose samples_ms is gone, empty or short) the ratio alone decides:
    # a missing statistic never turns a regression into a pass.
    untested = math.isnan(case.p_value)
    decided = untested or case.p_value < alpha
    test = f"significance not tested: {untested_why(base_samples, cur_samples)}" if untested else \
        f"p={case.p_value:.2g}"
    bound = "" if untested else f" < {alpha:g}"
    if case.ratio > threshold:
        text = f"{what} {case.ratio:.2f}x slower (threshold {threshold:.2f}x"
        if decided:
            case.findings.append(Finding("latency", REGRESSION, f"{text}, {test}{bound})"))
        else:
            case.findings.append(Finding("latency", WARNING, f"{text}, but not significant: {test})"))
    elif case.ratio < 1 / threshold and decided:
        case.findings.append(Finding("latency", IMPROVEMENT, f"{what} {1 / case.ratio:.2f}x faster ({test})"))


def untested_why(base_samples: list[float], cur_samples: list[float]) -> str:
    """Why the significance test could not run (fewer than MIN_SAMPLES on a side), e.g. '0 timing samples in the
    baseline, 15 now'."""
    return f"{len(base_samples)} timing samples in the baseline, {len(cur_samples)} now"


def _percent(cur: float, base: float) -> str:
    return f"{(cur - base) / base:+.1%}" if base else f"{cur - base:+.1f} MiB"


def case_spec(row: dict[str, Any]) -> Case:
    """The case of a result row, as the runner takes it."""
    return Case.from_row(row)


def latency_regressions(report: GateReport) -> list[CaseResult]:
    """The regressed cases whose only regression is latency: what `confirm` re-runs (flops, density, memory
    and status are measured exactly, and a re-run would only repeat them)."""
    return [c for c in report.regressions
            if all(f.metric == "latency" for f in c.findings if f.verdict == REGRESSION)]


def confirm(report: GateReport, baseline: pd.DataFrame, current: pd.DataFrame, rerun: Rerun,
            times: int) -> GateReport:
    """Re-run each case whose only regression is latency `times` times; it stays a regression only if it
    reproduces in more than half of the re-runs, otherwise it becomes a warning. The dense references of their
    shapes are re-run alongside so that the re-runs normalise against their own dense latency."""
    regressed = {c.key: c for c in latency_regressions(report)}
    if not regressed or times < 1:
        return report
    rows = _by_key(current)
    specs = [case_spec(rows[k]) for k in regressed]
    if not report.raw:
        shapes = {shape_key(rows[k]) for k in regressed}
        refs = [r for k, r in rows.items() if is_dense_reference(r)
                and shape_key(r) in shapes and k not in regressed]
        specs = [case_spec(r) for r in refs] + specs
    hits = {k: 0 for k in regressed}
    for _ in range(times):
        # each re-run holds few cases of a shape, with their own fresh dense reference: dense-normalised
        again = compare(baseline, rerun(specs), report.thresholds, report.raw, regressed, report.gate_latency,
                        normalise="dense")
        for case in again.cases:
            if case.verdict == REGRESSION or case.presence == MISSING:  # no row: cannot clear it
                hits[case.key] += 1
    for key, case in regressed.items():
        note = f"regression reproduced in {hits[key]}/{times} re-runs"
        if hits[key] * 2 > times:
            case.findings.append(Finding("confirm", REGRESSION, f"confirmed: {note}"))
        else:
            for finding in case.findings:
                if finding.verdict == REGRESSION:
                    finding.verdict = WARNING
            case.findings.append(Finding("confirm", WARNING, f"not confirmed: {note}"))
    return report
