"""`sparsebench gate BASELINE.csv CURRENT.csv`: fail CI on a performance regression, not on noise."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sparsebench import gate
from sparsebench.cli.output import gate_and_exit


def gate_cmd(
    baseline: Annotated[Path, typer.Argument(help="Baseline results.csv (e.g. baselines/ci-cpu/results.csv), or a "
                                             "directory (a run's, or of shards).", show_default=False)],
    current: Annotated[Path, typer.Argument(help="Current results.csv to check, or a directory (a run's, or of "
                                            "shards).", show_default=False)],
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
) -> None:
    """Compare CURRENT against BASELINE case by case: exit 0 no regression, 1 regression, 2 bad input,
    3 not comparable (other device or schema; another machine with --strict-machine)."""
    gate_and_exit(baseline, current, raw=raw, latency=latency, threshold=threshold, mem_tolerance=mem_tolerance,
                  alpha=alpha, thresholds_file=thresholds_file, confirm=confirm, normalise=normalise,
                  summary=summary, update_baseline=update_baseline, strict_machine=strict_machine,
                  export_format=export_format, export_out=export_out, quiet=quiet)
