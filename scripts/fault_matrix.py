"""Try the faults and bad inputs a demanding user would, and count what went wrong.

Faults: each on a tiny sweep in a process of its own (crashes, kills and signals are real; disk full is a file
size limit, which fails a write as ENOSPC does), followed by `--resume` where the fault stopped the run. A row
is lost when a complete row written before the fault is gone afterwards, or when a case of the sweep has no row
at the end; a worker is left behind when it is alive after its run and the recovery ended.
Bad inputs: each through the CLI in-process; clean means the right exit (2 for bad input; 1 for a gate that must
find a regression), one line on stderr (the gate's report for those) naming what the user gave as given, and no
traceback. Silently accepted means exit 0: the bad input went through as if it were sound. Every broken results
file and meta.json goes to every reader: plot, gate (as current and as baseline), export (alone and as
--baseline), history, merge and run --resume.

    python3 scripts/fault_matrix.py [--out-dir /tmp/fault-matrix] [--only faults|inputs]

Prints one line per fault and per unclean input, then the totals; writes OUT_DIR/summary.json.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from sparsebench.cli import app  # noqa: E402
from sparsebench.results import case_key, latest, read_results  # noqa: E402

FAST = ["--min-run-time", "0.05", "--heads", "2", "--head-dim", "32"]
FAULT_IMPLS = ROOT / "tests" / "fault_impls.py"  # test-only variants of the built-ins, failing or slowed on purpose


def variant(impl: str, name: str = "x1") -> str:
    """The --impl spec of a test-only variant of `impl` (`x1`: as is; a fault; `x3p5`: 3.5x slower), registered
    as faulty_<impl> whichever variant it is (tests/fault_impls.py)."""
    return f"{FAULT_IMPLS}:{impl}_{name}"


def use_variant(meta_json: Path, impl: str, name: str) -> None:
    """Make a run's meta.json name another variant of `impl`: what a re-run of its cases (gate --confirm) loads."""
    meta = json.loads(meta_json.read_text())
    for plugin in meta["plugins"]:
        if plugin["name"] == f"faulty_{impl}":
            plugin["spec"] = variant(impl, name)
    meta_json.write_text(json.dumps(meta))


EAGER, STRUCTURED = "faulty_eager", "faulty_structured"
SWEEP = [*FAST, "--pattern", "local", "--seq", "64", "--seq", "128", "--impl", variant("eager"), "--impl",
         variant("structured")]
CASES = 6  # 2 lengths x (dense reference, eager, structured)


# --- faults --------------------------------------------------------------------------------------------------------

class Run:
    """One `sparsebench run` in a process of its own; remembers every worker pid it ever had."""

    def __init__(self, out: Path, *args: str, fault: str = "", limit_file: int | None = None) -> None:
        """`fault` = 'impl:fault' (eager:hang): the sweep's variant of impl is the one that fails so."""
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if fault:
            impl, _, name = fault.partition(":")
            args = tuple(variant(impl, name) if arg == variant(impl) else arg for arg in args)

        def limit() -> None:  # a "disk" that takes only `limit_file` bytes per file
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails (EFBIG)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file, limit_file))

        self.out = out
        self.proc = subprocess.Popen([sys.executable, "-m", "sparsebench", "run", "--out-dir", str(out), *args],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=limit if limit_file else None)
        self.workers: set[int] = set()

    def watch_until(self, condition: Callable[[], bool], limit_s: float = 600) -> None:
        """Poll (collecting worker pids) until `condition()` holds or the run ends."""
        end = time.monotonic() + limit_s
        while self.proc.poll() is None and not condition() and time.monotonic() < end:
            try:
                self.workers |= {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
            except psutil.NoSuchProcess:
                break
            time.sleep(0.1)

    def wait(self) -> tuple[int, str]:
        self.watch_until(lambda: False)
        _, err = self.proc.communicate()
        return self.proc.returncode, err

    def rows(self) -> int:
        path = self.out / "results.csv"
        return len(path.read_text().splitlines()) - 1 if path.exists() else 0


def resume(out: Path) -> Run:
    run = Run(out, *SWEEP, "--resume")
    run.wait()
    return run


def alive(pids: set[int]) -> int:
    count = 0
    for pid in pids:
        try:
            count += psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            pass
    return count


def lost_rows(out: Path, before: list[str], cases: int = CASES) -> int:
    """Complete rows of `before` missing now, plus cases of the sweep with no row."""
    path = out / "results.csv"
    if not path.exists():
        return len(before) + cases
    now = set(path.read_text().splitlines()[1:])
    try:
        present = {case_key(r) for r in latest(read_results(path, allow_empty=True)).to_dict("records")}
    except Exception:  # an unreadable file loses everything in it
        return len(before) + cases
    return sum(line not in now for line in before) + max(cases - len(present), 0)


def complete_rows(out: Path) -> list[str]:
    path = out / "results.csv"
    if not path.exists():
        return []
    text = path.read_text()
    return text.splitlines()[1:] if text.endswith("\n") else text.splitlines()[1:-1]


def signal_main(out: Path, signum: int) -> tuple[int, int, str]:
    """A signal to the main process once the first row is written (the eager case hangs), then --resume."""
    run = Run(out, *SWEEP, fault="eager:hang")
    run.watch_until(lambda: run.rows() >= 1)
    run.watch_until(lambda: len(run.workers) > 0, limit_s=30)
    run.proc.send_signal(signum)
    code, err = run.wait()
    before = complete_rows(out)
    expected = 128 + signum if signum != signal.SIGKILL else -signal.SIGKILL
    said = [line for line in err.splitlines() if line.startswith(("interrupted", "error"))][-1:] or [""]
    note = f"exit {code}" + ("" if code == expected else f" (expected {expected})") + f"; {said[0][:100]}"
    time.sleep(2)  # the worker's parent-death signal (SIGKILL of the main process) is immediate; a margin
    left = alive(run.workers)
    again = resume(out)
    return lost_rows(out, before), left + alive(again.workers), note


def fault_injected(out: Path, fault: str, *extra: str) -> tuple[int, int, str]:
    run = Run(out, *SWEEP, *extra, fault=f"eager:{fault}")
    code, err = run.wait()
    rows = latest(read_results(out / "results.csv")).set_index("impl") if code == 0 else None
    note = f"exit {code}; eager: " + (", ".join(sorted(set(rows.loc[EAGER, "status"]))) if rows is not None
                                      else err.strip()[-160:])
    return lost_rows(out, []), alive(run.workers), note


def outside_kill_of_worker(out: Path) -> tuple[int, int, str]:
    run = Run(out, *SWEEP, "--timeout", "10", fault="eager:hang")
    run.watch_until(lambda: run.rows() >= 1)
    run.watch_until(lambda: len(run.workers) > 0, limit_s=30)
    for pid in list(run.workers):
        os.kill(pid, signal.SIGKILL)
    code, _ = run.wait()
    rows = read_results(out / "results.csv")
    killed = rows[rows.error.str.contains("killed by signal 9")]
    return lost_rows(out, []), alive(run.workers), f"exit {code}; {len(killed)} row(s) say killed by signal 9"


def partial_last_row(out: Path) -> tuple[int, int, str]:
    first = Run(out, *SWEEP)
    first.wait()
    path = out / "results.csv"
    data = path.read_bytes()
    last = data.rstrip(b"\r\n").rfind(b"\n") + 1
    path.write_bytes(data[: (last + len(data)) // 2])  # the last row cut in half, as a crash mid-write leaves it
    before = complete_rows(out)
    again = resume(out)
    note = "moved aside" if (out / "results.csv.partial").exists() else "NOT moved aside"
    return lost_rows(out, before), alive(first.workers | again.workers), note


def disk_full(out: Path) -> tuple[int, int, str]:
    run = Run(out, *SWEEP, limit_file=1800)  # room for meta.json, the header and about three rows
    code, err = run.wait()
    before = complete_rows(out)
    again = resume(out)
    said = [line for line in err.splitlines() if "error" in line][-1:] or [""]
    return lost_rows(out, before), alive(run.workers | again.workers), f"exit {code}; {said[0][:140]}"


def concurrent_runs(out: Path) -> tuple[int, int, str]:
    first = Run(out, *SWEEP)
    first.watch_until(lambda: (out / "results.csv").exists())
    second = Run(out, *SWEEP)
    code2, err2 = second.wait()
    waiting = Run(out, *SWEEP, "--resume", "--wait")
    code1, _ = first.wait()
    code3, _ = waiting.wait()
    note = f"first exit {code1}, second exit {code2} ({err2.strip()[:90]}), --wait --resume exit {code3}"
    return lost_rows(out, []), alive(first.workers | second.workers | waiting.workers), note


def float16_small_timeout(out: Path) -> tuple[int, int, str]:
    run = Run(out, *FAST, "--pattern", "local", "--seq", "256", "--impl", "structured", "--dtype", "float16",
              "--timeout", "3")
    code, _ = run.wait()
    frame = read_results(out / "results.csv")
    return int((frame.status != "ok").sum()), alive(run.workers), f"exit {code}; {list(frame.status)}"


def huge_seq(out: Path) -> tuple[int, int, str]:
    patterns = ["dense", "causal", "local", "strided", "sliding_window", "dilated", "fixed", "longformer", "bigbird"]
    args = [a for p in patterns for a in ("--pattern", p)]
    run = Run(out, *FAST, "--seq", "1000000000", "--impl", "sdpa", "--impl", "structured", *args)
    code, err = run.wait()
    frame = read_results(out / "results.csv") if code == 0 else None
    statuses = sorted(set(frame.status)) if frame is not None else err.strip()[-120:]
    return (0 if code == 0 else len(patterns)), alive(run.workers), f"exit {code}; {statuses}"


def gate_confirm_sigterm(out: Path) -> tuple[int, int, str]:
    """A gate whose --confirm re-runs a regressed case that hangs, stopped by SIGTERM: exit 143 with a line, no
    worker and no temporary folder left (the gate writes no rows: none can be lost)."""
    first = Run(out / "run", *SWEEP)
    first.wait()
    current = out / "run" / "results.csv"
    base = out / "base" / "results.csv"
    base.parent.mkdir(parents=True, exist_ok=True)
    base.write_text(_scaled(current.read_text(), EAGER, 1 / 3))  # the baseline's eager 3x faster: a regression
    use_variant(current.with_name("meta.json"), "eager", "hang")  # and its re-run hangs
    temp = out / "tmp"
    temp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(temp)}
    proc = subprocess.Popen([sys.executable, "-m", "sparsebench", "gate", str(base), str(current), "--confirm", "3"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    end = time.monotonic() + 600
    while proc.poll() is None and not workers and time.monotonic() < end:
        try:
            workers |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    said = (err.strip().splitlines() or [""])[-1]
    left = list(temp.iterdir())
    note = f"exit {proc.returncode}" + ("" if proc.returncode == 143 else " (expected 143)") + f"; {said[:80]}; " \
        f"{len(left)} temporary folder(s) left"
    time.sleep(1)
    return 0, alive(workers | first.workers) + len(left), note


FAULTS: dict[str, Callable[[Path], tuple[int, int, str]]] = {
    "worker SIGKILLed (as by the OOM killer)": lambda out: fault_injected(out, "kill"),
    "worker raises": lambda out: fault_injected(out, "raise"),
    "worker out of (CUDA) memory": lambda out: fault_injected(out, "oom"),
    "worker: CPU allocation fails": lambda out: fault_injected(out, "alloc"),
    "worker hangs (timeout)": lambda out: fault_injected(out, "hang", "--timeout", "10"),
    "kill -9 of a worker from outside": outside_kill_of_worker,
    "Ctrl-C (SIGINT) to the main process, then --resume": lambda out: signal_main(out, signal.SIGINT),
    "SIGTERM to the main process, then --resume": lambda out: signal_main(out, signal.SIGTERM),
    "SIGHUP to the main process, then --resume": lambda out: signal_main(out, signal.SIGHUP),
    "kill -9 of the main process, then --resume": lambda out: signal_main(out, signal.SIGKILL),
    "last row cut off mid-write, then --resume": partial_last_row,
    "disk full (file size limit), then --resume": disk_full,
    "two runs into one --out-dir": concurrent_runs,
    "float16 on the CPU, --timeout 3": float16_small_timeout,
    "--seq 1000000000, every pattern": huge_seq,
    "SIGTERM during gate --confirm's re-runs": gate_confirm_sigterm,
}


def try_faults(out_dir: Path) -> dict:
    results = {}
    for i, (name, fault) in enumerate(FAULTS.items()):
        out = out_dir / f"fault{i:02d}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        lost, left, note = fault(out)
        results[name] = {"rows_lost": lost, "workers_left": left, "note": note}
        print(f"  {name}: {lost} row(s) lost, {left} worker(s) left ({time.perf_counter() - t0:.0f} s; {note})",
              flush=True)
    return results


# --- bad inputs ----------------------------------------------------------------------------------------------------

Case = tuple[str, list[str], int, str, dict]


def bad_inputs(work: Path) -> list[Case]:
    """(label, CLI arguments, the exit code that is right, text its message must hold as given, environment) of
    every bad input; files they need go under `work`."""
    work.mkdir(parents=True, exist_ok=True)
    good = _good_run(work / "good")
    blocker = work / "a-file"
    blocker.write_text("")
    cases: list[Case] = []

    def add(label: str, args: list[str], code: int = 2, needle: str = "", env: dict | None = None) -> None:
        cases.append((label, args, code, needle, env or {}))

    def run_case(*args: str, needle: str = "") -> None:  # each into a directory of its own: one that ran must not
        #                                                  mask the next
        add(f"run {' '.join(args)}", ["run", "--out-dir", str(work / "out" / str(len(cases))), *args], needle=needle)

    for option, values in {
        "--seq": ["0", "-1", "abc", "1.5", "1e9", "", "99999999999999999999999", "2147483648"],
        "--batch": ["0", "-1", "x", "2147483648"],
        "--heads": ["0", "-3", "x", "4294967296"],
        "--head-dim": ["0", "-64", "x", "2147483648"],
        "--kv-heads": ["0", "3", "x"],
        "--q-len": ["0", "x"],
        "--timeout": ["0", "-1", "inf", "-inf", "nan", "1e10", "abc", ""],
        "--min-run-time": ["0", "-1", "inf", "nan", "1e10", "x"],
        "--pattern": ["nope", "", "local:window", "local:window=", "local:window=x", "local:window=0",
                      "local:wnd=3", "strided:stride=0", "dilated:dilation=0", "fixed:summary=999", "bigbird:block=0",
                      "longformer:global_tokens=-1", "local:window=99999999999999999999", ":", "local:window=1.5",
                      "local:window=64,window=32", "local:", "local:window=16,", "local:=3"],
        "--impl": ["nope", "sdpa[nope]", ""],
        "--device": ["tpu", "cuda:7", "cpu:0", ""] + ([] if torch.cuda.is_available() else ["cuda"]),
        "--dtype": ["int8", "", "float64"],
        "--mode": ["bwd", ""],
    }.items():
        for value in values:
            run_case(option, value)
    run_case("--mode", "decode", "--q-len", "100", "--seq", "64")
    # user text that looks like rich markup or emoji codes must be printed as given
    for option, spec in (("--impl", "nosuchmod:smile"), ("--pattern", "x:m"), ("--impl", "no[bold]such[/bold]:x"),
                         ("--pattern", "[red]p[/red]")):
        run_case(option, spec, "--seq", "64", needle=f"{spec}")
    # plugins whose import fails in any way, exiting included
    for label, code in {"SystemExit(5)": "raise SystemExit(5)", "sys.exit()": "import sys; sys.exit()",
                        "KeyError": "raise KeyError('x')", "syntax error": "def ("}.items():
        plugin = work / "plugins" / f"plugin_{len(cases)}.py"
        plugin.parent.mkdir(parents=True, exist_ok=True)
        plugin.write_text(code + "\n")
        for option in ("--impl", "--pattern"):
            add(f"run {option} plugin raising {label}", ["run", "--out-dir", str(work / "out" / str(len(cases))),
                                                         option, f"{plugin}:f", "--seq", "64"], needle=str(plugin))
    for option, value in [("--window", "0"), ("--window", "1"), ("--window", "-5"), ("--window", "9" * 20),
                          ("--stride", "0"), ("--dilation", "0"), ("--length", "0"), ("--block", "0"),
                          ("--global-blocks", "-1"), ("--random-blocks", "-1"), ("--mask-seed", "9" * 20),
                          ("--global-tokens", "-2")]:
        patterns = ["--pattern", "local", "--pattern", "strided", "--pattern", "dilated", "--pattern", "fixed",
                    "--pattern", "bigbird", "--pattern", "longformer"]
        run_case(*patterns, option, value)
    run_case("--pattern", "fixed", "--summary", "999")
    run_case("--resume", "--overwrite")
    run_case("--gate", str(work / "missing.csv"))
    run_case("--foo")
    run_case("extra-argument")
    add("run --out-dir under a file", ["run", "--out-dir", str(blocker / "out"), "--seq", "64"])
    existing = work / "existing"
    shutil.copytree(good.parent, existing, dirs_exist_ok=True)
    add("run into a directory that holds results", ["run", "--out-dir", str(existing), *SWEEP])

    configs = {
        "directory": None, "binary": bytes(range(256)), "invalid TOML": b"seq = [",
        "unknown key": b"sequence = [1]", "seq = 'x'": b"seq = 'x'", "seq = [0]": b"seq = [0]",
        "seq = [1.5]": b"seq = [1.5]", "timeout = 'slow'": b"timeout = 'slow'", "timeout = inf": b"timeout = inf",
        "timeout = nan": b"timeout = nan", "timeout = 1e10": b"timeout = 1e10", "min_run_time = nan":
        b"min_run_time = nan", "min_samples = 0": b"min_samples = 0", "min_samples = 1.5": b"min_samples = 1.5",
        "warmup = -1": b"warmup = -1", "warmup = 1e12 (int)": b"warmup = 1000000000000",
        "patterns = [1]": b"patterns = [1]", "patterns table without name": b"patterns = [{window = 3}]",
        "params unknown": b"[params]\nwindw = 3", "params string": b"[params]\nwindow = 'x'",
        "params float": b"[params]\nwindow = 1e99", "impls = ['nope']": b"impls = ['nope']",
        "devices = ['tpu']": b"devices = ['tpu']", "dtypes = ['int8']": b"dtypes = ['int8']",
        "modes = ['x']": b"modes = ['x']", "batch = 0": b"batch = 0", "heads = []": b"heads = []",
        "kv_heads = [3]": b"kv_heads = [3]", "q_len = [0]": b"q_len = [0]", "head_dim = -1": b"head_dim = -1",
        "nul bytes": b"\x00\x00seq = [64]",
    }
    for label, content in configs.items():
        path = work / "configs" / label.replace(" ", "_").replace("/", "_")
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(exist_ok=True)
        else:
            path.write_bytes(content)
        run_case("--config", str(path))
    run_case("--config", str(work / "configs" / "missing.toml"))

    # results files: each broken copy of a measured run, through plot, gate (as current and baseline) and --resume
    # (which moves an unfinished last row aside and starts an empty file afresh: those are not bad inputs there)
    for label, path in _broken_results(good, work / "broken").items():
        other_schema = label.startswith("schema version")
        for reader, args in _readers(path, good, work).items():
            add(f"{reader}: {label}", args, 3 if other_schema and reader in COMPARING else 2)
        if label not in ("empty file", "header only", "truncated last row"):
            add(f"run --resume: {label}", ["run", "--out-dir", str(path.parent), *SWEEP, "--resume"])
    for label, meta in {"list": "[1, 2]", "string": '"x"', "ceilings string": '{"ceilings": "x"}',
                        "config string": '{"config": 3}', "bad JSON": "{nope", "earlier_runs object":
                        '{"earlier_runs": {}}'}.items():
        d = work / "meta" / label.replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(good, d / "results.csv")
        (d / "meta.json").write_text(meta)
        for reader, args in _readers(d / "results.csv", good, work).items():
            add(f"{reader}: meta.json {label}", args)
        add(f"run --resume: meta.json {label}", ["run", "--out-dir", str(d), *SWEEP, "--resume"])
    for label, args in {
        "plot: missing file": ["plot", str(work / "missing.csv")],
        "plot: directory without results": ["plot", str(work / "configs")],
        "plot --format jpg": ["plot", str(good), "--format", "jpg"],
        "plot --reference nope": ["plot", str(good), "--reference", "nope"],
        "plot --out under a file": ["plot", str(good), "--out", str(blocker / "plots")],
        "gate: missing baseline": ["gate", str(work / "missing.csv"), str(good)],
        "gate: missing current": ["gate", str(good), str(work / "missing.csv")],
        "gate: directory without results": ["gate", str(work / "configs"), str(good)],
        "gate --threshold 0.5": ["gate", str(good), str(good), "--threshold", "0.5"],
        "gate --threshold nan": ["gate", str(good), str(good), "--threshold", "nan"],
        "gate --threshold inf": ["gate", str(good), str(good), "--threshold", "inf"],
        "gate --alpha 2": ["gate", str(good), str(good), "--alpha", "2"],
        "gate --alpha nan": ["gate", str(good), str(good), "--alpha", "nan"],
        "gate --mem-tolerance -1": ["gate", str(good), str(good), "--mem-tolerance", "-1"],
        "gate --mem-tolerance inf": ["gate", str(good), str(good), "--mem-tolerance", "inf"],
        "gate --confirm -1": ["gate", str(good), str(good), "--confirm", "-1"],
        "gate --summary under a file": ["gate", str(good), str(good), "--summary", str(blocker / "s.md")],
        "gate --summary where no file can be made": ["gate", str(good), str(good), "--summary", str(READ_ONLY)],
        "gate --export-out where no file can be made": ["gate", str(good), str(good), "--export", "junit",
                                                        "--export-out", str(READ_ONLY)],
        "export --out where no file can be made": ["export", str(good), "--out", str(READ_ONLY)],
        "export --out under a file": ["export", str(good), "--out", str(blocker / "e.md")],
        "gate: one argument": ["gate", str(good)],
    }.items():
        add(label, args)
    for label, content in {"missing": None, "binary": bytes(range(256)) * 4, "nul bytes": b"\x00latency = 1.2",
                           "invalid TOML": b"latency = ", "unknown key": b"latncy = 1.2",
                           "string value": b"latency = 'x'", "ratio below 1": b"latency = 0.9",
                           "bad section": b"pattern = 3", "unknown key in a section": b"[impl.flex]\nlat = 2",
                           "nan": b"latency = nan", "negative memory": b"peak_mem = -0.1"}.items():
        path = work / "thresholds" / label.replace(" ", "_")
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is not None:
            path.write_bytes(content)
        add(f"gate --thresholds {label}", ["gate", str(good), str(good), "--thresholds", str(path)])

    _gate_and_merge_inputs(good, work, add)

    corpus_bin = work / "corpus.bin"
    corpus_bin.write_bytes(bytes(range(256)) * 64)
    tiny = work / "tiny.txt"
    tiny.write_text("hi")
    # no --corpus but where it is the bad input: a bad input that got through would train on the default corpus
    for label, args in {
        "--preset nope": ["--preset", "nope"], "--steps 0": ["--steps", "0"], "--seq 0": ["--seq", "0"],
        "--batch 0": ["--batch", "0"], "--corpus-bytes 0": ["--corpus-bytes", "0"],
        "--corpus missing": ["--corpus", str(work / "missing.txt")], "--corpus directory": ["--corpus", str(work)],
        "--corpus binary": ["--corpus", str(corpus_bin)], "--corpus too short": ["--corpus", str(tiny)],
        "--device tpu": ["--device", "tpu"], "--pattern nope": ["--pattern", "nope"],
        "--pattern local:window=0": ["--pattern", "local:window=0"], "--impl nope": ["--impl", "nope"],
        "--window 0": ["--window", "0"], "--steps x": ["--steps", "x"],
        "--out-dir under a file": ["--out-dir", str(blocker / "t")],
    }.items():
        add(f"train {label}", ["train", "--out-dir", str(work / "train"), *args])
    if not torch.cuda.is_available():
        add("train --device cuda (no GPU here)", ["train", "--out-dir", str(work / "train"), "--device", "cuda"])
    for label, args in {"list --foo": ["list", "--foo"], "info --foo": ["info", "--foo"], "nope": ["nope"]}.items():
        add(label, args)
    return cases


READ_ONLY = Path("/sys/sparsebench-fault-matrix.md")  # sysfs takes no new file, even from root
# Readers that exit 3 for results of another schema version (they compare two result sets)
COMPARING = ("gate current", "gate baseline", "export --baseline", "history")


def _readers(path: Path, good: Path, work: Path) -> dict[str, list[str]]:
    """Every command that reads a results file, given `path` (as current and as baseline where there are two)."""
    return {"plot": ["plot", str(path), "--out", str(work / "plots")],
            "gate current": ["gate", str(good), str(path)],
            "gate baseline": ["gate", str(path), str(good)],
            "export": ["export", str(path), "--format", "bencher"],
            "export --baseline": ["export", str(good), "--baseline", str(path), "--format", "junit"],
            "history": ["history", str(good), str(path), "--out", str(work / "history")],
            "merge": ["merge", str(path), "--out", str(work / "merged")]}


def _scaled(text: str, impl: str, factor: float) -> str:
    """A results file's text with `impl`'s latency and samples multiplied by `factor`."""
    records = list(csv.reader(io.StringIO(text)))
    header = records[0]
    for record in records[1:]:
        if record[header.index("impl")] == impl and record[header.index("latency_ms")]:
            for column in ("latency_ms", "latency_min_ms"):
                record[header.index(column)] = f"{float(record[header.index(column)]) * factor:.6g}"
            samples = record[header.index("samples_ms")].split()
            record[header.index("samples_ms")] = " ".join(f"{float(x) * factor:.6g}" for x in samples)
    out = io.StringIO()
    csv.writer(out).writerows(records)
    return out.getvalue()


def _gate_and_merge_inputs(good: Path, work: Path, add: Callable[..., None]) -> None:
    """A real regression (structured 3.5x slower) whose timing samples are gone, gated with and without --confirm
    (whose re-runs are slowed alike: the regression is real): the gate must fail (exit 1) and say the significance
    test could not run. Unrelated result sets given to merge: refused."""
    import pandas as pd

    for how in ("column deleted", "cells empty"):
        for where in ("current", "baseline"):
            d = work / "samples" / f"{how}-{where}".replace(" ", "_")
            d.mkdir(parents=True, exist_ok=True)
            base, cur = d / "base.csv", d / "cur.csv"
            base.write_text(good.read_text())
            cur.write_text(_scaled(good.read_text(), STRUCTURED, 3.5))
            shutil.copy(good.with_name("meta.json"), d / "meta.json")  # --confirm re-runs with the run's settings
            use_variant(d / "meta.json", "structured", "x3p5")  # and its plugins: structured 3.5x slower
            stripped = cur if where == "current" else base
            frame = pd.read_csv(stripped, dtype=str, keep_default_na=False)
            frame = frame.drop(columns=["samples_ms"]) if how == "column deleted" else frame.assign(samples_ms="")
            frame.to_csv(stripped, index=False)
            for confirm in ("0", "3"):
                add(f"gate, samples_ms {how} in the {where}, --confirm {confirm}",
                    ["gate", str(base), str(cur), "--confirm", confirm], 1, "significance not tested")
    other = work / "merge" / "float16"  # another sweep: its config and rows say float16
    other.mkdir(parents=True, exist_ok=True)
    (other / "results.csv").write_text(good.read_text().replace(",float32,", ",float16,"))
    meta = json.loads(good.with_name("meta.json").read_text())
    meta["config"] = {**meta["config"], "dtypes": ["float16"]}
    (other / "meta.json").write_text(json.dumps(meta))
    bare = work / "merge" / "no-meta"
    bare.mkdir(parents=True, exist_ok=True)
    shutil.copy(good, bare / "results.csv")
    add("merge: two runs of different sweeps", ["merge", str(good.parent), str(other), "--out", str(work / "m1")],
        needle="different sweep configurations")
    add("merge: a run with a results.csv without meta.json", ["merge", str(good.parent), str(bare), "--out",
                                                              str(work / "m2")], needle="no sweep configuration")


def _good_run(out: Path) -> Path:
    """A small real run (rows without workers would not exercise enough columns): measured once."""
    path = out / "results.csv"
    if not path.exists():
        result = CliRunner().invoke(app, ["run", "--out-dir", str(out), *SWEEP])
        assert result.exit_code == 0, result.output
    return path


def _broken_results(good: Path, work: Path) -> dict[str, Path]:
    """Broken copies of a measured results.csv, by what is wrong with them."""
    text = good.read_text()
    lines = text.splitlines(keepends=True)
    header = lines[0].rstrip("\r\n").split(",")

    def cell(column: str, value: str, row: int = 1) -> str:
        records = list(csv.reader(io.StringIO(text)))
        records[row + 1][header.index(column)] = value
        out = io.StringIO()
        csv.writer(out).writerows(records)
        return out.getvalue()

    variants = {
        "empty file": "", "header only": lines[0], "not a CSV": "hello\x00world\n", "binary": None,
        "missing columns": "pattern,impl\ndense,sdpa\n", "truncated last row": "".join(lines[:-1]) + lines[-1][:60],
        "row cut short": "".join(lines[:-1]) + ",".join(lines[-1].split(",")[:20]) + "\r\n",
        "row too long": "".join(lines[:-1]) + lines[-1].rstrip("\r\n") + ",x,y\r\n",
        "duplicate case in one run": text + lines[-1], "two writers interleaved": text + lines[-1][:100] + lines[-1],
        "schema version 99": text.replace("\n2,", "\n99,"),
    }
    for column, values in {
        "status": ["great", ""], "latency_ms": ["fast", "-5", "inf", "nan", "0"], "seq_len": ["1.5", "0", "-1", "x"],
        "density": ["2", "-0.1"], "samples_ms": ["a b c", "1 -2"], "params": ["window=x", "window"],
        "impl": [""], "heads": ["0"], "batch": ["x"], "flops_useful": ["-1"], "peak_mem_mib": ["inf", "-100"],
        "schema_version": ["x"], "dtype": ["float99", ""], "mode": ["sideways"], "device": ["tpu", "cuda:x"],
        "mem_ratio_vs_dense": ["-1"], "n_samples": ["-1"], "gpu_index": ["-1"], "speedup_vs_dense": ["0"],
    }.items():
        for value in values:
            variants[f"{column} = {value!r}"] = cell(column, value)
    paths = {}
    for i, (label, content) in enumerate(variants.items()):
        path = work / f"v{i:02d}" / "results.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.write_bytes(bytes(range(256)) * 8)
        else:
            path.write_text(content)
        shutil.copy(good.with_name("meta.json"), path.with_name("meta.json"))
        paths[label] = path
    return paths


def try_inputs(work: Path) -> dict:
    runner = CliRunner()
    cases = bad_inputs(work)
    unclean, accepted = [], []
    for label, args, code, needle, env in cases:
        result = runner.invoke(app, args, env=env)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        one_line = len(lines) == 1 or code == 1  # a failing gate prints its report
        clean = (result.exit_code == code and isinstance(result.exception, (SystemExit, type(None)))
                 and one_line and "Traceback" not in result.output and needle in result.stderr)
        if not clean:
            what = type(result.exception).__name__ if not isinstance(result.exception, SystemExit) else ""
            unclean.append({"input": label, "exit": result.exit_code, "exception": what,
                            "stderr": result.stderr.strip()[-300:]})
            if result.exit_code == 0:
                accepted.append(label)
            print(f"  UNCLEAN {label}: exit {result.exit_code} {what} {result.stderr.strip()[-200:]!r}", flush=True)
    return {"tried": len(cases), "clean": len(cases) - len(unclean), "accepted": accepted, "unclean": unclean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/fault-matrix"))
    parser.add_argument("--only", choices=("faults", "inputs"))
    args = parser.parse_args()
    # Started in the background of a non-interactive shell, this process would pass SIGINT on as ignored, and
    # the Ctrl-C fault would never stop its run: catch it, so that the runs start with the default action.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    if args.only != "inputs":
        print("faults:", flush=True)
        faults = try_faults(args.out_dir / "faults")
        summary["faults"] = faults
        print(f"faults tried: {len(faults)}; rows lost: {sum(f['rows_lost'] for f in faults.values())}; workers "
              f"left behind: {sum(f['workers_left'] for f in faults.values())}")
    if args.only != "faults":
        print("bad inputs:", flush=True)
        inputs = try_inputs(args.out_dir / "inputs")
        summary["inputs"] = inputs
        print(f"bad inputs tried: {inputs['tried']}; clean exits (2, 3 for another schema where two sets are "
              f"compared, 1 for a gate that must fail; one line, no traceback): {inputs['clean']}; silently "
              f"accepted (exit 0): {len(inputs['accepted'])}")
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
