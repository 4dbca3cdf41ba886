"""Scale-out end to end on the CPU: shards in separate processes, a shard killed part-way, torchrun, a submitit
job array on its local executor, and parallel GPU workers on a fake device list (the workers measure on the CPU,
each pinned to its fake GPU through CUDA_VISIBLE_DEVICES)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from sparsebench.cli import app
from sparsebench.results import case_key, read_results, shape_key
from sparsebench.runner import Sweep, SweepConfig

pytestmark = pytest.mark.slow  # worker processes

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["--device", "cpu", "--pattern", "local", "--pattern", "strided", "--impl", "eager", "--impl", "sdpa",
         "--seq", "64", "--seq", "96", "--seq", "128", "--min-run-time", "0.02", "--heads", "2", "--head-dim", "16"]
CONFIG = SweepConfig(patterns=["local", "strided"], impls=["eager", "sdpa"], seq=[64, 96, 128], devices=["cpu"],
                     heads=[2], head_dim=[16], min_run_time=0.02)
FAULTS = ROOT / "tests" / "fault_impls.py"  # test-only implementations that fail or slow down on purpose
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
               "CUDA_VISIBLE_DEVICES", "SPARSEBENCH_FAKE_GPUS")


def with_eager(variant: str) -> list[str]:
    """SWEEP with eager replaced by its test-only variant `variant` (`x1`: as is; `hang`), named faulty_eager."""
    return [f"{FAULTS}:eager_{variant}" if arg == "eager" else arg for arg in SWEEP]


def env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    return {**clean, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **extra}


def cli_env(**extra: str) -> dict[str, str | None]:
    """For CliRunner: the launch variables of the test's own environment unset, `extra` set."""
    return {**{k: None for k in LAUNCH_VARS}, **extra}


def sparsebench(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sparsebench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def expected_keys(config: SweepConfig = CONFIG) -> list[tuple]:
    """The case set of the unsharded sweep."""
    cases, unsupported = Sweep(config).cases()
    return sorted(c.key() for c in [*cases, *(c for c, _ in unsupported)])


def row_keys(path: Path) -> list[tuple]:
    return sorted(case_key(r) for r in read_results(path).to_dict("records"))


def test_shards_in_three_processes_merge_to_the_serial_run(tmp_path):
    shards = [sparsebench("run", *SWEEP, "--out-dir", str(tmp_path / "sharded"), "--shard", f"{k}/3", env=env())
              for k in (1, 2, 3)]
    serial = CliRunner().invoke(app, ["run", *SWEEP, "--out-dir", str(tmp_path / "serial")], env=cli_env())
    outputs = [proc.communicate(timeout=600) for proc in shards]
    assert [proc.returncode for proc in shards] == [0, 0, 0], [err for _, err in outputs]
    assert serial.exit_code == 0, serial.output
    result = CliRunner().invoke(app, ["merge", str(tmp_path / "sharded"), "--out", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    merged, serial_keys = row_keys(tmp_path / "merged" / "results.csv"), row_keys(tmp_path / "serial" / "results.csv")
    assert merged == serial_keys == expected_keys()
    # every speed-up divides two measurements of one shard's run: its dense reference is in the same shard
    for k in (1, 2, 3):
        frame = read_results(tmp_path / "sharded" / f"shard-{k}-of-3" / "results.csv")
        assert frame.run_id.nunique() == 1 and frame.speedup_vs_dense.notna().all()
    # the last shard to finish merged them already, into --out-dir
    assert row_keys(tmp_path / "sharded" / "results.csv") == merged


def test_a_killed_shard_keeps_its_rows_and_merge_names_what_is_missing(tmp_path):
    out = tmp_path / "out"
    first = CliRunner().invoke(app, ["run", *with_eager("x1"), "--out-dir", str(out), "--shard", "1/2"],
                               env=cli_env())
    assert first.exit_code == 0, first.output
    # Shard 2 hangs in its first eager case (injected) after its dense reference row is written; then it dies.
    proc = sparsebench("run", *with_eager("hang"), "--out-dir", str(out), "--shard", "2/2", env=env())
    csv = out / "shard-2-of-2" / "results.csv"
    for _ in range(3000):
        if (csv.exists() and len(csv.read_text().splitlines()) >= 2) or proc.poll() is not None:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    workers = psutil.Process(proc.pid).children()
    proc.kill()  # as a node failure would
    proc.communicate()
    for worker in workers:  # its worker leads its own process group: end it too
        os.killpg(worker.pid, signal.SIGKILL)
    finished = read_results(csv)
    assert list(finished.pattern) == ["dense"]

    result = CliRunner().invoke(app, ["merge", str(out), "--out", str(tmp_path / "merged")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert "shard 2/2 did not finish" in lines
    missing = [line for line in lines if line.startswith("missing case (shard 2/2): ")]
    owned = json.loads((out / "shard-2-of-2" / "meta.json").read_text())["shard"]["cases"]
    assert len(missing) == len(owned) - 1 > 0  # every case of the shard but its dense reference row
    assert lines[-1].startswith(f"error: {len(missing)} case(s) missing; nothing written")
    assert not (out / "results.csv").exists()  # no merge while a shard is unfinished


def test_torchrun_ranks_take_their_shard_and_pin_their_gpu(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun comes with torch"
    out = tmp_path / "out"
    proc = subprocess.run([torchrun, "--nproc-per-node", "2", "-m", "sparsebench", "run", *SWEEP, "--out-dir",
                           str(out)], env=env(SPARSEBENCH_FAKE_GPUS="0=Fake GPU A,1=Fake GPU B"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        shard = out / f"shard-{rank + 1}-of-2"
        meta = json.loads((shard / "meta.json").read_text())
        assert meta["rank"] == {"launcher": "torchrun", "rank": rank, "world_size": 2, "local_rank": rank}
        frame = read_results(shard / "results.csv")
        assert set(frame.gpu_index) == {rank} and set(frame.gpu_name) == {"Fake GPU " + "AB"[rank]}
    assert row_keys(out / "results.csv") == expected_keys()  # merged by the rank that finished last


def test_a_submitit_job_array_runs_every_shard_and_merges(tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", *SWEEP, "--out-dir", str(out), "--launcher", "submitit-local",
                                      "--shards", "2", "--slurm-time", "10"], env=cli_env())
    assert result.exit_code == 0, result.output
    assert "submitted 2 shard(s) as submitit-local job" in result.output
    assert "all 2 shards finished: merged" in result.output
    assert row_keys(out / "results.csv") == expected_keys()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["merged"]["shards"] == 2 and len(meta["merged_from"]) == 2
    assert (out / "slurm" / "sweep.toml").exists()


def test_gpus_run_one_pinned_worker_per_gpu_into_one_file(tmp_path):
    """Three fake GPUs of two models; --gpus 1,3: GPU 0 is never used, each worker sees exactly one GPU, each
    shape group runs on one GPU with its dense reference, and the rows say which."""
    record = tmp_path / "workers"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(  # every Python process started below notes what it could see
        "import os\n"
        f"with open({str(record)!r}, 'a') as fh:\n"
        "    fh.write(repr(os.environ.get('CUDA_VISIBLE_DEVICES')) + '\\n')\n")
    fake = "0=Fake H100,1=Fake A100,3=Fake H100"
    result = CliRunner().invoke(app, ["run", *SWEEP, "--out-dir", str(tmp_path / "out"), "--gpus", "1,3"],
                                env=cli_env(SPARSEBENCH_FAKE_GPUS=fake, PYTHONPATH=f"{hook}{os.pathsep}{ROOT}"))
    assert result.exit_code == 0, result.output
    assert "GPU 1 (Fake A100), GPU 3 (Fake H100): one worker each" in result.output
    seen = record.read_text().split()
    assert seen and set(seen) <= {"'1'", "'3'"}  # never unset, never GPU 0, never two GPUs
    frame = read_results(tmp_path / "out" / "results.csv")
    assert sorted(case_key(r) for r in frame.to_dict("records")) == expected_keys()
    assert set(frame.gpu_index) <= {1, 3} and frame.run_id.nunique() == 1
    assert dict(zip(frame.gpu_index, frame.gpu_name)) in ({1: "Fake A100", 3: "Fake H100"},
                                                           {1: "Fake A100"}, {3: "Fake H100"})
    for _, rows in frame.groupby(frame.apply(shape_key, axis=1)):  # a shape group on one GPU, dense included
        assert rows.gpu_index.nunique() == 1 and (rows.pattern == "dense").sum() == 1
        assert rows.speedup_vs_dense.notna().all()
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert [g["index"] for g in meta["gpus_used"]] == [1, 3]
    assert sum(g["groups"] for g in meta["gpus_used"]) == 3


def test_jobs_runs_cpu_workers_in_parallel(tmp_path):
    result = CliRunner().invoke(app, ["run", *SWEEP, "--out-dir", str(tmp_path), "--jobs", "2"], env=cli_env())
    assert result.exit_code == 0, result.output
    frame = read_results(tmp_path / "results.csv")
    assert sorted(case_key(r) for r in frame.to_dict("records")) == expected_keys()
    assert frame.gpu_index.isna().all() and (frame.status == "ok").all()
    assert json.loads((tmp_path / "meta.json").read_text())["harness"]["workers"] == 3


def test_ctrl_c_stops_every_gpu_worker(tmp_path):
    """Ctrl-C in a --gpus run: exit 130, the finished rows kept, no row for an interrupted case, no worker left."""
    proc = sparsebench("run", *with_eager("hang"), "--out-dir", str(tmp_path), "--gpus", "all",
                       env=env(SPARSEBENCH_FAKE_GPUS="0=A,1=B"))
    csv = tmp_path / "results.csv"
    for _ in range(3000):  # both workers hang in their first eager case, after their dense reference rows
        if (csv.exists() and len(csv.read_text().splitlines()) >= 3) or proc.poll() is not None:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    time.sleep(1.0)
    workers = [p for p in psutil.Process(proc.pid).children() if "sparsebench.runner.worker" in " ".join(p.cmdline())]
    assert len(workers) == 2
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    psutil.wait_procs(workers, timeout=10)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    frame = read_results(csv)
    assert set(frame.status) == {"ok"} and set(frame.impl) == {"sdpa"}  # no 'oom' row for a killed worker
