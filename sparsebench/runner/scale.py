"""How one `sparsebench run` process scales out: which shard it runs, on which GPUs, and where it writes.

The options (`--shard`, `--gpus`, `--jobs`, `--launcher`/`--shards`) and the torchrun/srun environment are
checked together here, so that a combination that cannot work is one clear error before anything runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsebench.errors import SparsebenchError
from sparsebench.results import case_key
from sparsebench.runner import distributed, gpus
from sparsebench.runner.cases import Case
from sparsebench.runner.config import SweepConfig, resolve_devices
from sparsebench.runner.distributed import Rank
from sparsebench.runner.gpus import Slot
from sparsebench.runner.shard import Shard

LAUNCHERS = ("local", "slurm", "submitit-local")  # local: this process; the others: a submitit job array


@dataclass
class ScalePlan:
    """What this process runs: the whole sweep or one shard, serially or on parallel slots."""

    root: Path  # --out-dir
    launcher: str = "local"
    shard: Shard | None = None
    rank: Rank | None = None
    slots: list[Slot] = field(default_factory=list)
    shards: int | None = None  # job arrays: how many shards to submit

    @property
    def out_dir(self) -> Path:
        """Where this process writes results.csv and meta.json: the shard's own directory, or --out-dir."""
        return self.shard.out_dir(self.root) if self.shard else self.root

    def meta(self, cases: list[Case], unsupported: list[tuple[Case, str]]) -> dict[str, Any]:
        """meta.json keys written before the first case: the shard with every case it owns (so that `merge` can
        name the ones a dead shard did not finish), the rank, the GPUs."""
        out: dict[str, Any] = {}
        if self.shard:
            keys = [list(case_key(c.row())) for c in [*cases, *(c for c, _ in unsupported)]]
            out["shard"] = {"index": self.shard.index, "count": self.shard.count, "cases": keys}
        if self.rank:
            out["rank"] = self.rank.to_dict()
        if self.slots:
            out["slots"] = [slot.to_dict() for slot in self.slots]
        return out

    def describe(self) -> str:
        """One line for the console, '' for a plain serial run."""
        parts = []
        if self.shard:
            parts.append(f"shard {self.shard}")
        if self.rank:
            parts.append(f"{self.rank.launcher} rank {self.rank.rank} of {self.rank.world_size}")
        gpu_slots = [s for s in self.slots if s.gpu]
        if gpu_slots:
            parts.append(", ".join(f"GPU {s.gpu.index} ({s.gpu.name})" for s in gpu_slots) +
                         (": one worker each, shape groups from one queue" if len(gpu_slots) > 1 else ""))
        elif self.slots:
            parts.append(f"{len(self.slots)} parallel CPU workers (--jobs: timings disturb each other)")
        return "; ".join(parts) + (f" -> {self.out_dir}" if self.shard else "")


def plan(config: SweepConfig, root: Path, shard: str | None = None, gpu_list: str | None = None,
         jobs: int | None = None, launcher: str = "local", shards: int | None = None) -> ScalePlan:
    """Check the scale-out options against each other and the environment (torchrun/srun variables,
    CUDA_VISIBLE_DEVICES); raise SparsebenchError when they cannot work together."""
    if launcher not in LAUNCHERS:
        raise SparsebenchError(f"unknown --launcher {launcher!r}; choose from: {', '.join(LAUNCHERS)}")
    rank = distributed.from_env()
    if launcher != "local":
        if shards is None:
            raise SparsebenchError(f"--launcher {launcher} needs --shards N (the number of array tasks)")
        if shards < 1:
            raise SparsebenchError("--shards must be at least 1")
        for given, name in ((shard, "--shard"), (gpu_list, "--gpus"), (jobs, "--jobs"), (rank, "torchrun/srun")):
            if given:
                raise SparsebenchError(f"--launcher {launcher} runs every shard itself, one GPU each: drop {name}")
        if launcher == "submitit-local" and resolve_devices(config.devices) != ["cpu"]:
            raise SparsebenchError("--launcher submitit-local runs the array here without pinning GPUs: use it for "
                                   "CPU sweeps (on a GPU node: --gpus all)")
        return ScalePlan(root, launcher, shards=shards)
    if shards is not None:
        raise SparsebenchError("--shards goes with --launcher slurm; to run one shard here use --shard K/N")
    if rank and (shard or gpu_list or jobs):
        raise SparsebenchError(f"{rank.launcher} gives this process its shard (rank {rank.rank} of "
                               f"{rank.world_size}) and its GPU (local rank {rank.local_rank}): drop "
                               f"{'--shard' if shard else '--gpus' if gpu_list else '--jobs'}")
    if gpu_list and jobs:
        raise SparsebenchError("--gpus and --jobs: choose one (--gpus for CUDA sweeps, --jobs for CPU sweeps)")
    devices = resolve_devices(config.devices)
    fake = gpus.fake_gpus()
    cuda = any(d.startswith("cuda") for d in devices)
    result = ScalePlan(root, shard=Shard.parse(shard) if shard else rank.shard if rank else None, rank=rank)
    if gpu_list:
        if not (devices == ["cuda"] or (fake is not None and devices == ["cpu"])):
            raise SparsebenchError(f"--gpus runs a CUDA sweep on several GPUs: use it with --device cuda alone "
                                   f"(got {', '.join(devices)}); CPU sweeps run in parallel with --jobs N")
        result.slots = gpus.gpu_slots(gpus.parse_gpus(gpu_list, gpus.node_gpus()))
    elif jobs and jobs > 1:
        if cuda:
            raise SparsebenchError("--jobs is for CPU sweeps; on GPUs use --gpus all (one worker per GPU)")
        result.slots = gpus.cpu_slots(jobs)
    elif rank and (cuda or fake is not None):
        if any(":" in d for d in devices):
            raise SparsebenchError(f"under {rank.launcher} use --device cuda: each rank pins the GPU of its local "
                                   "rank, where it is cuda:0")
        available = gpus.node_gpus()
        if available:
            result.slots = gpus.gpu_slots([gpus.local_rank_gpu(rank.local_rank, available)])
        elif len([v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]) != 1:
            raise SparsebenchError(f"local rank {rank.local_rank}: cannot tell which GPU is its own (NVML lists "
                                   "none); give each rank one GPU through CUDA_VISIBLE_DEVICES")
    return result
