"""`blocksparse`: the generic block-sparse kernel for every pattern (kernels/blocksparse.py).

It needs nothing but the pattern's row masks, so it runs any pattern, a user's mask_mod included, forward and
backward on any device; it is also what `structured` runs for patterns without a specialised kernel. As its
own implementation it puts the generic path's speed beside the specialised kernels' in the same results.
"""

from __future__ import annotations

import torch

from sparsebench.impls.base import Impl, Prepared
from sparsebench.impls.kernels import Kernel
from sparsebench.impls.kernels.blocksparse import blocksparse_kernel, plan_bytes, plan_pairs
from sparsebench.impls.kernels.decode import decode_kernel


class BlockSparseImpl(Impl):
    name = "blocksparse"
    description = "generic block-sparse: per query block, the key blocks it needs, gathered; any pattern"
    # Run when named: it is what `structured` already runs for user patterns, and on patterns with a kept key in
    # most blocks (strided) it does dense work plus the gathers (11.7 s a call at n = 8192 on a 2-core CPU).
    in_default_sweep = False

    def prepare(self, pattern, n, device, dtype, q_len=None) -> Prepared[Kernel]:
        pattern.validate(n)
        device = torch.device(device)
        kernel = (blocksparse_kernel(pattern, n, device, dtype) if q_len is None
                  else decode_kernel(pattern, n, q_len, device, dtype))
        return Prepared(pattern, n, state=kernel, executed_pairs=kernel.executed_pairs, q_len=q_len,
                        kv_rows=kernel.kv_rows, extra={"pair_density": kernel.executed_pairs / float((q_len or n) * n)})

    def forward(self, q, k, v, prep: Prepared[Kernel]) -> torch.Tensor:
        return prep.state(q, k, v)

    def estimate_pairs(self, pattern, n):
        """The pairs the kernel will compute in the CPU's blocks, from its plan (the block layout, built once and
        cached)."""
        return plan_pairs(pattern, n, "cpu")

    def estimate_bytes(self, pattern, batch, heads, n, head_dim, dtype, mode, device_type="cpu"):
        """From the kernel's plan: the blocks it copies and the masks it builds (see plan_bytes)."""
        return plan_bytes(pattern, batch, heads, n, head_dim, dtype, mode, device_type)
