"""`local`: the seed's window, q - w//2 <= k < q + w//2, clamped at the edges, not causal."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsebench.errors import PatternError
from sparsebench.patterns.base import Pattern, ramp_sum


@dataclass(frozen=True)
class Local(Pattern):
    """The write-up's local window: mask[i, max(0, i - w//2) : min(n, i + w//2)] = 1."""

    window: int = 64
    name = "local"
    doc = "q - w//2 <= k < q + w//2 (the seed's rule; not causal)"

    def check_params(self) -> None:
        # w < 2 gives an empty window (w//2 == 0), so every row would be fully masked.
        if self.window < 2:
            raise PatternError(f"local: window must be >= 2, got {self.window}")

    def mask_mod(self, b, h, q, k):
        half = self.window // 2
        return (k >= q - half) & (k < q + half)

    def row_counts(self, n: int) -> torch.Tensor:
        q = torch.arange(n, dtype=torch.int64)
        half = self.window // 2
        return (q + half).clamp(max=n) - (q - half).clamp(min=0)

    def count_pairs(self, n: int) -> int:
        # sum over q of min(q + h, n) - max(q - h, 0), with min(x, n) = x - max(x - n, 0)
        half = self.window // 2
        return n * (n - 1) // 2 + n * half - ramp_sum(n, half - n) - ramp_sum(n, -half)
