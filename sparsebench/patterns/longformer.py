"""`longformer` (Beltagy et al. 2020): a local band plus g global tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsebench.errors import PatternError
from sparsebench.patterns.base import Pattern, positive, ramp_sum


@dataclass(frozen=True)
class Longformer(Pattern):
    """|q - k| <= w // 2, or q < g, or k < g."""

    window: int = 256
    global_tokens: int = 16
    name = "longformer"
    doc = "|q - k| <= w//2, or q < g, or k < g"

    def check_params(self) -> None:
        positive(self, "window")
        if self.global_tokens < 0:
            raise PatternError(f"longformer: global_tokens must be >= 0, got {self.global_tokens}")

    def mask_mod(self, b, h, q, k):
        band = (q - k <= self.window // 2) & (k - q <= self.window // 2)
        return band | (q < self.global_tokens) | (k < self.global_tokens)

    def row_counts(self, n: int) -> torch.Tensor:
        q = torch.arange(n, dtype=torch.int64)
        half, g = self.window // 2, self.global_tokens
        band = (q + half).clamp(max=n - 1) - (q - half).clamp(min=0) + 1
        # global columns k < g that lie left of the band (right of it is impossible once q >= g)
        extra = (q - half).clamp(min=0).clamp(max=g)
        return torch.where(q < g, torch.full_like(q, n), band + extra)

    def count_pairs(self, n: int) -> int:
        # Global rows see all n keys. Row q >= g keeps band + extra = (q + h + 1) - max(q + h - (n - 1), 0)
        # - max(q - h - g, 0); sums over q in [g, n) are prefix sums to n minus prefix sums to g.
        half, g = self.window // 2, min(self.global_tokens, n)
        rows = n - g
        linear = rows * (g + n - 1) // 2 + rows * (half + 1)
        over_right = ramp_sum(n, half - n + 1) - ramp_sum(g, half - n + 1)
        past_globals = ramp_sum(n, -half - self.global_tokens) - ramp_sum(g, -half - self.global_tokens)
        return g * n + linear - over_right - past_globals
