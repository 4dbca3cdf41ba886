"""`sdpa`: torch's scaled_dot_product_attention; flash/fused for dense and causal, a bool mask otherwise."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparsebench.impls.base import Impl, Prepared


@dataclass(frozen=True)
class SdpaState:
    """How SDPA is called: plain (dense), is_causal, or with a boolean mask."""

    causal: bool = False
    mask: torch.Tensor | None = None  # (N, N) bool, True = kept


class SdpaImpl(Impl):
    name = "sdpa"
    description = "F.scaled_dot_product_attention: is_causal for causal, boolean attn_mask for the rest"

    def prepare(self, pattern, n, device, dtype) -> Prepared[SdpaState]:
        if pattern.name == "dense":
            return Prepared(pattern, n, state=SdpaState(), executed_pairs=n * n)
        if pattern.name == "causal":
            # The flash kernels skip key blocks above the diagonal: about half the pairs.
            return Prepared(pattern, n, state=SdpaState(causal=True), executed_pairs=n * (n + 1) // 2)
        return Prepared(pattern, n, state=SdpaState(mask=pattern.dense_mask(n, device)), executed_pairs=n * n)

    def forward(self, q, k, v, prep: Prepared[SdpaState]):
        state = prep.state
        return F.scaled_dot_product_attention(q, k, v, attn_mask=state.mask, is_causal=state.causal)

    def estimate_bytes(self, pattern, batch, heads, n, head_dim, dtype, mode, device_type="cpu"):
        elt = torch.finfo(dtype).bits // 8
        io = 4 * batch * heads * n * head_dim * elt
        if pattern.name in ("dense", "causal"):
            return io * (3 if mode == "fwdbwd" else 1)
        # the bool mask, and in the worst case a math-path fallback that materialises scores
        return n * n + io * 3
