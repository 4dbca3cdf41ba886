"""`sparsebench.benchmark(out_dir=...)` opens its results directory as `sparsebench run` does: the lock, and
the refusal to replace results unasked."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sparsebench
from sparsebench.environment import device_name
from sparsebench.errors import SparsebenchError
from sparsebench.results import read_results
from sparsebench.runner.lock import LOCK_NAME, DirLock

ROOT = Path(__file__).resolve().parents[1]
UNSUPPORTED = {"patterns": ["dilated"], "impls": ["seed"], "seq": [64]}  # rows without a worker process


def test_benchmark_writes_unsupported_rows_with_the_device_name(tmp_path: Path) -> None:
    frame = sparsebench.benchmark(**UNSUPPORTED, out_dir=tmp_path)
    written = read_results(tmp_path / "results.csv")
    assert list(frame["status"]) == list(written["status"]) == ["unsupported"]
    assert list(written["device_name"]) == [device_name("cpu")] and device_name("cpu")


def test_benchmark_into_a_directory_holding_results_refuses_like_run(tmp_path: Path) -> None:
    sparsebench.benchmark(**UNSUPPORTED, out_dir=tmp_path)
    path = tmp_path / "results.csv"
    before = path.read_bytes()
    with pytest.raises(SparsebenchError, match="already holds results: add --resume .* or --overwrite"):
        sparsebench.benchmark(**UNSUPPORTED, out_dir=tmp_path)
    with pytest.raises(SparsebenchError, match="give one of them"):
        sparsebench.benchmark(**UNSUPPORTED, out_dir=tmp_path, resume=True, overwrite=True)
    assert path.read_bytes() == before
    assert len(sparsebench.benchmark(**UNSUPPORTED, out_dir=tmp_path, resume=True)) == 0  # nothing left to run
    sparsebench.benchmark(**UNSUPPORTED, out_dir=tmp_path, overwrite=True)
    assert len(read_results(path)) == 1


def test_benchmark_refuses_a_directory_another_run_holds(tmp_path: Path) -> None:
    lock = DirLock(tmp_path)
    lock.acquire()  # another run, as far as benchmark() can tell: flock locks are per open file
    try:
        with pytest.raises(SparsebenchError, match=f"another sparsebench run \\(pid {os.getpid()}\\)"):
            sparsebench.benchmark(**UNSUPPORTED, out_dir=tmp_path)
    finally:
        lock.release()
    assert not (tmp_path / "results.csv").exists()
    sparsebench.benchmark(**UNSUPPORTED, out_dir=tmp_path)  # released: the lock went with the call that took it
    assert not (tmp_path / LOCK_NAME).exists()  # a finished run leaves results only
    DirLock(tmp_path).acquire()


@pytest.mark.slow
def test_two_benchmarks_into_one_directory_do_not_interleave_rows(tmp_path: Path) -> None:
    """The second waits for the first (wait=True) and appends after it (resume=True): each run's rows are one
    block of results.csv."""
    options = dict(patterns=["local"], impls=["eager", "sdpa"], heads=2, head_dim=16, min_run_time=0.05)
    first = subprocess.Popen(
        [sys.executable, "-c", f"import sparsebench; sparsebench.benchmark(seq=[64, 128], out_dir={str(tmp_path)!r}, "
                               f"**{options!r})"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "meta.json").exists():  # written under the lock, before the first case
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.stderr else ""
            time.sleep(0.05)
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(first.pid)
        second = sparsebench.benchmark(seq=[96], out_dir=tmp_path, wait=True, resume=True, **options)
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    runs = list(read_results(tmp_path / "results.csv")["run_id"])
    assert len(set(runs)) == 2 and runs == sorted(runs, key=runs.index)  # two blocks, not interleaved
    assert runs[-1] == second["run_id"].iloc[0] and len(second) == runs.count(runs[-1])
