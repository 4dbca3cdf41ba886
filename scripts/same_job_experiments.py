"""The same-job A/B gate's experiments (`scripts/gate_experiments.py --same-job`): A/A runs and A/B runs with real
code changes in throwaway commits, each gated as .ci/run does (`sparsebench gate --base-ref HEAD~1 --config
configs/ci.toml`), in a scratch clone of this repository's HEAD.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
KERNEL = Path("sparsebench/impls/structured.py")
CALL = "        return prep.state(q, k, v)\n"
DEFAULT_CHANGES = ["slow:1.10", "slow:1.15", "slow:1.3", "slow:2", "mem:1.10"]

SLOW = '''        import time as _time  # experiment: a slower kernel

        _t0 = _time.perf_counter()
        _out = prep.state(q, k, v)
        _end = _time.perf_counter() + {extra!r} * (_time.perf_counter() - _t0)
        while _time.perf_counter() < _end:
            pass
        return _out
'''
MEM = '''        # experiment: more memory, held while the kernel runs
        _extra = torch.ones(int({table!r}.get((prep.pattern.name, q.shape[2]), 0) // 4))
        _out = prep.state(q, k, v)
        del _extra
        return _out
'''


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("GITHUB_STEP_SUMMARY", "PYTHONPATH")}


def scratch_clone(out: Path) -> tuple[Path, str]:
    """A clone of this repository's HEAD under OUT_DIR (what is measured: commit first), and its commit."""
    repo = out / "repo"
    if not repo.exists():
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        git(repo, "config", "user.email", "experiments@sparsebench.invalid")
        git(repo, "config", "user.name", "gate experiments")
    head = git(ROOT, "rev-parse", "HEAD")
    git(repo, "fetch", "-q", str(ROOT), head)
    git(repo, "checkout", "-q", "--detach", head)
    return repo, head


def tensor_peaks(repo: Path, config: str, out: Path) -> dict[tuple[str, int], float]:
    """(pattern, n) -> bytes of the structured kernel's CPU tensor peak, from one run of the config."""
    rows = out / "peaks"
    subprocess.run([sys.executable, "-m", "sparsebench", "run", "--config", config, "--impl", "structured",
                    "--min-run-time", "0.01", "--out-dir", str(rows), "--overwrite", "-q"], cwd=repo, env=env(),
                   check=True, capture_output=True)
    frame = pd.read_csv(rows / "results.csv")
    frame = frame[(frame["impl"] == "structured") & (frame["status"] == "ok")]
    return {(r["pattern"], int(r["seq_len"])): float(r["peak_mem_mib"]) * 2**20 for r in frame.to_dict("records")}


def make_change(repo: Path, base: str, change: str, peaks: dict) -> str:
    """A throwaway commit on `base` with the change written into the structured kernel; returns its hash."""
    kind, _, factor = change.partition(":")
    git(repo, "checkout", "-q", "--detach", base)
    path = repo / KERNEL
    text = path.read_text()
    if CALL not in text:
        raise SystemExit(f"{KERNEL}: its forward no longer reads {CALL.strip()!r}; update the experiment")
    if kind == "slow":
        body = SLOW.format(extra=float(factor) - 1.0)
    elif kind == "mem":
        body = MEM.format(table={k: v * (float(factor) - 1.0) for k, v in peaks.items()})
    else:
        raise SystemExit(f"--change {change}: slow:F or mem:F")
    path.write_text(text.replace(CALL, body, 1))
    git(repo, "commit", "-qam", f"experiment: {change}")
    return git(repo, "rev-parse", "HEAD")


def gate_once(repo: Path, config: str, run_dir: Path, extra: list[str]) -> dict:
    """`sparsebench gate --base-ref HEAD~1` (or HEAD for A/A, by what is checked out) as a user runs it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    base_ref = "HEAD~1" if git(repo, "log", "-1", "--format=%s").startswith("experiment:") else "HEAD"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sparsebench", "gate", "--base-ref", base_ref, "--config", config,
                           "--out-dir", str(run_dir / "rows"), "--summary", str(run_dir / "gate.md"), *extra], cwd=repo,
                          env=env(), capture_output=True, text=True)
    (run_dir / "gate.log").write_text(proc.stdout + proc.stderr)
    regressions = re.findall(r"^REGRESSION (\S+): (\S+)", proc.stderr, flags=re.M)
    return {"dir": str(run_dir), "exit": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
            "regressions": regressions, "load": os.getloadavg()[0]}


def stored_rounds(run_dir: Path) -> list[tuple[str, list[dict]]]:
    """The main rounds of a run, from the rows it kept, in the order they were measured."""
    return split_rounds(run_dir)[0]


def split_rounds(run_dir: Path) -> tuple[list[tuple[str, list[dict]]], list[tuple[str, list[dict]]]]:
    """(main rounds, confirmation rounds) of a run, each in the order of the gate's schedule, from the rows it
    kept (one run_id per round) and the pairs its log names ("N rounds each")."""
    from sparsebench import paired

    found = re.search(r"(\d+) rounds each", (run_dir / "gate.log").read_text())
    pairs = int(found.group(1)) if found else paired.DEFAULT_ROUNDS
    per_side = {}
    for side in (paired.BASE, paired.HEAD):
        frame = pd.read_csv(run_dir / "rows" / side / "results.csv", low_memory=False)
        per_side[side] = [frame[frame["run_id"] == i].to_dict("records") for i in dict.fromkeys(frame["run_id"])]

    def scheduled(first: int, count: int) -> list[tuple[str, list[dict]]]:
        taken = {side: iter(rounds[first:first + count]) for side, rounds in per_side.items()}
        return [(side, next(taken[side])) for side in paired.schedule(count)]

    extra = min(len(rounds) for rounds in per_side.values()) - pairs
    return scheduled(0, pairs), scheduled(pairs, extra) if extra > 0 else []


def confirmations(run_dir: Path, prefixes: tuple[int, ...]) -> dict[int, bool | None]:
    """Per k in `prefixes`: whether a stored run fails (a latency regression confirmed) when its confirmation holds
    only the first k of its fresh pairs: the gate's defaults on its main rounds (judged once), then
    `paired.confirm` on that prefix (the schedule's first pairs are a shorter schedule). None: fewer pairs stored
    (a run that flagged nothing stored none, and passes at every k)."""
    from sparsebench import gate, paired

    main, again = split_rounds(run_dir)
    thresholds = gate.Thresholds()
    screen = paired.ab_report(main, thresholds)
    if not gate.latency_regressions(screen):
        return dict.fromkeys(prefixes, False)
    out: dict[int, bool | None] = {}
    for k in prefixes:
        if len(again) < 2 * k:
            out[k] = None
            continue
        report = paired.confirm(copy.deepcopy(screen), again[:2 * k], thresholds.alpha, paired.DEFAULT_NORMALISE,
                                paired.DEFAULT_MIN_EFFECT)  # confirm adds findings: each k on its own copy
        out[k] = any(f.metric == "confirm" and f.verdict == gate.REGRESSION for c in report.cases for f in c.findings)
    return out


def pair_noise(run_dir: Path) -> dict[str, dict[str, float]]:
    """Per case: the sd of the per-pair log ratio head/base under each normalisation (main rounds only)."""
    from sparsebench import paired

    rounds = stored_rounds(run_dir)
    out: dict[str, dict[str, float]] = {}
    for normalise in paired.NORMALISATIONS:
        for key, (base, head) in paired.pair_values(rounds, normalise).items():
            d = paired.log_ratios(base, head)
            if len(d) >= 3 and not (normalise != "raw" and key[0] == "dense"):
                out.setdefault("/".join(key[:3]) + f"/{key[9]}", {})[normalise] = statistics.stdev(d)
    return out


def screened(run_dir: Path) -> dict[str, int]:
    """Per normalisation: the latency regressions the gate's defaults find in the main rounds of a stored run,
    before any confirmation (a run made under one normalisation, judged again under the others)."""
    from sparsebench import gate, paired

    rounds = stored_rounds(run_dir)
    return {n: len(gate.latency_regressions(paired.ab_report(rounds, gate.Thresholds(), normalise=n)))
            for n in paired.NORMALISATIONS}


def same_job(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    started, t0 = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.perf_counter()
    repo, base = scratch_clone(out)
    changes = args.change or DEFAULT_CHANGES
    extra = args.gate_args.split()  # e.g. "--rounds 3" for a smoke test; the defaults are what is measured
    peaks = tensor_peaks(repo, args.config, out) if any(c.startswith("mem:") for c in changes) else {}

    def in_budget() -> bool:
        return not args.budget_min or (time.perf_counter() - t0) / 60 < args.budget_min

    commits = {change: make_change(repo, base, change, peaks) for change in changes}
    aa, ab = recorded(out) if args.resume else ([], {})
    done = {r["dir"] for r in aa + [r for runs in ab.values() for r in runs]}
    if args.resume:
        started = json.loads((out / "summary.json").read_text()).get("started", started)
        print(f"resuming: {len(aa)} A/A and {sum(map(len, ab.values()))} A/B runs recorded in {out}", flush=True)
    # interleaved (A/A i, then run i of every change), so that a budget cut leaves every kind with runs
    for i in range(1, max(args.runs, args.ab) + 1):
        if i <= args.runs and in_budget() and str(out / f"aa{i:02d}") not in done:
            git(repo, "checkout", "-q", "--detach", base)
            busy = args.neighbour_every > 0 and i % args.neighbour_every == 0
            if busy:
                from gate_experiments import Neighbour  # here: gate_experiments imports this module at its top

                with Neighbour():
                    r = gate_once(repo, args.config, out / f"aa{i:02d}", extra)
            else:
                r = gate_once(repo, args.config, out / f"aa{i:02d}", extra)
            r["neighbour"], r["commit"] = busy, base
            aa.append(r)
            write(out, started, args.config, aa, ab, extra, echo=False)  # nothing measured is lost on Ctrl-C
            print(f"A/A {i:2d}{' (neighbour)' if busy else ''}: exit {r['exit']} in {r['wall_s']:.0f} s, load "
                  f"{r['load']:.1f}, flagged {r['regressions']}", flush=True)
        for change, commit in commits.items():
            if i > args.ab or not in_budget() or str(out / f"ab-{change.replace(':', '-')}-{i:02d}") in done:
                continue
            git(repo, "checkout", "-q", "--detach", commit)
            r = gate_once(repo, args.config, out / f"ab-{change.replace(':', '-')}-{i:02d}", extra)
            word = "latency" if change.startswith("slow:") else "peak"  # the first word of the finding's message
            r["caught"] = sum("/structured/" in name and what == word for name, what in r["regressions"])
            r["detected"] = r["exit"] == 1 and r["caught"] > 0
            r["other"] = [name for name, what in r["regressions"]
                          if "/structured/" not in name or what not in (word, "confirmed")]
            r["commit"] = base
            ab.setdefault(change, []).append(r)
            write(out, started, args.config, aa, ab, extra, echo=False)
            print(f"A/B {change} {i:2d}: exit {r['exit']} in {r['wall_s']:.0f} s, caught {r['caught']} structured "
                  f"case(s), others {r['other']}", flush=True)
    git(repo, "checkout", "-q", "--detach", base)
    write(out, started, args.config, aa, ab, extra)


def confirmation_table(kinds: dict[str, list[dict]], prefixes: tuple[int, ...] = (10, 8, 6, 5)) -> list[str]:
    """Markdown: per kind of run, the runs that fail when the confirmation holds only its first k pairs (a run
    that flags nothing counts as passing at every k; one with fewer pairs stored is left out of that column)."""
    from sparsebench import paired

    lines = ["", "Every run judged again with its confirmation cut to its first k pairs (runs that fail / runs "
             f"judged; the gate's default is k = {paired.DEFAULT_CONFIRM_PAIRS}):", "",
             "| runs | " + " | ".join(f"k = {k}" for k in prefixes) + " |", "|---|" + "---|" * len(prefixes)]
    for kind, runs in kinds.items():
        verdicts = []  # one dict per readable run: every k judged from one read of its rows
        for r in runs:
            try:
                verdicts.append(confirmations(Path(r["dir"]), prefixes))
            except (OSError, KeyError, ValueError):
                continue
        cells = []
        for k in prefixes:
            judged = [v[k] for v in verdicts if v[k] is not None]
            cells.append(f"{sum(judged)}/{len(judged)}" if judged else "-")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines if len(lines) > 5 else []


def recorded(out: Path) -> tuple[list[dict], dict[str, list[dict]]]:
    """The A/A and A/B runs recorded in OUT_DIR/summary.json by an earlier, stopped or budget-cut, experiment."""
    try:
        data = json.loads((out / "summary.json").read_text())
        return list(data["aa"]), {change: list(runs) for change, runs in data["ab"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"--resume: no readable experiment in {out}/summary.json ({exc})") from None


def write(out: Path, started: str, config: str, aa: list[dict], ab: dict[str, list[dict]],
          extra: list[str], echo: bool = True) -> None:
    """OUT_DIR/summary.md and summary.json (printed too when `echo`; not after each run)."""
    def alarms(runs: list[dict]) -> str:
        return f"{sum(r['exit'] != 0 for r in runs)}/{len(runs)}"

    walls = [r["wall_s"] for r in aa + [r for runs in ab.values() for r in runs]]
    quiet, busy = [r for r in aa if not r["neighbour"]], [r for r in aa if r["neighbour"]]
    lines = [f"Same-job A/B gate (`sparsebench gate --base-ref HEAD~1 --config {config} {' '.join(extra)}`), started "
             f"{started}; {os.cpu_count()} CPUs, load average at each run's end in summary.json.", "",
             f"- A/A: {alarms(aa)} false alarms ({alarms(quiet)} quiet, {alarms(busy)} with a CPU-bound neighbour)"]
    for change, runs in ab.items():
        lines.append(f"- A/B {change}: detected {sum(r['detected'] for r in runs)}/{len(runs)}; runs with another "
                     f"case flagged: {sum(bool(r['other']) for r in runs)}/{len(runs)}")
    if walls:
        lines.append(f"- time of one gate: median {statistics.median(walls):.0f} s, max {max(walls):.0f} s "
                     f"({len(walls)} runs)")
    noise: dict[str, dict[str, list[float]]] = {}
    for r in aa:
        try:
            for case, sds in pair_noise(Path(r["dir"])).items():
                for normalise, sd in sds.items():
                    noise.setdefault(case, {}).setdefault(normalise, []).append(sd)
        except (OSError, KeyError, ValueError):
            continue
    names = ("raw", "dense", "sdpa")
    if noise:
        lines += ["", "Per-pair noise over the A/A runs: the sd of log(head/base) of one pair of rounds, mean over "
                  "runs (lower is better; it decides the normalisation):", "",
                  "| case | raw | dense-normalised | SDPA-normalised |", "|---|---|---|---|"]
        for case, sds in sorted(noise.items()):
            cells = [f"{statistics.mean(sds[n]):.3f}" if sds.get(n) else "-" for n in names]
            lines.append(f"| `{case}` | {' | '.join(cells)} |")
        means = [statistics.mean([statistics.mean(s[n]) for s in noise.values() if s.get(n)]) for n in names]
        lines.append("| mean | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    kinds = {"A/A": aa, **{f"A/B {change}": runs for change, runs in ab.items()}}
    table = ["", "Every run's main rounds judged again under each normalisation, before any confirmation: runs with "
             "a latency regression (the confirmation on fresh rounds can only clear one):", "",
             "| runs | raw | dense-normalised | SDPA-normalised |", "|---|---|---|---|"]
    for kind, runs in kinds.items():
        counts = []
        for r in runs:
            try:
                counts.append(screened(Path(r["dir"])))
            except (OSError, KeyError, ValueError):
                continue
        if counts:
            table.append(f"| {kind} | " + " | ".join(f"{sum(c[n] > 0 for c in counts)}/{len(counts)}" for n in names)
                         + " |")
    lines += table if len(table) > 5 else []
    lines += confirmation_table(kinds)
    commits = sorted({str(r.get("commit", "?"))[:10] for r in aa + [r for runs in ab.values() for r in runs]})
    if len(commits) > 1:  # a resumed experiment: runs of different code, each listed in summary.json
        lines += ["", f"Runs of {len(commits)} commits: {', '.join(commits)} (each run's commit in summary.json)."]
    text = "\n".join(lines) + "\n"
    if echo:
        print(text)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"started": started, "aa": aa, "ab": ab}, indent=1,
                                                 default=str) + "\n")
