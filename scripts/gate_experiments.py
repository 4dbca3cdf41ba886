"""A/A and A/B experiments for `sparsebench gate`: does the gate cry wolf, does it catch a slowdown?

A/A: N fresh runs of the config, each gated against the committed baseline with the gate's defaults (exactly
what CI does), every third one with a CPU-bound neighbour process running (as on a shared CI host). Any exit 1
is a false alarm (target 0). Each run is also compared in-process, before any --confirm re-run, with each
normalisation (dense, shape), to show which one a noisy reference needs.
A/B: M runs per slowdown (impl:factor) with that implementation replaced by its test-only slowed variant (the
plugin tests/fault_impls.py:IMPL_xFACTOR, named faulty_IMPL: the same code with a busy-wait after each call), each
gated against a copy of the baseline whose IMPL rows carry that name. Detected = exit 1 with a latency regression
of that impl; regressions of other impls are counted too.

    python3 scripts/gate_experiments.py --config configs/ci.toml --baseline baselines/ci-cpu/results.csv \
        --aa 30 --ab 10 --slowdown structured:1.3 --slowdown structured:1.15 --out-dir /tmp/gate-exp

Writes OUT_DIR/summary.md and summary.json; every run stays under OUT_DIR for inspection.

--same-job: the same-job A/B gate instead (`sparsebench gate --base-ref HEAD~1`, as .ci/run and the README run it),
in a scratch clone of this repository's HEAD (commit what you want measured first). A/A: --runs N gates of a
commit against itself, every third with a CPU-bound neighbour. A/B: --ab M gates per real code change, each made
as a throwaway commit on top of HEAD in the clone: `slow:F` makes the `structured` kernel's forward F times
slower (a busy-wait for (F-1) times its own duration, written into sparsebench/impls/structured.py), `mem:F`
makes it hold F-1 times its own CPU tensor peak more (an extra buffer alive during the call, sized from the
peaks a first run measures). --budget-min stops starting runs after that many minutes; the summary covers the
runs made (and the per-pair noise of each normalisation, from every round's rows). The summary is
rewritten after every run; --resume continues an experiment from it (the same OUT_DIR), making only the runs it
lacks, each recorded with the commit it measured.

    python3 scripts/gate_experiments.py --same-job --runs 30 --ab 10 --out-dir /tmp/gate-ab
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sparsebench import gate  # noqa: E402  (after the sys.path insert)
from sparsebench.results import read_results  # noqa: E402
from sparsebench.runner import load_config  # noqa: E402

FAULT_IMPLS = ROOT / "tests" / "fault_impls.py"  # test-only variants of the built-ins (slowed: IMPL_xFACTOR)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def slowed(config: str, base: Path, slowdown: str, out: Path) -> tuple[list[str], Path, str]:
    """What the A/B runs of `slowdown` (impl:factor) measure and are gated against: --impl options (the config's
    implementations, `impl` replaced by its slowed variant), a copy of the baseline (with its meta.json) whose
    `impl` rows carry the variant's name, and that name."""
    impl, _, factor = slowdown.partition(":")
    impls = load_config(config).get("impls") or []
    if impl not in impls:
        raise SystemExit(f"--slowdown {slowdown}: {config} does not name {impl} in its impls")
    spec = f"{FAULT_IMPLS}:{impl}_x{factor.replace('.', 'p')}"
    options = [x for i in impls for x in ("--impl", spec if i == impl else i)]
    copy = out / f"baseline-{impl}" / "results.csv"
    copy.parent.mkdir(parents=True, exist_ok=True)
    with open(base, newline="") as fh:
        records = list(csv.reader(fh))
    column = records[0].index("impl")
    for record in records[1:]:
        record[column] = f"faulty_{impl}" if record[column] == impl else record[column]
    with open(copy, "w", newline="") as fh:
        csv.writer(fh).writerows(records)
    if base.with_name("meta.json").is_file():
        shutil.copyfile(base.with_name("meta.json"), copy.with_name("meta.json"))
    return options, copy, f"faulty_{impl}"


def run(config: str, out_dir: Path, impls: list[str] = (), slowdown: str = "") -> Path:
    """One fresh `sparsebench run` of the config (with `impls`: these --impl options) into out_dir; returns its
    results.csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(out_dir / "run.log", "w") as log:
        subprocess.run([sys.executable, "-m", "sparsebench", "run", "--config", config, *impls, "--out-dir",
                        str(out_dir), "--overwrite"], env=_env(), stdout=log, stderr=subprocess.STDOUT, check=True)
    print(f"  ran {out_dir.name} in {time.perf_counter() - t0:.0f} s" + (f" ({slowdown})" if slowdown else ""),
          flush=True)
    return out_dir / "results.csv"


def gate_pair(base: Path, cur: Path, extra: list[str]) -> dict:
    """Gate through the CLI (the exit code CI sees; its --confirm re-runs load the current run's plugins, a
    slowed variant included) and in-process with each normalisation, before any re-run."""
    env = _env()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sparsebench", "gate", str(base), str(cur), *extra],
                          check=False, env=env, capture_output=True, text=True)
    (cur.parent / f"gate-vs-{base.parent.name}.log").write_text(proc.stdout + proc.stderr)
    result = {"base": str(base), "current": str(cur), "exit": proc.returncode,
              "gate_s": round(time.perf_counter() - t0, 1), "confirmed": proc.stderr.count("confirmed: "),
              "not_confirmed": proc.stderr.count("not confirmed: ")}
    base_frame, cur_frame = read_results(base), read_results(cur)
    for normalise in gate.NORMALISATIONS:
        report = gate.compare(base_frame, cur_frame, normalise=normalise)
        ratios = [(c.ratio, c.name, c.cur_latency) for c in report.cases if c.ratio == c.ratio]
        worst = max(ratios, key=lambda r: abs(r[0] - 1)) if ratios else (float("nan"), "", 0)
        result[normalise] = {
            "worst_ratio": worst[0], "worst_case": worst[1],
            "regressions": [(c.name, c.impl, f.metric, f.message) for c in report.cases for f in c.findings
                            if f.verdict == gate.REGRESSION]}
    return result


THRESHOLDS = (1.15, 1.3, 1.5)


def by_threshold(base: Path, runs: list[Path], impl: str | None = None) -> dict[str, dict[float, int]]:
    """For each normalisation and threshold: how many of `runs` have a case flagged before any re-run (ratio
    beyond the threshold and significant); with `impl`, only that implementation's cases count."""
    base_frame = read_results(base)
    counts: dict[str, dict[float, int]] = {n: dict.fromkeys(THRESHOLDS, 0) for n in gate.NORMALISATIONS}
    for path in runs:
        cur_frame = read_results(path)
        for normalise in gate.NORMALISATIONS:
            for threshold in THRESHOLDS:
                report = gate.compare(base_frame, cur_frame, gate.Thresholds(gate.Limits(latency=threshold)),
                                      normalise=normalise)
                flagged = [c for c in gate.latency_regressions(report) if impl is None or c.impl == impl]
                counts[normalise][threshold] += bool(flagged)
    return counts


class Neighbour:
    """A CPU-bound process beside the benchmark (a busy loop), as a shared CI host has."""

    def __enter__(self) -> Neighbour:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/ci.toml")
    parser.add_argument("--baseline", type=Path, default=Path("baselines/ci-cpu/results.csv"),
                        help="the committed baseline every run is gated against")
    parser.add_argument("--aa", type=int, default=30, help="A/A runs")
    parser.add_argument("--neighbour-every", type=int, default=3, help="a CPU-bound neighbour in every k-th A/A")
    parser.add_argument("--ab", type=int, default=10, help="A/B runs per slowdown")
    parser.add_argument("--slowdown", action="append", help="impl:factor: that impl's test-only variant, factor "
                        "times slower (repeatable; default structured:1.3 and structured:1.15)")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/gate-experiments"))
    parser.add_argument("--gate-args", default="", help="extra `sparsebench gate` options (default: none)")
    parser.add_argument("--analyse-only", action="store_true", help="no new runs: the summary again from the runs "
                        "and exit codes recorded in OUT_DIR/summary.json")
    parser.add_argument("--same-job", action="store_true", help="experiments of the same-job A/B gate (see above)")
    parser.add_argument("--runs", type=int, default=30, help="--same-job: A/A runs")
    parser.add_argument("--change", action="append", help="--same-job: slow:F or mem:F (repeatable; default "
                        "slow:1.10 slow:1.15 slow:1.3 slow:2 mem:1.10)")
    parser.add_argument("--budget-min", type=float, default=0.0, help="--same-job: start no run after this many "
                        "minutes (0: no limit)")
    parser.add_argument("--resume", action="store_true", help="--same-job: keep the runs recorded in "
                        "OUT_DIR/summary.json and make only the missing ones (an experiment spread over sessions)")
    args = parser.parse_args()
    if args.same_job:
        from same_job_experiments import same_job

        same_job(args)
        return
    extra = args.gate_args.split()
    slowdowns = args.slowdown or ["structured:1.3", "structured:1.15"]
    out, base = args.out_dir, args.baseline
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.analyse_only:
        recorded = json.loads((out / "summary.json").read_text())
        write_summary(args.config, base, extra, recorded.get("started", "(not recorded)"), recorded["aa"],
                      recorded["ab"], out)
        return

    aa = []
    for i in range(1, args.aa + 1):
        busy = args.neighbour_every > 0 and i % args.neighbour_every == 0
        if busy:
            with Neighbour():
                cur = run(args.config, out / f"aa{i:02d}")
                r = gate_pair(base, cur, extra)
        else:
            cur = run(args.config, out / f"aa{i:02d}")
            r = gate_pair(base, cur, extra)
        r["neighbour"] = busy
        aa.append(r)
        print(f"A/A {i:2d}{' (neighbour)' if busy else ''}: exit {r['exit']}  "
              + "  ".join(f"{n}: {len(r[n]['regressions'])} flagged, worst {r[n]['worst_ratio']:.3f}"
                          for n in gate.NORMALISATIONS), flush=True)

    ab: dict[str, list[dict]] = {}
    for slowdown in slowdowns:
        impls, ab_base, impl = slowed(args.config, base, slowdown, out)
        for i in range(1, args.ab + 1):
            cur = run(args.config, out / f"ab-{slowdown.replace(':', '-')}-{i:02d}", impls, slowdown)
            r = gate_pair(ab_base, cur, extra)
            caught = [x for x in r["shape"]["regressions"] if x[1] == impl and x[2] == "latency"]
            r["detected"] = r["exit"] == 1 and bool(caught)
            r["other"] = [x for x in r["shape"]["regressions"] if x[1] != impl]
            ab.setdefault(slowdown, []).append(r)
            print(f"A/B {slowdown} {i:2d}: exit {r['exit']}  caught {len(caught)} case(s) of {impl}  "
                  f"others flagged {len(r['other'])}", flush=True)

    write_summary(args.config, base, extra, started, aa, ab, out)


def write_summary(config: str, base: Path, extra: list[str], started: str, aa: list[dict],
                  ab: dict[str, list[dict]], out: Path) -> None:
    """OUT_DIR/summary.md (the figures) and summary.json (every run's gate results)."""
    def alarms(runs: list[dict]) -> str:
        return f"{sum(r['exit'] != 0 for r in runs)}/{len(runs)}"

    quiet = [r for r in aa if not r["neighbour"]]
    busy = [r for r in aa if r["neighbour"]]
    lines = [f"config `{config}` gated against `{base}`, gate options `{' '.join(extra) or '(defaults)'}`; "
             f"started {started}", "",
             f"- A/A, exit code of `sparsebench gate` with these options: {alarms(aa)} false alarms "
             f"({alarms(quiet)} on the quiet machine, {alarms(busy)} with a CPU-bound neighbour)"]
    for normalise in gate.NORMALISATIONS:
        flagged = sum(bool(r[normalise]["regressions"]) for r in aa)
        worst = max((r[normalise]["worst_ratio"] for r in aa), key=lambda x: abs(x - 1), default=float("nan"))
        lines.append(f"- A/A before any re-run, `--normalise {normalise}`: {flagged}/{len(aa)} runs with a "
                     f"flagged case (largest ratio {worst:.3f})")
    lines.append(f"- A/A cases re-run by --confirm: {sum(r['confirmed'] + r['not_confirmed'] for r in aa)}, "
                 f"confirmed {sum(r['confirmed'] for r in aa)}")
    for slowdown, runs in ab.items():
        lines.append(f"- A/B with {slowdown} slower: detected {sum(r['detected'] for r in runs)}"
                     f"/{len(runs)}; runs with another impl flagged: {sum(bool(r['other']) for r in runs)}"
                     f"/{len(runs)}")
    lines += ["", "Runs with a latency case flagged before any re-run, by normalisation and threshold "
              "(A/A: false alarms without --confirm; A/B: detections of the slowed impl):", "",
              "| runs | normalise | " + " | ".join(f"{t:g}x" for t in THRESHOLDS) + " |",
              "|---|---|" + "---|" * len(THRESHOLDS)]
    groups = [("A/A", [Path(r["current"]) for r in aa], None)]
    groups += [(f"A/B {s}", [Path(r["current"]) for r in runs], s.split(":")[0]) for s, runs in ab.items()]
    for label, paths, impl in groups:
        # A/B runs: against the baseline's copy whose impl rows carry the slowed variant's name
        counts = by_threshold(Path(paths[0]).parents[1] / f"baseline-{impl}" / "results.csv" if impl else base,
                              paths, f"faulty_{impl}" if impl else None)
        for normalise in gate.NORMALISATIONS:
            lines.append(f"| {label} | {normalise} | "
                         + " | ".join(f"{counts[normalise][t]}/{len(paths)}" for t in THRESHOLDS) + " |")
    lines += ["", "Spread of each case's normalised ratio (current/baseline, `--normalise shape`) over the A/A "
              "runs, shortest case first:", "", "| baseline ms | case | min | max | sd of log ratio |",
              "|---|---|---|---|---|"]
    lines += [f"| {ms:.2f} | `{name}` | {min(r):.3f} | {max(r):.3f} | {sd:.3f} |"
              for ms, name, r, sd in spread(base, [Path(r["current"]) for r in aa])]
    print("\n".join(lines))
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({"started": started, "aa": aa, "ab": ab}, indent=1,
                                                 default=str) + "\n")


def spread(base: Path, runs: list[Path]) -> list[tuple[float, str, list[float], float]]:
    """(baseline latency, case, ratios, sd of log ratio) per case over `runs`, shortest case first."""
    base_frame = read_results(base)
    ratios: dict[str, list[float]] = {}
    for path in runs:
        for case in gate.compare(base_frame, read_results(path)).cases:
            if case.ratio == case.ratio:
                ratios.setdefault(case.name, []).append(case.ratio)
    latency = {gate.case_name(r): float(r["latency_ms"]) for r in base_frame.to_dict("records")}
    return sorted((latency[name], name, r, statistics.pstdev([math.log(x) for x in r]))
                  for name, r in ratios.items())


if __name__ == "__main__":
    main()
