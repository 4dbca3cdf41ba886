"""The rank of this process under torchrun or srun, from their environment variables only (no process group).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; srun sets SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID. With more
than one process, `sparsebench run` takes shard RANK+1 of WORLD_SIZE and pins LOCAL_RANK's GPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from sparsebench.errors import SparsebenchError
from sparsebench.runner.shard import Shard

# (launcher, rank, world size, local rank) variables, in order of precedence
LAUNCHERS = (("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
             ("srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"))


@dataclass(frozen=True)
class Rank:
    """One process of a multi-process launch."""

    launcher: str  # 'torchrun' or 'srun'
    rank: int  # 0 ... world_size - 1
    world_size: int
    local_rank: int  # the process's index on its node: which GPU it pins

    @property
    def shard(self) -> Shard:
        return Shard(self.rank + 1, self.world_size)

    def to_dict(self) -> dict[str, int | str]:
        return {"launcher": self.launcher, "rank": self.rank, "world_size": self.world_size,
                "local_rank": self.local_rank}


def from_env(env: Mapping[str, str] | None = None) -> Rank | None:
    """This process's rank, or None when it was not started as one of several processes."""
    env = os.environ if env is None else env
    for launcher, rank_var, size_var, local_var in LAUNCHERS:
        if rank_var not in env or size_var not in env:
            continue
        rank, size = _int(env, rank_var), _int(env, size_var)
        local = _int(env, local_var) if local_var in env else rank
        if size <= 1:
            return None
        if not 0 <= rank < size or local < 0:
            raise SparsebenchError(f"{rank_var}={rank} is not a rank of {size_var}={size}")
        return Rank(launcher, rank, size, local)
    return None


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise SparsebenchError(f"{name}={env[name]!r} is not an integer") from None
