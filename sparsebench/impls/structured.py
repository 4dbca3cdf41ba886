"""`structured`: pattern-aware kernels that compute only the needed blocks or keys (work and memory ~ nnz).

The kernels live in `kernels/`, one file per family:
- band.py:    banded query blocks for local, sliding_window, and dilated (a sliding window per q mod d);
- columns.py: gathered columns for strided (plus a self term) and fixed (plus causal own blocks);
- global_tokens.py: band + global rows/columns for longformer, gathered key blocks for bigbird;
- dense.py:   SDPA for dense and causal (is_causal already skips the upper triangle);
- decode.py:  decoding, any pattern: the K/V rows the new queries keep, sliced or gathered, one SDPA call.
GQA/MQA run each offset within a query-head group against K and V as they are (never repeated per head).
Each part runs on one of torch's fused attention kernels where one fits (flash or cuDNN with its backward,
merged through the logsumexp; SDPA with a mask for a kernel's only part); the rest (merged masked parts with
autograd or on CUDA, float32 on CUDA) runs on a chunked matmul + softmax path. `select_backend` in
kernels/core.py makes that choice; the private aten ops it may pick are checked against the
installed torch (aten_ops.py), and a mismatch is an `unsupported` row.
"""

from __future__ import annotations

import torch

from sparsebench.impls.base import Impl, Prepared
from sparsebench.impls.kernels import BUILDERS, TRAITS, Kernel, Traits, blocksparse, build_kernel, estimate_pairs
from sparsebench.impls.kernels.core import private_ops
from sparsebench.impls.sdpa import SdpaImpl
from sparsebench.patterns import CausalOf, Pattern


class StructuredImpl(Impl):
    name = "structured"
    description = ("pattern-aware kernels: banded blocks, gathered columns, band + globals, gathered blocks; "
                   "user patterns on the generic block-sparse kernel")

    def prepare(self, pattern: Pattern, n: int, device: torch.device | str, dtype: torch.dtype,
                q_len: int | None = None) -> Prepared[Kernel]:
        kernel = build_kernel(pattern, n, device, dtype, q_len)
        return Prepared(pattern, n, state=kernel, executed_pairs=kernel.executed_pairs, q_len=q_len,
                        kv_rows=kernel.kv_rows, extra={"pair_density": kernel.executed_pairs / float((q_len or n) * n)})

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prep: Prepared[Kernel]) -> torch.Tensor:
        return prep.state(q, k, v)

    def device_reason(self, pattern: Pattern, device_type: str, dtype: torch.dtype, mode: str) -> str | None:
        """A composed pattern (train's causal intersection) is for `blocksparse`; and why torch's private
        attention ops that this kernel would call do not fit, if they do not."""
        if isinstance(pattern, CausalOf):
            return (f"structured implements only {', '.join(BUILDERS)} and user patterns; "
                    f"{pattern.label()} runs on blocksparse")
        if mode == "decode" or not TRAITS.get(pattern.name, Traits()).private_ops(device_type, mode):
            return None  # decode: one public SDPA call
        for op in private_ops(device_type, dtype, needs_grad=mode == "fwdbwd"):
            if (reason := op.problem()) is not None:
                return reason
        return None

    def estimate_pairs(self, pattern: Pattern, n: int) -> int:
        """Kept pairs plus the kernel's padding (its builder's traits); user patterns: the generic kernel's plan."""
        return estimate_pairs(pattern, n)

    def estimate_bytes(self, pattern: Pattern, batch: int, heads: int, n: int, head_dim: int,
                       dtype: torch.dtype, mode: str, device_type: str = "cpu") -> int:
        """An O(nnz) upper bound from the builder's traits (kernels/core.py, `Traits.estimate_bytes`); dense and
        causal are SDPA's; user patterns: the generic kernel's plan."""
        if pattern.name not in BUILDERS:  # user patterns: the generic kernel, from its plan
            return blocksparse.plan_bytes(pattern, batch, heads, n, head_dim, dtype, mode, device_type)
        traits = TRAITS[pattern.name]
        if traits.sdpa:
            return SdpaImpl().estimate_bytes(pattern, batch, heads, n, head_dim, dtype, mode, device_type)
        return traits.estimate_bytes(pattern, batch, heads, n, head_dim, dtype, mode, device_type)

