"""`structured`: pattern-aware kernels that compute only the needed blocks or keys (work and memory ~ nnz).

The kernels live in `structured_kernels/`, one file per family:
- band.py:    banded query blocks for local, sliding_window, and dilated (a sliding window per q mod d);
- columns.py: gathered columns for strided (plus a self term) and fixed (plus causal own blocks);
- globals.py: band + global rows/columns for longformer, gathered key blocks for bigbird;
- dense.py:   SDPA for dense and causal (is_causal already skips the upper triangle).
On CPU without autograd the parts run on torch's flash kernel and merge through their logsumexp; with
autograd or on other devices they run on a chunked matmul + softmax path with the same block structure.
"""

from __future__ import annotations

import torch

from sparsebench.impls.base import Impl, Prepared
from sparsebench.impls.structured_kernels import BUILDERS, build_kernel
from sparsebench.patterns import Pattern


class StructuredImpl(Impl):
    name = "structured"
    description = "pattern-aware kernels: banded blocks, gathered columns, band + globals, gathered blocks"
    patterns = frozenset(BUILDERS)

    def prepare(self, pattern: Pattern, n: int, device: torch.device | str, dtype: torch.dtype) -> Prepared:
        kernel = build_kernel(pattern, n, device, dtype)
        return Prepared(pattern, n, state=kernel, executed_pairs=kernel.executed_pairs,
                        extra={"pair_density": kernel.executed_pairs / float(n * n)})

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prep: Prepared) -> torch.Tensor:
        return prep.state(q, k, v)

    def estimate_bytes(self, pattern: Pattern, batch: int, heads: int, n: int, head_dim: int,
                       dtype: torch.dtype, mode: str) -> int:
        """O(nnz): float32 scores and probabilities for ~2x nnz pairs (block padding) on the matmul path,
        plus padded/gathered copies of q, k, v and float32 partial outputs; backward keeps them all."""
        elt = torch.finfo(dtype).bits // 8
        pairs = 2 * pattern.nnz(n)
        copies = 8 + (2 * (3 + pattern.global_blocks + pattern.random_blocks) if pattern.name == "bigbird" else 0)
        per_head = pairs * (8 + elt) + copies * n * head_dim * 4
        return batch * heads * per_head * (3 if mode == "fwdbwd" else 1)
