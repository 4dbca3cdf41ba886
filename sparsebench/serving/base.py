"""What a serving implementation declares and builds: the same protocol as impls/base.py, on a ServingBatch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from sparsebench.patterns import Pattern
from sparsebench.serving.batch import ServingBatch


@dataclass
class ServingPrepared:
    """What `prepare` built once per case (its cost is setup_ms)."""

    state: Any = None
    executed_pairs: int = 0  # (q, k) pairs computed per query head, summed over the batch, padding included
    kv_rows: int | None = None  # decode: K and V rows read per key/value head, summed over the batch
    padding_waste: float | None = None  # padded baselines: the share of the padded token slots that are padding
    extra: dict[str, float] = field(default_factory=dict)


class ServingImpl:
    """One implementation of packed prefill (mode fwd) or paged decode (mode decode)."""

    name: ClassVar[str]
    modes: ClassVar[frozenset[str]] = frozenset({"fwd", "decode"})

    def unsupported_reason(self, pattern: Pattern, mode: str, heads: int, kv_heads: int) -> str | None:
        if mode not in self.modes:
            return f"{self.name} on a serving batch runs {' and '.join(sorted(self.modes))} only"
        return None

    def prepare(self, pattern: Pattern, batch: ServingBatch) -> ServingPrepared:
        raise NotImplementedError

    def forward(self, batch: ServingBatch, prep: ServingPrepared) -> torch.Tensor:
        """Prefill: (1, H, T, D), each sequence's rows in place; decode: (B, H, 1, D)."""
        raise NotImplementedError


def causal_pairs(n: int) -> int:
    return n * (n + 1) // 2
