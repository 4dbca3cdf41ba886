"""A deterministic split of a sweep into N shards by shape group.

The unit of work is a shape group with its dense reference (`Case.group()`): a group is never split, so every
speed-up is measured in one worker process on one device. Groups are assigned greedily, largest estimated work
first, each to the least-loaded shard (ties: the lower shard, then the group key as text), so the split is the same
in every process that expands the same configuration, and the shards' union is exactly the unsharded sweep.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sparsebench.errors import SparsebenchError
from sparsebench.results import key_text
from sparsebench.runner.cases import Case

GroupKey = tuple
SHARD_DIR = re.compile(r"^shard-(\d+)-of-(\d+)$")


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1 ... count) of `count`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise SparsebenchError(f"shard {self.index}/{self.count}: K must be between 1 and N")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'K/N' -> Shard(K, N)."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match or int(match[2]) < 1:
            raise SparsebenchError(f"--shard {text!r}: write K/N with 1 <= K <= N, e.g. --shard 2/8")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def dirname(self) -> str:
        """The shard's own directory under --out-dir: its results.csv and meta.json."""
        return f"shard-{self.index}-of-{self.count}"

    def out_dir(self, root: Path) -> Path:
        return Path(root) / self.dirname

    def select(self, cases: list[Case], unsupported: list[tuple[Case, str]]) -> tuple[list[Case],
                                                                                  list[tuple[Case, str]]]:
        """This shard's part of an expanded sweep (the output of `config.expand`), in the same order."""
        owner = assign(group_work(cases, unsupported), self.count)
        return ([c for c in cases if owner[c.group()] == self.index],
                [(c, r) for c, r in unsupported if owner[c.group()] == self.index])


def parse_dirname(name: str) -> Shard | None:
    """'shard-2-of-8' -> Shard(2, 8); None for any other name."""
    match = SHARD_DIR.match(name)
    return Shard(int(match[1]), int(match[2])) if match and 1 <= int(match[1]) <= int(match[2]) else None


def case_work(case: Case) -> float:
    """A rough estimate of a case's work: the dense attention FLOPs of its shape (forward+backward: x3.5)."""
    work = case.batch * case.heads * case.q_len * case.seq_len * case.head_dim
    return work * (3.5 if case.mode == "fwdbwd" else 1.0)


def group_work(cases: Iterable[Case], unsupported: Iterable[tuple[Case, str]] = ()) -> dict[GroupKey, float]:
    """Estimated work per shape group; a group of unsupported rows only is 0 (its rows are not measured)."""
    work = {case.group(): 0.0 for case, _ in unsupported}
    for case in cases:
        work[case.group()] = work.get(case.group(), 0.0) + case_work(case)
    return work


def group_order(work: dict[GroupKey, float]) -> list[GroupKey]:
    """Groups largest first; ties in the order of their keys as text (deterministic across processes)."""
    return sorted(work, key=lambda g: (-work[g], tuple(key_text(v) for v in g)))


def assign(work: dict[GroupKey, float], count: int) -> dict[GroupKey, int]:
    """Each group's shard (1 ... count): largest group first, to the least-loaded shard."""
    load = [0.0] * count
    owner: dict[GroupKey, int] = {}
    for group in group_order(work):
        i = min(range(count), key=lambda s: (load[s], s))
        owner[group] = i + 1
        load[i] += work[group]
    return owner
