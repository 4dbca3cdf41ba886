"""`dense` (every pair) and `causal` (k <= q)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsebench.patterns.base import Pattern


@dataclass(frozen=True)
class Dense(Pattern):
    """Every query attends to every key."""

    name = "dense"
    doc = "every pair"

    def mask_mod(self, b, h, q, k):
        return (q >= 0) & (k >= 0)

    def row_counts(self, n: int) -> torch.Tensor:
        return torch.full((n,), n, dtype=torch.int64)

    def count_pairs(self, n: int) -> int:
        return n * n


@dataclass(frozen=True)
class Causal(Pattern):
    """k <= q."""

    name = "causal"
    doc = "k <= q"
    causal_rule = True

    def mask_mod(self, b, h, q, k):
        return k <= q

    def row_counts(self, n: int) -> torch.Tensor:
        return torch.arange(1, n + 1, dtype=torch.int64)

    def count_pairs(self, n: int) -> int:
        return n * (n + 1) // 2
