"""A sweep as a submitit job array: one shard per task, one GPU per task (`pip install 'sparsebench[slurm]'`).

Each task runs `python -m sparsebench run --config <out>/slurm/sweep.toml --shard K/N --out-dir <out>`: the same
command a person would run for one shard, so its results and meta.json are those of any other shard. The config
is the submitting command's whole sweep (its TOML and command-line options), written once as sweep.toml.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparsebench.errors import SparsebenchError
from sparsebench.runner.config import SweepConfig

CLUSTERS = {"slurm": "slurm", "submitit-local": "local"}  # --launcher -> submitit's executor


def config_toml(config: SweepConfig) -> str:
    """The sweep as a TOML file that `run --config` reads back to the same SweepConfig: the settings that differ
    from the defaults (the reader refuses some settings a sweep would ignore, e.g. --seq beside --seq-lens, or
    --seq-lens-seed without them, so only what the sweep was given is written)."""
    lines, tables = [], []
    defaults = dataclasses.asdict(SweepConfig())
    for name, value in dataclasses.asdict(config).items():
        if value == defaults.get(name):
            continue
        if isinstance(value, dict):
            tables.append(f"[{name}]")
            tables += [f"{k} = {_toml(v)}" for k, v in value.items()]
        else:
            lines.append(f"{name} = {_toml(value)}")
    return "\n".join(lines + tables) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    return repr(value)


def shard_command(config_file: Path, out_dir: Path, index: int, count: int, resume: bool,
                  overwrite: bool = False) -> list[str]:
    """The command a task runs for shard index/count."""
    return [sys.executable, "-m", "sparsebench", "run", "--config", str(config_file), "--shard", f"{index}/{count}",
            "--out-dir", str(out_dir), *(["--resume"] if resume else []), *(["--overwrite"] if overwrite else [])]


def run_task(command: list[str]) -> str:
    """What one array task runs (in the task's process): the shard's `sparsebench run`; its output goes to the
    task's log. Raises with the last lines of the output when the shard fails."""
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        tail = " | ".join(line.strip() for line in proc.stdout.strip().splitlines()[-3:])
        raise RuntimeError(f"exit {proc.returncode}: {tail}")
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def submit(config: SweepConfig, out_dir: Path, shards: int, launcher: str, gpus_per_task: int, time_min: int,
           params: dict[str, str], resume: bool, overwrite: bool = False) -> list[Any]:
    """Write sweep.toml and submit the array; returns submitit's jobs, one per shard (shard K is jobs[K-1])."""
    try:
        import submitit
    except ImportError:
        raise SparsebenchError(f"--launcher {launcher} needs submitit: pip install 'sparsebench[slurm]'") from None
    folder = Path(out_dir) / "slurm"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        config_file = folder / "sweep.toml"
        config_file.write_text(config_toml(config))
    except OSError as exc:
        raise SparsebenchError(f"cannot write to --out-dir {out_dir}: {exc.strerror or exc}") from None
    try:
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=CLUSTERS[launcher])
        executor.update_parameters(name="sparsebench", nodes=1, tasks_per_node=1, gpus_per_node=gpus_per_task,
                                   timeout_min=time_min, slurm_array_parallelism=shards,
                                   **{f"slurm_{k}": v for k, v in params.items()})
        commands = [shard_command(config_file, out_dir, k, shards, resume, overwrite) for k in range(1, shards + 1)]
        return executor.map_array(run_task, commands)
    except (NameError, ValueError, RuntimeError, OSError) as exc:  # submitit's errors for bad parameters/sbatch
        raise SparsebenchError(f"could not submit the array: {str(exc).splitlines()[0]}") from None


@dataclasses.dataclass
class ArrayState:
    """Where the array stands: shards finished, failed (with why), still queued or running."""

    done: list[int]
    failed: dict[int, str]
    waiting: list[int]

    @property
    def finished(self) -> bool:
        return not self.waiting


def poll(jobs: list[Any]) -> ArrayState:
    """The state of every shard's job (shard K is jobs[K-1])."""
    done, failed, waiting = [], {}, []
    for index, job in enumerate(jobs, start=1):
        if not job.done():
            waiting.append(index)
            continue
        error = job.exception()
        if error is None:
            done.append(index)
        else:
            failed[index] = str(error).strip().splitlines()[-1][:300] if str(error).strip() else type(error).__name__
    return ArrayState(done, failed, waiting)


def wait(jobs: list[Any], on_poll: Callable[[ArrayState], None], interval_s: float = 5.0) -> ArrayState:
    """Poll until every job has finished; `on_poll` sees each state (a progress line)."""
    import time

    while True:
        state = poll(jobs)
        on_poll(state)
        if state.finished:
            return state
        time.sleep(interval_s)


def parse_params(items: list[str]) -> dict[str, str]:
    """['account=abc', 'qos=high'] -> {'account': 'abc', 'qos': 'high'} (submitit's slurm_* parameters)."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SparsebenchError(f"--slurm-param {item!r}: write KEY=VALUE, e.g. account=myproject")
        out[key.strip().replace("-", "_")] = value.strip()
    return out
