"""`eager`: the seed's maths with the mask built once, vectorized (QK^T, masked_fill, softmax, @V)."""

from __future__ import annotations

import torch

from sparsebench.impls.base import Impl, Prepared, default_scale


class EagerImpl(Impl):
    name = "eager"
    description = "dense n x n scores, mask built once; on `dense` the Standard Transformer"

    def prepare(self, pattern, n, device, dtype) -> Prepared[torch.Tensor]:
        mask = None if pattern.name == "dense" else pattern.dense_mask(n, device)  # (N, N) bool
        return Prepared(pattern, n, state=mask, executed_pairs=n * n)

    def forward(self, q, k, v, prep: Prepared[torch.Tensor]):
        scores = torch.matmul(q, k.transpose(-2, -1)) * default_scale(q.shape[-1])  # (B, H, N, N)
        if prep.state is not None:
            scores = scores.masked_fill(~prep.state, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), v)

    def estimate_bytes(self, pattern, batch, heads, n, head_dim, dtype, mode, device_type="cpu"):
        elt = torch.finfo(dtype).bits // 8
        return n * n + 2 * batch * heads * n * n * elt * (2 if mode == "fwdbwd" else 1)
