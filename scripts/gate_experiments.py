"""A/A and A/B experiments for `sparsebench gate`: does the gate cry wolf, does it catch a slowdown?

A/A: one baseline run of the config, then N more independent runs, each gated against the baseline (as CI
does with a committed baseline) and against the previous run. Any exit 1 is a false alarm (target 0).
A/B: M runs with a test-only slowdown of one implementation (SPARSEBENCH_TEST_SLOWDOWN=impl:factor, which
the worker honours), each gated against the baseline. Detected = exit 1 with a latency regression of that
impl (target M/M); regressions of other impls are counted as false alarms too.

    python3 scripts/gate_experiments.py --config configs/ci.toml --aa 20 --ab 10 --slowdown structured:1.3 \\
        --out-dir /tmp/gate-exp

Writes OUT_DIR/summary.md and summary.json; every run stays under OUT_DIR for inspection.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sparsebench import gate  # noqa: E402  (after the sys.path insert)
from sparsebench.results import read_results  # noqa: E402


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SPARSEBENCH_TEST_SLOWDOWN", "GITHUB_STEP_SUMMARY")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


def run(config: str, out_dir: Path, slowdown: str | None = None, reuse: bool = False) -> Path:
    """One `sparsebench run` of the config into out_dir; returns its results.csv (--reuse: keep an old one)."""
    if reuse and (out_dir / "results.csv").is_file():
        return out_dir / "results.csv"
    env = _env(SPARSEBENCH_TEST_SLOWDOWN=slowdown) if slowdown else _env()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(out_dir / "run.log", "w") as log:
        subprocess.run([sys.executable, "-m", "sparsebench", "run", "--config", config, "--out-dir", str(out_dir),
                        "--overwrite"], env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    print(f"  ran {out_dir.name} in {time.perf_counter() - t0:.0f} s" + (f" ({slowdown})" if slowdown else ""),
          flush=True)
    return out_dir / "results.csv"


def gate_pair(base: Path, cur: Path, extra: list[str], slowdown: str | None = None) -> dict:
    """Gate through the CLI (the exit code CI sees; with --confirm its re-runs keep the slowdown) and
    in-process (the details, before any --confirm)."""
    env = _env(SPARSEBENCH_TEST_SLOWDOWN=slowdown) if slowdown else _env()
    proc = subprocess.run([sys.executable, "-m", "sparsebench", "gate", str(base), str(cur), *extra],
                          check=False, env=env, capture_output=True, text=True)
    (cur.parent / f"gate-vs-{base.parent.name}.log").write_text(proc.stdout + proc.stderr)
    report = gate.compare(read_results(base), read_results(cur), raw="--raw" in extra,
                          gate_latency="--no-latency" not in extra)
    ratios = [(c.ratio, c.name) for c in report.cases if c.ratio == c.ratio]
    worst = max(ratios) if ratios else (float("nan"), "")
    regressions = [(c.name, c.impl, f.metric, f.message) for c in report.cases for f in c.findings
                   if f.verdict == gate.REGRESSION]
    return {"base": str(base), "current": str(cur), "exit": proc.returncode, "max_ratio": worst[0],
            "max_ratio_case": worst[1], "warnings": len(report.with_verdict(gate.WARNING)),
            "regressions": regressions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/ci.toml")
    parser.add_argument("--aa", type=int, default=20, help="A/A runs (each gated against the baseline)")
    parser.add_argument("--ab", type=int, default=10, help="A/B runs with the injected slowdown")
    parser.add_argument("--slowdown", default="structured:1.3", help="impl:factor for SPARSEBENCH_TEST_SLOWDOWN")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/gate-experiments"))
    parser.add_argument("--gate-args", default="", help="extra `sparsebench gate` options, e.g. '--raw'")
    parser.add_argument("--reuse", action="store_true", help="re-gate the runs already in OUT_DIR, run only "
                        "the missing ones (e.g. to try other gate options on the same data)")
    args = parser.parse_args()
    extra = args.gate_args.split()
    slowed_impl = args.slowdown.split(":")[0]
    out = args.out_dir
    print(f"baseline run of {args.config}", flush=True)
    base = run(args.config, out / "base", reuse=args.reuse)

    aa, aa_pairs, previous = [], [], base
    for i in range(1, args.aa + 1):
        cur = run(args.config, out / f"aa{i:02d}", reuse=args.reuse)
        aa.append(gate_pair(base, cur, extra))
        if previous != base:
            aa_pairs.append(gate_pair(previous, cur, extra))
        previous = cur
        r = aa[-1]
        print(f"A/A {i:2d}: exit {r['exit']}  max ratio {r['max_ratio']:.3f} ({r['max_ratio_case']})  "
              f"warnings {r['warnings']}  regressions {r['regressions']}", flush=True)

    ab = []
    for i in range(1, args.ab + 1):
        cur = run(args.config, out / f"ab{i:02d}", args.slowdown, args.reuse)
        r = gate_pair(base, cur, extra, args.slowdown)
        r["detected"] = r["exit"] == 1 and any(impl == slowed_impl and metric == "latency"
                                               for _, impl, metric, _ in r["regressions"])
        r["other_regressions"] = [x for x in r["regressions"] if x[1] != slowed_impl]
        ab.append(r)
        print(f"A/B {i:2d}: exit {r['exit']}  detected {r['detected']}  "
              f"caught {sum(x[1] == slowed_impl for x in r['regressions'])} case(s) of {slowed_impl}  "
              f"other regressions {r['other_regressions']}", flush=True)

    false_alarms = sum(r["exit"] != 0 for r in aa)
    deterministic = sum(any(x[2] != "latency" for x in r["regressions"]) for r in aa + aa_pairs)
    pair_alarms = sum(r["exit"] != 0 for r in aa_pairs)
    detected = sum(r["detected"] for r in ab)
    ab_false = sum(bool(r["other_regressions"]) for r in ab)
    lines = [
        f"config `{args.config}`, gate options `{' '.join(extra) or '(defaults)'}`",
        (f"- A/A against the baseline run: {false_alarms}/{len(aa)} false alarms "
        f"(largest latency ratio seen {max((r['max_ratio'] for r in aa), default=float('nan')):.3f})"),
        f"- A/A between consecutive runs: {pair_alarms}/{len(aa_pairs)} false alarms",
        (f"- A/A gates (both kinds) failing on a deterministic metric (flops, density, memory, status): "
        f"{deterministic}/{len(aa) + len(aa_pairs)}"),
        (f"- A/B with SPARSEBENCH_TEST_SLOWDOWN={args.slowdown}: detected {detected}/{len(ab)}; "
        f"runs with a regression of another impl: {ab_false}/{len(ab)}"),
    ]
    print("\n".join(lines))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({"aa": aa, "aa_pairs": aa_pairs, "ab": ab}, indent=1,
                                                 default=str) + "\n")


if __name__ == "__main__":
    main()
