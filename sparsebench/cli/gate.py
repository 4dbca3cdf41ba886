"""`sparsebench gate BASELINE.csv CURRENT.csv`: fail CI on a performance regression, not on noise; `gate
--base-ref REF` and `gate --base-impl A --impl B`: the same-job A/B gate, both sides measured here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from sparsebench import export, gate, paired, plugins
from sparsebench.cli.common import (
    EXIT_OK,
    EXIT_REGRESSION,
    console,
    interrupt_on_stop_signals,
    user_errors,
)
from sparsebench.cli.output import check_report_outputs, emit, gate_and_exit, print_report, write_summary
from sparsebench.errors import SparsebenchError
from sparsebench.gate_report import render_markdown
from sparsebench.results import RESULTS_NAME
from sparsebench.runner import SweepConfig, load_config
from sparsebench.runner.config import SweepOptions
from sparsebench.services import abgate


def gate_cmd(
    baseline: Annotated[Path | None, typer.Argument(help="Baseline results.csv (e.g. baselines/ci-cpu/results.csv), "
                                                    "or a directory (a run's, or of shards). Not with --base-ref "
                                                    "or --base-impl.", show_default=False)] = None,
    current: Annotated[Path | None, typer.Argument(help="Current results.csv to check, or a directory (a run's, or "
                                                   "of shards).", show_default=False)] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Gate raw latency (same machine only) instead of latency "
                                      "normalised by the dense-SDPA latency of the same run.")] = False,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="Gate latency; --no-latency still "
                                          "shows it but fails only on flops, density, memory and status.")] = True,
    threshold: Annotated[float | None, typer.Option(
        "--threshold", help="Latency ratio beyond which a case is slower (default 1.15 on CUDA, 1.5 on CPU, or the "
        "TOML file).",
        show_default=False)] = None,
    mem_tolerance: Annotated[float | None, typer.Option(
        "--mem-tolerance", help="Relative tolerance on peak_mem_mib (default 0.05 on CUDA, 1.0 on CPU, or the "
        "TOML file).",
        show_default=False)] = None,
    alpha: Annotated[float | None, typer.Option(
        "--alpha", help="Significance level of the one-sided Mann-Whitney U test (default 0.05).",
        show_default=False)] = None,
    thresholds_file: Annotated[Path | None, typer.Option(
        "--thresholds", help="TOML file of thresholds, with per-pattern and per-impl overrides "
        "(see configs/gate.toml).", show_default=False)] = None,
    confirm: Annotated[int, typer.Option("--confirm", min=0, help="Re-run the cases whose latency regressed N "
                                         "times (with their dense reference, on this machine); fail only on those "
                                         "that regress again in most re-runs. 0: off.")] = gate.DEFAULT_CONFIRM,
    normalise: Annotated[str, typer.Option("--normalise", help="shape: latency / dense, less the shift every case "
                                           "of the shape shares (default); dense: latency / dense only.")]
    = "shape",
    summary: Annotated[Path | None, typer.Option(
        "--summary", help="Write a markdown report here (also appended to $GITHUB_STEP_SUMMARY when set).",
        show_default=False)] = None,
    update_baseline: Annotated[bool, typer.Option(
        "--update-baseline", help="Accept the current results: copy CURRENT over BASELINE and exit 0.")] = False,
    fail_missing: Annotated[bool, typer.Option(
        "--fail-missing", help="Fail when a case of BASELINE has no row in CURRENT (default: listed as missing, "
        "never failing, so that a sweep may shrink).")] = False,
    strict_machine: Annotated[bool, typer.Option(
        "--strict-machine", help="Exit 3 when the meta.json files name another CPU model, core count or GPU "
        "(default: gate flops, density, memory and status, latency findings as warnings).")] = False,
    export_format: Annotated[str | None, typer.Option(
        "--export", help="Also write the report as markdown, github-action-benchmark, bencher or junit (see "
        "`sparsebench export`).", show_default=False)] = None,
    export_out: Annotated[Path | None, typer.Option(
        "--export-out", help="File for --export (default: stdout).", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress of the --confirm re-runs: only "
                                        "their failed cases and the report.")] = False,
    base_ref: Annotated[str | None, typer.Option(
        "--base-ref", help="Same-job A/B: measure this git ref (checked out in a throwaway worktree) against "
        "--head-ref, interleaved in rounds in this job.", show_default=False, rich_help_panel="A/B")] = None,
    head_ref: Annotated[str | None, typer.Option(
        "--head-ref", help="The ref to gate (default: the working tree as it is).", show_default=False,
        rich_help_panel="A/B")] = None,
    repo: Annotated[Path | None, typer.Option(
        "--repo", help="The git repository of the refs (default: the current directory's).", show_default=False,
        rich_help_panel="A/B")] = None,
    base_impl: Annotated[str | None, typer.Option(
        "--base-impl", help="Same-job A/B of two implementations of this tree: this one (e.g. mymod:v1) against "
        "--impl.", show_default=False, rich_help_panel="A/B")] = None,
    rounds: Annotated[int | None, typer.Option(
        "--rounds", min=paired.MIN_PAIRS, help=f"A/B: rounds of each side (A B B A ...; default "
        f"{paired.DEFAULT_ROUNDS}).", show_default=False, rich_help_panel="A/B")] = None,
    confirm_rounds: Annotated[int | None, typer.Option(
        "--confirm-rounds", min=paired.MIN_PAIRS, show_default=False, help=f"A/B: fresh rounds of each side that "
        f"re-measure the flagged cases (default {paired.DEFAULT_CONFIRM_PAIRS}; --confirm 0: none).",
        rich_help_panel="A/B")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="A/B: TOML sweep file (as `run`).",
                                                   show_default=False, rich_help_panel="A/B")] = None,
    pattern: Annotated[list[str] | None, typer.Option("--pattern", "-p", help="A/B: pattern (as `run`). "
                                                         "Repeatable.", show_default=False,
                                                         rich_help_panel="A/B")] = None,
    impl: Annotated[list[str] | None, typer.Option("--impl", help="A/B: implementation (as `run`; with "
                                                      "--base-impl: the one to gate). Repeatable.",
                                                      show_default=False, rich_help_panel="A/B")] = None,
    seq: Annotated[list[int] | None, typer.Option("--seq", "-n", min=1, help="A/B: sequence length. Repeatable.",
                                                     show_default=False, rich_help_panel="A/B")] = None,
    device: Annotated[list[str] | None, typer.Option("--device", help="A/B: device (as `run`). Repeatable.",
                                                        show_default=False, rich_help_panel="A/B")] = None,
    dtype: Annotated[list[str] | None, typer.Option("--dtype", help="A/B: dtype (as `run`). Repeatable.",
                                                       show_default=False, rich_help_panel="A/B")] = None,
    mode: Annotated[list[str] | None, typer.Option("--mode", help="A/B: fwd, fwdbwd or decode. Repeatable.",
                                                      show_default=False, rich_help_panel="A/B")] = None,
    min_run_time: Annotated[float | None, typer.Option(
        "--min-run-time", min=0.01, help=f"A/B: seconds of timed calls per case and round (default "
        f"{abgate.ROUND_MIN_RUN_TIME:g}: short rounds, many of them).", show_default=False,
        rich_help_panel="A/B")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=1, help="A/B: seconds per case.",
                                                     show_default=False, rich_help_panel="A/B")] = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out-dir", "-o", help="A/B: keep every round's rows here, as they finish (base/results.csv, "
        "head/results.csv; one run_id per round).", show_default=False, rich_help_panel="A/B")] = None,
) -> None:
    """Compare CURRENT against BASELINE case by case: exit 0 no regression, 1 regression, 2 bad input,
    3 not comparable (other device or schema; another machine with --strict-machine).

    Same-job A/B (`--base-ref REF [--head-ref REF]`, or `--base-impl A --impl B`): base and head are measured here,
    in alternating rounds, and gated on their paired per-round ratios."""
    if base_ref is not None or base_impl is not None:
        sweep = SweepOptions(patterns=pattern, impls=impl, seq=seq, devices=device, dtypes=dtype, modes=mode,
                             min_run_time=min_run_time, timeout=timeout)
        ab_gate_and_exit(base_ref=base_ref, head_ref=head_ref, repo=repo, base_impl=base_impl, config_file=config,
                         sweep=sweep, rounds=paired.DEFAULT_ROUNDS if rounds is None else rounds,
                         confirm_rounds=paired.DEFAULT_CONFIRM_PAIRS if confirm_rounds is None else confirm_rounds,
                         raw=raw, latency=latency,
                         threshold=threshold, mem_tolerance=mem_tolerance,
                         alpha=alpha, thresholds_file=thresholds_file, confirm=confirm, summary=summary,
                         export_format=export_format, export_out=export_out, quiet=quiet, out_dir=out_dir,
                         refused={"BASELINE": baseline, "CURRENT": current, "--update-baseline": update_baseline,
                                  "--strict-machine": strict_machine, "--fail-missing": fail_missing,
                                  "--head-ref": head_ref if base_impl else None,
                                  "--repo": repo if base_impl else None})
    ab_only = {"--head-ref": head_ref, "--repo": repo, "--config": config, "--pattern": pattern, "--impl": impl,
               "--seq": seq, "--device": device, "--dtype": dtype, "--mode": mode, "--min-run-time": min_run_time,
               "--timeout": timeout, "--out-dir": out_dir, "--rounds": rounds, "--confirm-rounds": confirm_rounds}
    with user_errors():
        given = [name for name, value in ab_only.items() if value]
        if given:
            raise SparsebenchError(f"{', '.join(given)}: only with --base-ref or --base-impl (the same-job A/B gate)")
        if baseline is None or current is None:
            raise SparsebenchError("give BASELINE and CURRENT results, or --base-ref REF (or --base-impl A --impl "
                                   "B) to measure both here")
    gate_and_exit(baseline, current, raw=raw, latency=latency, threshold=threshold, mem_tolerance=mem_tolerance,
                  alpha=alpha, thresholds_file=thresholds_file, confirm=confirm, normalise=normalise,
                  summary=summary, update_baseline=update_baseline, strict_machine=strict_machine,
                  export_format=export_format, export_out=export_out, quiet=quiet, fail_missing=fail_missing)


def ab_gate_and_exit(*, base_ref: str | None, head_ref: str | None, repo: Path | None, base_impl: str | None,
                     config_file: Path | None, sweep: SweepOptions, rounds: int, confirm_rounds: int, raw: bool,
                     latency: bool,
                     threshold: float | None, mem_tolerance: float | None, alpha: float | None,
                     thresholds_file: Path | None, confirm: int, summary: Path | None, export_format: str | None,
                     export_out: Path | None, quiet: bool, refused: dict[str, Any],
                     out_dir: Path | None = None) -> NoReturn:
    """The same-job A/B gate: measure, print the report, write the summary and export, exit 0 or 1 (2: bad
    input). Worktrees are removed however it ends (Ctrl-C and SIGTERM included)."""
    from sparsebench.runner.checkout import check_plugins, checkouts

    with user_errors(), interrupt_on_stop_signals():
        if base_ref is not None and base_impl is not None:
            raise SparsebenchError("--base-ref compares two refs, --base-impl two implementations: give one of them")
        given = [name for name, value in refused.items() if value]
        if given:
            raise SparsebenchError(f"{', '.join(given)}: not with {'--base-ref' if base_ref else '--base-impl'} "
                                   "(the same-job A/B gate measures both sides itself)")
        step_summary = check_report_outputs(summary, export_format, export_out)
        if out_dir is not None:
            held = [out_dir / side / RESULTS_NAME for side in (paired.BASE, paired.HEAD)]
            if any(path.exists() for path in held):
                raise SparsebenchError(f"--out-dir {out_dir}: already holds an A/B gate's rows; choose another")
        config = _sweep_config(config_file, sweep)
        thresholds = gate.Thresholds.from_toml(thresholds_file, peak_mem=mem_tolerance, alpha=alpha)
        min_effect = threshold if threshold is not None else paired.DEFAULT_MIN_EFFECT
        gate.Limits(latency=min_effect)  # checks it: a ratio > 1
        progress = _Progress(quiet)
        # two implementations: their workers hold one implementation and the dense reference, whose SDPA rounds
        # are the dense reference alone (and a compared `sdpa` must not be its own reference)
        normalise = "raw" if raw else "dense" if base_impl is not None else paired.DEFAULT_NORMALISE
        common = dict(normalise=normalise, min_effect=min_effect,
                      confirm_pairs=confirm_rounds if confirm else 0, reporter=progress, out_dir=out_dir)
        if base_impl is not None:
            if len(config.impls) != 1:
                raise SparsebenchError("--base-impl A needs exactly one --impl B to compare it with")
            base_arm, head_arm, rename = abgate.impl_arms(config, base_impl, config.impls[0])
            console.print(f"A/B gate: {head_arm.label} against {base_arm.label}, {rounds} rounds each", markup=False)
            result = abgate.run_ab(base_arm, head_arm, rounds, thresholds, rename=rename, **common)
        else:
            with checkouts(repo or Path.cwd(), base_ref, head_ref) as (base, head):
                used = plugins.LOADED.used(set(config.impls), {p.partition(":")[0] for p in config.patterns})
                check_plugins([*used.specs["impls"].values(), *used.specs["patterns"].values()], head, base)
                console.print(f"A/B gate: head {head.label} against base {base.label}, {rounds} rounds each",
                              markup=False)
                base_arm = abgate.Arm(config, base.source, f"base {base.label}")
                head_arm = abgate.Arm(config, head.source, f"head {head.label}")
                result = abgate.run_ab(base_arm, head_arm, rounds, thresholds, **common)
        report = result.report
        if not latency:
            for case in report.cases:
                for finding in case.findings:
                    if finding.metric in ("latency", "confirm") and finding.verdict == gate.REGRESSION:
                        finding.verdict = gate.WARNING
                        finding.message += " [latency not gated]"
        report.notes.append(f"measured in {result.wall_s:.0f} s")
        print_report(report)
        markdown = render_markdown(report, base_arm.label, head_arm.label)
        if summary is not None:
            write_summary(summary, markdown, append=False)
        if step_summary is not None:
            write_summary(step_summary, markdown, append=True)
        if export_format is not None:
            import pandas as pd

            frame = pd.DataFrame(paired.first_rows(result.rounds, paired.HEAD))
            emit(export.render(export_format, frame, head_arm.label, report, base_arm.label), export_out)
    raise typer.Exit(EXIT_REGRESSION if report.failed else EXIT_OK)


def _sweep_config(config_file: Path | None, sweep: SweepOptions) -> SweepConfig:
    """The sweep of `run`'s options (a --config file, then the options given), with short rounds by default."""
    settings: dict[str, Any] = load_config(config_file) if config_file else {}
    if sweep.min_run_time is None:
        settings["min_run_time"] = min(settings.get("min_run_time", abgate.ROUND_MIN_RUN_TIME),
                                       abgate.ROUND_MIN_RUN_TIME)
        settings["min_samples"] = min(settings.get("min_samples", abgate.ROUND_MIN_SAMPLES), abgate.ROUND_MIN_SAMPLES)
    return sweep.over(settings)


class _Progress(abgate.ABReporter):
    """One line per round on stderr (none with --quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def round_done(self, index: int, total: int, side: str, seconds: float, failed: int) -> None:
        if not self.quiet:
            bad = f", {failed} case(s) not ok" if failed else ""
            console.print(f"round {index}/{total}: {side} in {seconds:.1f} s{bad}", markup=False)

    def confirming(self, cases: int, pairs: int) -> None:
        if not self.quiet:
            console.print(f"re-measuring {cases} case(s) whose latency regressed, {pairs} rounds each side, to "
                          "confirm", markup=False)
