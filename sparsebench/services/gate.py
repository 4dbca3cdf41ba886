"""The gate's workflow under `sparsebench gate`, `run --gate` and `export --baseline`: compare two result
sets, then the machines they ran on (latency findings become warnings across machines, or the sets are not
comparable when asked to be strict), then the software; optionally re-run the latency regressions here.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from sparsebench import gate, machine, plugins
from sparsebench._version import __version__
from sparsebench.environment import git_sha, package_digest
from sparsebench.errors import NotComparable, SparsebenchError
from sparsebench.results import RESULTS_NAME, ResultSet
from sparsebench.runner.cases import Case
from sparsebench.runner.sweep import Sweep
from sparsebench.services.run import RunReporter


def compare(baseline: ResultSet, current: ResultSet, thresholds: gate.Thresholds, *, raw: bool = False,
            gate_latency: bool = True, normalise: str = "shape", strict_machine: bool = False) -> gate.GateReport:
    """The comparison of two result sets (their meta.json name their machines). NotComparable: another device
    or schema, or another machine with `strict_machine`."""
    report = gate.compare(baseline.frame, current.frame, thresholds, raw, gate_latency=gate_latency,
                          normalise=normalise)
    found = machine.differences(machine.Machine.from_meta(baseline.meta), machine.Machine.from_meta(current.meta))
    if found and strict_machine:
        raise NotComparable(f"{machine.reason(found)}: --strict-machine refuses to gate latency across machines "
                            "(without it: latency findings become warnings)")
    report = machine.latency_as_warnings(report, found)
    report.notes += environment_notes(baseline, current)
    return report


def confirm(report: gate.GateReport, baseline: ResultSet, current: ResultSet, times: int,
            reporter: RunReporter | None = None) -> gate.GateReport:
    """Re-run the latency regressions `times` times here (with their dense references, timed as the current
    run was); a re-run that cannot start here (e.g. a plugin that does not import), or whose code here is not
    the code the current results were measured with, leaves them standing."""
    try:
        rerun = rerunner(current.meta, reporter)  # loads the plugins the results were measured with
        changed = code_changes(current.meta)
        if changed:
            report.notes.append(f"--confirm did not re-run the cases: the code here is not what {RESULTS_NAME} "
                                f"was measured with ({'; '.join(changed)}); their regressions stand")
            return report
        return gate.confirm(report, baseline.frame, current.frame, rerun, times)
    except SparsebenchError as exc:
        report.notes.append(f"--confirm could not re-run the cases here ({exc}); their regressions stand")
        return report


def code_changes(meta: Mapping[str, Any]) -> list[str]:
    """How the code a re-run here would measure differs from what a run's meta.json recorded: sparsebench's
    source (its content hash; for older files, a clean commit or the version), or a user plugin as loaded now
    (call after plugins.load_recorded: by content, wherever its file lies). Empty where it is the same, or where
    the record cannot tell (no hash)."""
    changes = []
    if meta.get("sparsebench_sha256"):
        if meta["sparsebench_sha256"] != package_digest():
            changes.append(f"sparsebench's source differs (sha256 {package_digest()}, not "
                           f"{meta['sparsebench_sha256']})")
    elif meta.get("sparsebench_version") not in (None, __version__):
        changes.append(f"sparsebench {__version__}, not {meta['sparsebench_version']}")
    elif isinstance(meta.get("git_sha"), str) and "+" not in meta["git_sha"] and "+" not in git_sha() \
            and meta["git_sha"] and git_sha() and meta["git_sha"] != git_sha():
        changes.append(f"sparsebench at {git_sha()[:12]}, not {meta['git_sha'][:12]}")
    for plugin in meta.get("plugins") or []:
        if not isinstance(plugin, dict) or not plugin.get("sha256"):
            continue
        kind = "impls" if plugin.get("kind") == "impl" else "patterns"
        loaded = plugins.origin_of(kind, str(plugin.get("name")))
        if loaded and loaded.get("sha256") and loaded["sha256"] != plugin["sha256"]:
            changes.append(f"{plugin.get('kind')} {plugin.get('name')!r}: {loaded.get('file')} is not the "
                           f"code measured ({plugin.get('file')})")
    return changes


def rerunner(meta: Mapping[str, Any], reporter: RunReporter | None = None) -> gate.Rerun:
    """The re-run hook of the gate: the cases measured as `run` measures them, with the timing settings of
    the current run (its meta.json), each re-run reported as a run is."""
    sweep = Sweep.from_meta(meta)
    reporter = reporter or RunReporter()

    def rerun(cases: list[Case]) -> pd.DataFrame:
        cases = sorted(cases, key=lambda c: (c.group(), c != c.reference()))  # groups, each dense reference first
        rows: list[dict] = []

        def on_row(case: Case, row: dict) -> None:
            rows.append(row)
            reporter.done(case, row)

        with reporter.measuring(len(cases), 0, None):
            sweep.measure(cases, on_row, on_start=reporter.begin, ceilings=False)
        return pd.DataFrame(rows)

    return rerun


def update_baseline(baseline: Path, current: Path) -> None:
    """Copy CURRENT over BASELINE; a baseline named results.csv gets the run's meta.json beside it too."""
    copies = [(current, baseline)]
    if baseline.name == RESULTS_NAME and current.with_name("meta.json").is_file():
        copies.append((current.with_name("meta.json"), baseline.with_name("meta.json")))
    try:
        baseline.parent.mkdir(parents=True, exist_ok=True)
        for src, dst in copies:
            if src.resolve() != dst.resolve():
                shutil.copyfile(src, dst)
    except OSError as exc:
        raise SparsebenchError(f"{baseline}: cannot write the baseline ({exc.strerror})") from None


def environment_notes(baseline: ResultSet, current: ResultSet) -> list[str]:
    """What changed in the software between the two runs (from their meta.json, when both have one); the
    hardware is `machine`'s business."""
    old, new = baseline.meta, current.meta
    notes = [f"{key} differs: baseline {old[key]}, current {new[key]}" for key in ("torch", "cuda")
             if key in old and key in new and old[key] != new[key]]
    # a user plugin of one name whose file's content differs: what a plugin's own A/B compares, so a note, never
    # a refusal (by content: a checkout elsewhere or a later commit of the same file is the same code)
    before = {(p.get("kind"), p.get("name")): p for p in old.get("plugins") or [] if isinstance(p, dict)}
    for plugin in new.get("plugins") or []:
        earlier = before.get((plugin.get("kind"), plugin.get("name"))) if isinstance(plugin, dict) else None
        if earlier and earlier.get("sha256") and plugin.get("sha256") and earlier["sha256"] != plugin["sha256"]:
            notes.append(f"{plugin.get('kind')} {plugin.get('name')!r} ran other code: baseline {_code(earlier)}, "
                         f"current {_code(plugin)}")
    return notes


def _code(plugin: Mapping[str, Any]) -> str:
    """A plugin's file and content hash, and its commit where recorded: `path (sha256 …, commit …)`."""
    commit = str(plugin.get("git_commit") or "")
    return f"{plugin.get('file') or plugin.get('spec')} (sha256 {plugin['sha256']}" + \
        (f", commit {commit[:12]}{'+dirty' if commit.endswith('+dirty') else ''})" if commit else ")")
