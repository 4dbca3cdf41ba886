"""`strided`: the seed's rule, k mod s == 0 or k == q; not causal."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsebench.patterns.base import Pattern, positive


@dataclass(frozen=True)
class Strided(Pattern):
    """Every s-th key column plus self: mask[i, ::s] = 1; mask[i, i] = 1."""

    stride: int = 8
    name = "strided"
    doc = "k mod s == 0 or k == q (the seed's rule; not causal)"

    def check_params(self) -> None:
        positive(self, "stride")

    def mask_mod(self, b, h, q, k):
        return (k % self.stride == 0) | (k == q)

    def row_counts(self, n: int) -> torch.Tensor:
        q = torch.arange(n, dtype=torch.int64)
        columns = -(-n // self.stride)  # ceil(n / s) kept columns
        return columns + (q % self.stride != 0).long()

    def count_pairs(self, n: int) -> int:
        columns = -(-n // self.stride)
        return n * columns + (n - columns)  # every row keeps the columns; rows off a column add self
