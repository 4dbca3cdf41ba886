"""`CausalOf`: any pattern intersected with causal (k <= q), as a language model needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsebench.patterns.base import MaskMod, Pattern

_ROW_CHUNK = 1024


@dataclass(frozen=True)
class CausalOf(Pattern):
    """inner(q, k) and k <= q."""

    inner: Pattern = None  # type: ignore[assignment]
    name = "causal_of"
    causal_rule = True

    def __post_init__(self) -> None:  # the inner pattern validated itself
        pass

    @property
    def params(self) -> dict[str, int]:
        return self.inner.params

    def label(self) -> str:
        return f"{self.inner.label()}&causal"

    def validate(self, n: int) -> None:
        self.inner.validate(n)

    def mask_mod_for(self, n: int, device: torch.device | str = "cpu") -> MaskMod:
        inner = self.inner.mask_mod_for(n, device)

        def causal_of(b, h, q, k):
            return inner(b, h, q, k) & (k <= q)

        return causal_of

    def row_counts(self, n: int) -> torch.Tensor:
        # Generic: count in row chunks, O(chunk * n) memory.
        counts = [self.rows_mask(torch.arange(s, min(n, s + _ROW_CHUNK)), n).sum(1) for s in range(0, n, _ROW_CHUNK)]
        return torch.cat(counts).long()


def causal_of(pattern: Pattern) -> Pattern:
    """The pattern intersected with k <= q (itself when its rule is already causal; dense gives causal)."""
    if pattern.name == "dense":
        from sparsebench.patterns.dense import Causal

        return Causal()  # the same mask, and the kernels' fast causal path
    return pattern if pattern.causal_rule else CausalOf(inner=pattern)
