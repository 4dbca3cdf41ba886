"""`sliding_window`: the last w tokens including self, q - w < k <= q."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsebench.patterns.base import Pattern, positive, ramp_sum


@dataclass(frozen=True)
class SlidingWindow(Pattern):
    """Causal sliding window of w keys (self included)."""

    window: int = 256
    name = "sliding_window"
    doc = "q - w < k <= q (last w tokens including self)"
    causal_rule = True

    def check_params(self) -> None:
        positive(self, "window")

    def mask_mod(self, b, h, q, k):
        return (k <= q) & (k > q - self.window)

    def row_counts(self, n: int) -> torch.Tensor:
        return (torch.arange(n, dtype=torch.int64) + 1).clamp(max=self.window)

    def count_pairs(self, n: int) -> int:
        # sum over q of min(q + 1, w) = (q + 1) - max(q + 1 - w, 0)
        return n * (n + 1) // 2 - ramp_sum(n, 1 - self.window)
