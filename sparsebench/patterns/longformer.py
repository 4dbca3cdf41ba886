"""`longformer` (Beltagy et al. 2020): a local band plus g global tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsebench.errors import PatternError
from sparsebench.patterns.base import Pattern, positive


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
