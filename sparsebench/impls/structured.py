"""`structured`: pattern-aware kernels that compute only the needed blocks or keys (placeholder)."""

from __future__ import annotations

from sparsebench.impls.sdpa import SdpaImpl


class StructuredImpl(SdpaImpl):
    # Placeholder until the pattern-aware kernels land: delegates to SDPA (dense work).
    name = "structured"
    description = "pattern-aware kernels: banded blocks, gathered columns, band + globals, gathered blocks"
