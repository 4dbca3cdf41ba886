"""`dense` and `causal`: torch's SDPA already does the minimum work (is_causal skips blocks above the diagonal)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from sparsebench.impls.kernels.core import Kernel, Traits

SDPA = Traits(sdpa=True, padding=1.0, row_padding=0)  # one SDPA call on exactly the kept pairs: SDPA's estimates


@dataclass(kw_only=True)
class SdpaKernel(Kernel):
    causal: bool

    def __call__(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, enable_gqa=q.shape[1] != k.shape[1])


def dense_kernel(pattern, n: int, device, dtype) -> SdpaKernel:
    return SdpaKernel(n=n, executed_pairs=n * n, causal=False)


def causal_kernel(pattern, n: int, device, dtype) -> SdpaKernel:
    return SdpaKernel(n=n, executed_pairs=n * (n + 1) // 2, causal=True)
