"""What happens when things go wrong: each fault on a tiny sweep keeps every measured row, leaves no worker
behind and says what happened in one line; each bad input is one line and exit 2, never a traceback."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from sparsebench import plots
from sparsebench.cli import app
from sparsebench.errors import SparsebenchError
from sparsebench.patterns import Pattern
from sparsebench.patterns.decode import check_decode_rows
from sparsebench.results import latest, read_results
from sparsebench.runner.lock import DirLock

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ROOT / "tests" / "fault_impls.py"  # test-only implementations that fail or slow down on purpose
FAST = ["--min-run-time", "0.05", "--heads", "2", "--head-dim", "32"]
SWEEP = ["--pattern", "local", "--seq", "64", "--impl", "eager", "--impl", "structured"]  # 3 cases, one worker


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, list(args), env=env)


def run(out: Path, *args: str, env: dict | None = None):
    return invoke("run", "--out-dir", str(out), *FAST, *args, env=env)


def one_line_exit_2(result, *needles: str) -> None:
    """Exit 2 and one error line on stderr that holds every needle (after the progress bar, when a sweep had
    started), and no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], result.stderr
    for needle in needles:
        assert needle in errors[0], result.stderr
    if "━" not in result.stderr and "sparsebench run:" not in result.stderr:  # no sweep started: only the error
        assert len(lines) == 1, result.stderr


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> Path:
    """One real tiny sweep (dense reference, eager, structured): its results.csv, to copy and break."""
    out = tmp_path_factory.mktemp("measured")
    result = run(out, *SWEEP)
    assert result.exit_code == 0, result.output
    return out / "results.csv"


def copy_run(measured: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(measured, out / "results.csv")
    shutil.copy(measured.with_name("meta.json"), out / "meta.json")
    return out / "results.csv"


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by its new parent
    except psutil.NoSuchProcess:
        return True


def start_hanging_run(out: Path) -> tuple[subprocess.Popen, list[int]]:
    """`sparsebench run` in a process of its own, its eager case hanging after the dense row is written; returns
    the process and its workers' pids."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "sparsebench", "run", "--out-dir", str(out), *FAST,
                             "--pattern", "local", "--seq", "64", "--impl", f"{FAULTS}:eager_hang"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    results = out / "results.csv"
    # Wait for the dense row however slow the machine is; the limit only stops a broken run blocking the suite.
    for _ in range(3000):
        if (results.exists() and len(results.read_text().splitlines()) >= 2) or proc.poll() is not None:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1]
    workers = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    assert workers, "the run has no worker process"
    return proc, workers


# --- the test-only fault plugin -----------------------------------------------------------------------------------

def test_the_fault_plugin_s_variants_of_an_impl_share_its_name_and_fail_or_slow_as_named():
    import importlib.util

    import torch

    from sparsebench.impls import IMPLS
    from sparsebench.resolve import get_pattern

    spec = importlib.util.spec_from_file_location("fault_impls_under_test", FAULTS)
    faults = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(faults)
    pattern, q = get_pattern("local", window=8), torch.randn(1, 2, 32, 16)
    as_is, slowed, raising = faults.eager_x1(), faults.structured_x1p5(), faults.eager_raise()
    assert as_is.name == raising.name == "faulty_eager" and slowed.name == "faulty_structured"
    assert not as_is.in_default_sweep and "1.5x slower" in slowed.description
    expected = IMPLS["eager"].forward(q, q, q, IMPLS["eager"].prepare(pattern, 32, "cpu", torch.float32))
    assert torch.equal(as_is.forward(q, q, q, as_is.prepare(pattern, 32, "cpu", torch.float32)), expected)
    with pytest.raises(RuntimeError, match="injected failure"):
        raising.prepare(pattern, 32, "cpu", torch.float32)
    with pytest.raises(torch.OutOfMemoryError):
        faults.sdpa_oom().prepare(pattern, 32, "cpu", torch.float32)
    for name in ("eager_sideways", "nosuch_hang", "eager_xfast"):
        assert not hasattr(faults, name)


# --- faults during a sweep ----------------------------------------------------------------------------------------

@pytest.mark.slow  # worker processes
def test_float16_on_cpu_is_measured_within_a_small_timeout(tmp_path):
    """The device's float16 ceilings (a slow matmul on a CPU) are measured outside every case's timeout."""
    result = run(tmp_path, "--pattern", "local", "--seq", "256", "--impl", "structured", "--dtype", "float16",
                 "--timeout", "3")
    assert result.exit_code == 0, result.output
    frame = read_results(tmp_path / "results.csv")
    assert list(frame.status) == ["ok", "ok"], frame[["impl", "status", "error"]]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["ceilings"]["cpu"]["float16"]["matmul_tflops"] > 0  # measured, and charged to no case


@pytest.mark.slow  # worker processes
def test_a_killed_worker_and_a_failed_allocation_are_oom_rows_that_name_the_cause(tmp_path):
    result = run(tmp_path, "--pattern", "local", "--seq", "64", "--impl", f"{FAULTS}:eager_kill",
                 "--impl", f"{FAULTS}:structured_alloc")
    assert result.exit_code == 0, result.output
    rows = read_results(tmp_path / "results.csv").set_index("impl")
    assert rows.loc["faulty_eager", "status"] == "oom"
    assert rows.loc["faulty_eager", "error"] == "worker killed by signal 9 (SIGKILL); out of memory is the usual cause"
    assert rows.loc["faulty_structured", "status"] == "oom"
    assert "DefaultCPUAllocator: can't allocate memory" in rows.loc["faulty_structured", "error"]
    assert rows.loc["sdpa", "status"] == "ok"
    # every row names its inputs, the failed ones too: --resume on other inputs measures them again
    assert set(rows.inputs) == {"random"} and set(rows.input_id) == {"seed=0"}


@pytest.mark.slow  # worker processes
def test_resume_moves_an_unfinished_last_row_aside_and_measures_that_case_again(measured, tmp_path):
    path = copy_run(measured, tmp_path)
    data = path.read_bytes()
    last = data.rstrip(b"\r\n").rfind(b"\n") + 1
    cut = last + (len(data) - last) // 2  # half of the last row: a write cut off by a crash
    path.write_bytes(data[:cut])
    result = run(tmp_path, *SWEEP, "--resume")
    assert result.exit_code == 0, result.output
    assert "ended in an unfinished row" in result.stderr and "results.csv.partial" in result.stderr
    assert (tmp_path / "results.csv.partial").read_bytes() == data[last:cut] + b"\n"
    frame = read_results(path)
    assert path.read_bytes().startswith(data[:last])  # every complete row is kept as it was
    assert sorted(latest(frame).impl) == ["eager", "sdpa", "structured"]
    assert (latest(frame).status == "ok").all()


@pytest.mark.slow  # worker processes
def test_a_full_disk_keeps_every_complete_row_and_resume_finishes(tmp_path, monkeypatch):
    """ENOSPC in the middle of a row: the file is cut back to its last complete row, one line, exit 2."""
    real_write, calls = os.write, []

    def write(fd: int, data) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("results.csv"):
            calls.append(len(data))
            if len(calls) == 3:  # the header, the dense row, then half of the next row and a full disk
                real_write(fd, bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    result = run(tmp_path, *SWEEP)
    monkeypatch.setattr(os, "write", real_write)
    one_line_exit_2(result, "No space left on device", "last complete row (1 of this run)", "--resume")
    frame = read_results(tmp_path / "results.csv")
    assert list(frame.impl) == ["sdpa"] and frame.status.iloc[0] == "ok"
    resumed = run(tmp_path, *SWEEP, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert sorted(latest(read_results(tmp_path / "results.csv")).impl) == ["eager", "sdpa", "structured"]


@pytest.mark.slow  # a run and its worker in processes of their own
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_the_run_like_ctrl_c(tmp_path, signum):
    proc, workers = start_hanging_run(tmp_path)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    name = signal.Signals(signum).name
    assert f"interrupted by {name}: 1 finished row(s) of this run kept in" in err and "--resume" in err
    assert all(gone(pid) for pid in workers)  # the worker's process group was killed before the exit
    frame = read_results(tmp_path / "results.csv")
    assert list(frame.impl) == ["sdpa"] and frame.status.iloc[0] == "ok"


@pytest.mark.slow
def test_sigterm_during_gate_confirm_s_reruns_is_one_line_and_leaves_nothing(tmp_path):
    """The baseline's eager case 3x faster than the current run's: gate --confirm re-runs it, and that re-run
    hangs; SIGTERM then ends the gate as it ends `run`: one line, 143, no worker, no temporary folder left."""
    current = tmp_path / "current"
    assert run(current, "--pattern", "local", "--seq", "64", "--impl", f"{FAULTS}:eager_x1").exit_code == 0
    current = current / "results.csv"
    base = copy_run(current, tmp_path / "base")
    with open(base, newline="") as fh:
        records = list(csv.reader(fh))
    header = records[0]
    for record in records[1:]:
        if record[header.index("impl")] == "faulty_eager":
            for column in ("latency_ms", "latency_min_ms"):
                record[header.index(column)] = str(float(record[header.index(column)]) / 3)
            samples = record[header.index("samples_ms")].split()
            record[header.index("samples_ms")] = " ".join(str(float(x) / 3) for x in samples)
    with open(base, "w", newline="") as fh:
        csv.writer(fh).writerows(records)
    # The re-run loads the plugin variant the current run's meta.json names: make it the one that hangs.
    meta_path = current.with_name("meta.json")
    meta = json.loads(meta_path.read_text())
    (plugin,) = meta["plugins"]
    plugin["spec"] = f"{FAULTS}:eager_hang"
    meta_path.write_text(json.dumps(meta))
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(temp)}
    proc = subprocess.Popen([sys.executable, "-m", "sparsebench", "gate", str(base), str(current), "--confirm", "3"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    for _ in range(3000):  # until the re-run's worker has started (however slow the machine); then a moment more
        if proc.poll() is not None:
            break
        workers |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        if workers and list(temp.iterdir()):
            break
        time.sleep(0.2)
    assert proc.poll() is None and workers, proc.communicate()[1]
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "interrupted by SIGTERM" and "Traceback" not in err
    assert all(gone(pid) for pid in workers) and list(temp.iterdir()) == []


@pytest.mark.slow  # a run and its worker in processes of their own
def test_workers_exit_when_the_main_process_is_killed(tmp_path):
    proc, workers = start_hanging_run(tmp_path)
    proc.kill()  # SIGKILL: no handler runs in the main process
    proc.communicate(timeout=60)
    for _ in range(600):  # the parent-death signal is immediate; the limit only stops a broken test
        if all(gone(pid) for pid in workers):
            break
        time.sleep(0.1)
    assert all(gone(pid) for pid in workers), "a worker outlived its sparsebench process"
    lock = DirLock(tmp_path)
    lock.acquire()  # the dead run's lock went with it: --resume can follow at once
    lock.release()
    assert list(read_results(tmp_path / "results.csv").impl) == ["sdpa"]


# --- two runs, one directory ----------------------------------------------------------------------------------

def test_a_second_run_into_a_locked_directory_exits_2_naming_the_first(measured, tmp_path):
    path = copy_run(measured, tmp_path)
    before = path.read_bytes()
    lock = DirLock(tmp_path)
    lock.acquire()  # another run, as far as the command can tell: flock locks are per open file
    try:
        result = run(tmp_path, *SWEEP, "--resume")
    finally:
        lock.release()
    one_line_exit_2(result, f"another sparsebench run (pid {os.getpid()}) is writing to {tmp_path}", "--wait")
    assert path.read_bytes() == before


def test_a_released_lock_leaves_no_file_and_a_waiting_run_holds_the_next_one(tmp_path):
    """The run that waited on the removed file locks the path's new file, so a third run is refused."""
    first = DirLock(tmp_path)
    first.acquire()
    second, waiting = DirLock(tmp_path), threading.Event()
    taker = threading.Thread(target=second.acquire, kwargs=dict(wait=True, on_wait=lambda pid: waiting.set()))
    taker.start()
    assert waiting.wait(timeout=60)
    first.release()  # removes the file the second run is waiting on
    taker.join(timeout=60)
    assert not taker.is_alive()
    try:
        assert (tmp_path / "sparsebench.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(SparsebenchError, match="another sparsebench run"):
            DirLock(tmp_path).acquire()
    finally:
        second.release()
    assert not (tmp_path / "sparsebench.lock").exists()


@pytest.mark.slow  # a run in a process of its own
def test_wait_waits_for_the_other_run(tmp_path):
    lock = DirLock(tmp_path)
    lock.acquire()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # seed implements neither pattern: rows without a worker process
    proc = subprocess.Popen([sys.executable, "-m", "sparsebench", "run", "--out-dir", str(tmp_path), "--wait",
                             "--pattern", "dilated", "--seq", "64", "--impl", "seed"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stderr.readline() for _ in range(1)]
        while lines[-1] and "waiting for the run" not in lines[-1]:
            lines.append(proc.stderr.readline())
        assert f"waiting for the run (pid {os.getpid()})" in lines[-1], lines
        assert not (tmp_path / "results.csv").exists()
    finally:
        lock.release()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert list(read_results(tmp_path / "results.csv").status) == ["unsupported"]


def test_resume_measures_again_the_cases_measured_on_other_inputs(measured, tmp_path):
    """Finished cases count as done only on the inputs they were measured on: another kind, seed or file is
    measured again (and --resume on the same inputs has nothing left)."""
    from sparsebench.runner.sweep import ResultsDir

    copy_run(measured, tmp_path)
    out = ResultsDir(tmp_path, resume=True)
    same = out.done({"inputs": "random", "input_id": "seed=0"})
    assert len(same) == len(read_results(tmp_path / "results.csv")) == 3
    assert out.done({"inputs": "structured", "input_id": "seed=0"}) == set()
    assert out.done({"inputs": "random", "input_id": "seed=1"}) == set()
    result = run(tmp_path, *SWEEP, "--resume", "--input-seed", "1")
    assert result.exit_code == 0, result.output
    assert list(read_results(tmp_path / "results.csv").input_id) == ["seed=0"] * 3 + ["seed=1"] * 3


def test_an_existing_results_file_is_never_replaced_unasked(measured, tmp_path):
    path = copy_run(measured, tmp_path)
    before = path.read_bytes()
    one_line_exit_2(run(tmp_path, *SWEEP), "already holds results", "--resume", "--overwrite")
    one_line_exit_2(run(tmp_path, *SWEEP, "--resume", "--overwrite"), "give one of them")
    assert path.read_bytes() == before


@pytest.mark.parametrize("args,toml,needle", [
    (["--timeout", "inf"], "", "timeout"),
    (["--timeout", "1e10"], "", "timeout"),
    (["--timeout", "nan"], "", "timeout"),
    (["--min-run-time", "nan"], "", "--min-run-time"),
    ([], "timeout = inf", "timeout"),
    ([], "timeout = nan", "timeout"),
    ([], "min_run_time = nan", "min_run_time"),
    ([], "min_run_time = -1.0", "min_run_time"),
    ([], "min_samples = 0", "min_samples"),
    ([], "warmup = -1", "warmup"),
    ([], "warmup = 10000000000", "warmup"),
    (["--seq", "99999999999999999999999"], "", "seq"),
    (["--heads", "4294967296"], "", "heads"),
    (["--window", "99999999999999999999"], "", "window"),
    (["--pattern", "local:window=99999999999999999999"], "", "window"),
    (["--pattern", "bigbird", "--mask-seed", "-99999999999999999999"], "", "mask_seed"),
])
def test_bad_numbers_are_refused_before_any_file_is_touched(measured, tmp_path, args, toml, needle):
    """Even with --overwrite: nothing is written before every value is checked."""
    path = copy_run(measured, tmp_path / "out")
    before = path.read_bytes()
    config = tmp_path / "sweep.toml"
    config.write_text(toml + "\n")
    command = ["run", "--out-dir", str(tmp_path / "out"), *SWEEP, "--config", str(config), "--overwrite", *args]
    one_line_exit_2(invoke(*command), needle)
    assert path.read_bytes() == before
    assert not (tmp_path / "out" / "sparsebench.lock").exists()


@pytest.mark.parametrize("mode", ["fwd", "decode"])
def test_a_huge_sequence_is_skipped_without_allocating_it(tmp_path, mode):
    """n = 10^9 for every pattern: skipped rows (or unsupported where the pattern cannot be built at that
    length), decided in O(1) or O(n / block) memory: under an address-space limit 2 GiB above what this process
    holds, an O(n) int64 tensor (8 GB) would fail."""
    patterns = ["dense", "causal", "local", "strided", "sliding_window", "dilated", "fixed", "longformer", "bigbird"]
    args = [arg for p in patterns for arg in ("--pattern", p)] + ["--impl", "sdpa", "--impl", "structured"]
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    vm = psutil.Process().memory_info().vms
    resource.setrlimit(resource.RLIMIT_AS, (vm + 2 * 2**30, hard))
    try:
        result = run(tmp_path, "--seq", "1000000000", "--mode", mode, *args)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert result.exit_code == 0, (result.output, result.exception)
    frame = read_results(tmp_path / "results.csv").set_index(["pattern", "impl"])
    assert set(frame.status) <= {"skipped", "unsupported"}
    assert frame.loc[("local", "structured"), "status"] == "skipped"
    assert "blocks" in frame.loc[("bigbird", "structured"), "error"]
    if mode == "fwd":  # nothing ran: still a figure (a log axis with no point on it raised in matplotlib)
        run_frame = plots.Run("huge", read_results(tmp_path / "results.csv"))
        (figures,) = plots.figure_sets([run_frame])
        plots.figure(figures, "memory").savefig(io.BytesIO(), format="png")


def test_the_decode_row_check_finds_keys_far_from_the_diagonal():
    class FirstKey(Pattern):
        name = "first_key"

        def mask_mod(self, b, h, q, k):
            return k == 0

    class AllButOne(FirstKey):
        def mask_mod(self, b, h, q, k):
            return (k == 0) & (q != 9_990)

    check_decode_rows(FirstKey(), 10_000, 16)  # the only key is 10^4 positions back: several blocks away
    with pytest.raises(SparsebenchError, match="decode query row 9990 "):
        check_decode_rows(AllButOne(), 10_000, 16)


# --- bad results files and other inputs ---------------------------------------------------------------------------

def edit_cell(measured: Path, out: Path, column: str, value: str, row: int = 1) -> Path:
    """A copy of the measured run with one cell replaced (row 0: the first data row, on line 2)."""
    path = copy_run(measured, out)
    with open(path, newline="") as fh:
        records = list(csv.reader(fh))
    records[row + 1][records[0].index(column)] = value
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(records)
    return path


@pytest.mark.parametrize("column,value,needle", [
    ("status", "great", "unknown status 'great'"),
    ("latency_ms", "fast", "'fast' is not a finite number"),
    ("latency_ms", "-5", "-5 is not > 0"),
    ("latency_ms", "inf", "'inf' is not a finite number"),
    ("latency_ms", "nan", "'nan' is not a finite number"),
    ("seq_len", "64.5", "'64.5' is not an integer >= 1"),
    ("density", "1.5", "1.5 is not in [0, 1]"),
    ("samples_ms", "a b c", "'a' is not a time in ms"),
    ("params", "window=x", "'window=x' is not key=INT"),
    ("impl", "", "empty"),
    ("schema_version", "x", "'x' is not an integer >= 1"),
])
def test_a_bad_value_names_the_file_line_and_column(measured, tmp_path, column, value, needle):
    path = edit_cell(measured, tmp_path, column, value)
    for command in (["plot", str(path), "--out", str(tmp_path / "plots")], ["gate", str(measured), str(path)],
                    ["run", "--out-dir", str(tmp_path), *FAST, *SWEEP, "--resume"]):
        one_line_exit_2(invoke(*command), f"{path}, line 3, column {column}: {needle}")


def every_reader(path: Path, good: Path, work: Path) -> dict[str, list[str]]:
    """Each command that reads results files, given `path` (in both places for gate and export --baseline)."""
    return {"plot": ["plot", str(path), "--out", str(work / "plots")],
            "gate current": ["gate", str(good), str(path), "--confirm", "0"],
            "gate baseline": ["gate", str(path), str(good), "--confirm", "0"],
            "export": ["export", str(path), "--format", "bencher"],
            "export --baseline": ["export", str(good), "--baseline", str(path), "--format", "junit"],
            "history": ["history", str(good), str(path), "--out", str(work / "history")],
            "merge": ["merge", str(path), "--out", str(work / "merged")]}


@pytest.mark.parametrize("column,value,needle", [
    ("peak_mem_mib", "-100", "-100 is not >= 0"),
    ("dtype", "float99", "unknown dtype 'float99'; known: float32, bfloat16, float16"),
    ("mode", "sideways", "unknown mode 'sideways'"),
    ("device", "tpu", "'tpu' is not a device (cpu, cuda or cuda:N)"),
    ("device", "cuda:x", "'cuda:x' is not a device"),
    ("gpu_index", "-1", "'-1' is not an integer >= 0"),
    ("mem_ratio_vs_dense", "-2", "-2 is not >= 0"),
    ("latency_ms", "500", "500 is not the median of samples_ms"),  # the gate tests the samples, shows the median
])
def test_a_value_out_of_its_domain_is_refused_by_every_reader(measured, tmp_path, column, value, needle):
    path = edit_cell(measured, tmp_path / "bad", column, value)
    for command in every_reader(path, measured, tmp_path).values():
        one_line_exit_2(invoke(*command), f"{path}, line 3, column {column}: {needle}")
    assert not (tmp_path / "plots").exists() and not (tmp_path / "merged").exists()


def test_columns_a_file_has_beyond_the_schema_are_still_read(measured, tmp_path):
    path = copy_run(measured, tmp_path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0] + ",a_newer_column"] + [line + ",-7" for line in lines[1:]]) + "\n")
    assert len(read_results(path)) == len(lines) - 1


@pytest.mark.parametrize("spec,needle", [
    ("local:window=64,window=32", "pattern parameter 'window' given twice in 'local:window=64,window=32'"),
    ("local:", "empty pattern parameter in 'local:'"),
    ("local:window=16,", "empty pattern parameter in 'local:window=16,'"),
    ("local:=3", "bad pattern parameter '=3'"),
])
def test_a_repeated_or_empty_pattern_parameter_is_refused(tmp_path, spec, needle):
    one_line_exit_2(run(tmp_path, "--pattern", spec, "--seq", "64"), needle)
    assert not (tmp_path / "results.csv").exists()


@pytest.mark.parametrize("code", ["raise SystemExit(5)", "import sys; sys.exit()", "raise KeyError('x')"])
@pytest.mark.parametrize("option", ["--impl", "--pattern"])
def test_a_plugin_that_fails_on_import_in_any_way_is_one_line(tmp_path, code, option):
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text(code + "\n")
    one_line_exit_2(run(tmp_path / "out", option, f"{plugin}:f", "--seq", "64"),
                    f"{option} {plugin}:f: cannot import {plugin} (")


@pytest.mark.parametrize("option,spec", [("--impl", "nosuchmod:smile"), ("--pattern", "x:m"),
                                         ("--impl", "nosuch[bold]mod[/bold]:thumbs_up")])
def test_user_text_is_printed_as_given(tmp_path, option, spec):
    result = run(tmp_path, option, spec, "--seq", "64")
    one_line_exit_2(result, f"{option} {spec}: ")  # no emoji for :smile: or :m:, no markup eaten


def test_gate_tables_print_case_names_as_given():
    import io as _io

    from rich.console import Console

    from sparsebench import gate
    from sparsebench.gate_report import rich_table

    case = gate.CaseResult(("k",), "[bold]p[/bold]:smile:/impl:m:/64/float32/fwd", "p", "impl")
    out = _io.StringIO()
    Console(file=out, width=200).print(rich_table(gate.GateReport([case], False, gate.Thresholds())))
    assert "[bold]p[/bold]:smile:/impl:m:/64/float32/fwd" in out.getvalue()


def test_gate_summary_in_a_place_that_cannot_be_written_is_one_line_before_the_report(measured, tmp_path):
    target = Path("/sys/sparsebench-gate-summary.md")  # sysfs takes no new files, even from root
    try:
        target.open("a").close()
        target.unlink()
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    for command in (["gate", str(measured), str(measured), "--summary", str(target)],
                    ["gate", str(measured), str(measured), "--export", "junit", "--export-out", str(target)],
                    ["export", str(measured), "--out", str(target)]):
        one_line_exit_2(invoke(*command), str(target), "cannot write there")


def test_gate_summary_and_export_out_make_missing_folders_alike(measured, tmp_path):
    summary, exported = tmp_path / "a" / "b" / "gate.md", tmp_path / "c" / "d" / "results.md"
    assert invoke("gate", str(measured), str(measured), "--summary", str(summary)).exit_code == 0
    assert invoke("export", str(measured), "--out", str(exported)).exit_code == 0
    assert summary.read_text().startswith("## sparsebench gate") and exported.read_text()


def test_a_truncated_row_and_a_duplicate_case_are_refused(measured, tmp_path):
    cut = copy_run(measured, tmp_path / "cut")
    lines = cut.read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:-1]) + ",".join(lines[-1].split(",")[:20]) + "\r\n")  # complete line, cut row
    one_line_exit_2(invoke("gate", str(measured), str(cut)), f"{cut}, line 4: 20 fields where the header has")
    twice = copy_run(measured, tmp_path / "twice")
    twice.write_text(twice.read_text() + lines[-1])  # the same case again, in the same run
    one_line_exit_2(invoke("plot", str(twice), "--out", str(tmp_path / "plots")),
                    f"{twice}, line 5: the same case as line 4 in the same run")


def test_the_same_case_in_two_runs_is_a_resume_not_a_corruption(measured, tmp_path):
    path = copy_run(measured, tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    run_id = lines[1].split(",")[1]
    path.write_text(path.read_text() + lines[1].replace(run_id, "resumed0run1", 1))
    frame = read_results(path)
    assert len(frame) == 4 and len(latest(frame)) == 3


@pytest.mark.parametrize("meta,needle", [
    ("[1, 2]", "a JSON list, not an object"),
    ('{"ceilings": "x"}', "'ceilings' must be a JSON object"),
    ("{not json", "not readable JSON"),
])
def test_a_bad_meta_json_is_one_line(measured, tmp_path, meta, needle):
    path = copy_run(measured, tmp_path)
    (tmp_path / "meta.json").write_text(meta)
    one_line_exit_2(invoke("plot", str(path), "--out", str(tmp_path / "plots")), f"{tmp_path / 'meta.json'}: {needle}")


def test_unknown_statuses_everywhere_do_not_reach_the_plots(measured, tmp_path):
    path = copy_run(measured, tmp_path)
    path.write_text(path.read_text().replace(",ok,", ",fine,"))
    one_line_exit_2(invoke("plot", str(path), "--out", str(tmp_path / "plots")), "unknown status 'fine'")


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"\x00\x00latency = 1.2\n", b"\xff\xfe\x00l\x00a"])
def test_a_binary_thresholds_file_is_one_line(measured, tmp_path, content):
    thresholds = tmp_path / "gate.toml"
    thresholds.write_bytes(content)
    one_line_exit_2(invoke("gate", str(measured), str(measured), "--thresholds", str(thresholds)), str(thresholds))


def test_gate_checks_where_its_summary_goes_before_comparing(measured, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_exit_2(invoke("gate", str(measured), str(measured), "--summary", str(blocker / "gate.md")),
                    f"{blocker} is not a directory")


def test_plot_reads_a_directory_s_results(measured, tmp_path):
    copy_run(measured, tmp_path / "run")
    result = invoke("plot", str(tmp_path / "run"), "--out", str(tmp_path / "plots"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plots" / "report.md").exists()
    assert invoke("gate", str(tmp_path / "run"), str(measured)).exit_code == 0  # gate reads a run's directory too
    one_line_exit_2(invoke("gate", str(tmp_path / "nothing"), str(measured)), "no such file")


def test_train_names_a_directory_corpus_and_an_unwritable_out_dir_before_training(tmp_path):
    one_line_exit_2(invoke("train", "--corpus", str(tmp_path), "--out-dir", str(tmp_path / "out")),
                    "is a directory")
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_exit_2(invoke("train", "--steps", "1", "--out-dir", str(blocker / "out")), "cannot write to --out-dir")
