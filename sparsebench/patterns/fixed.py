"""`fixed` (Child et al. 2019, "Generating Long Sequences with Sparse Transformers", sec. 4.2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsebench.errors import PatternError
from sparsebench.patterns.base import Pattern, positive


@dataclass(frozen=True)
class Fixed(Pattern):
    """(k // l == q // l or k mod l >= l - c) and k <= q."""

    length: int = 128
    summary: int = 8
    name = "fixed"
    doc = "(k//l == q//l or k mod l >= l - c) and k <= q"
    causal_rule = True

    def check_params(self) -> None:
        positive(self, "length", "summary")
        if self.summary > self.length:
            raise PatternError(f"fixed: summary ({self.summary}) must be <= length ({self.length})")

    def mask_mod(self, b, h, q, k):
        same_block = (k // self.length) == (q // self.length)
        summary = (k % self.length) >= (self.length - self.summary)
        return (same_block | summary) & (k <= q)

    def row_counts(self, n: int) -> torch.Tensor:
        q = torch.arange(n, dtype=torch.int64)
        # own block up to q, plus the c summary columns of every earlier (full) block
        return q % self.length + 1 + (q // self.length) * self.summary

    def count_pairs(self, n: int) -> int:
        size = self.length
        full, rem = divmod(n, size)
        own = full * size * (size + 1) // 2 + rem * (rem + 1) // 2  # sum of q % l + 1
        earlier = size * full * (full - 1) // 2 + rem * full  # sum of q // l
        return own + self.summary * earlier
