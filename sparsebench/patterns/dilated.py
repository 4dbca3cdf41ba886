"""`dilated`: k = q - j*d for j in [0, w), k >= 0 (causal, dilation d)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsebench.patterns.base import Pattern, positive


@dataclass(frozen=True)
class Dilated(Pattern):
    """Every d-th key going back from q, w keys at most (self included)."""

    window: int = 64
    dilation: int = 2
    name = "dilated"
    doc = "k = q - j*d for j in [0, w), k >= 0"
    causal_rule = True

    def check_params(self) -> None:
        positive(self, "window", "dilation")

    def mask_mod(self, b, h, q, k):
        diff = q - k
        return (diff >= 0) & (diff % self.dilation == 0) & (diff < self.window * self.dilation)

    def row_counts(self, n: int) -> torch.Tensor:
        q = torch.arange(n, dtype=torch.int64)
        return (q // self.dilation + 1).clamp(max=self.window)

    def count_pairs(self, n: int) -> int:
        # rows come in groups of d with the same count min(m + 1, w), m = q // d; the last group may be short
        d, w = self.dilation, self.window
        groups = (n - 1) // d + 1
        in_last = n - d * (groups - 1)

        def capped(m: int) -> int:  # sum(min(j, w) for j in 1..m)
            return m * (m + 1) // 2 if m <= w else w * (w + 1) // 2 + (m - w) * w

        return d * capped(groups) - (d - in_last) * min(groups, w)
