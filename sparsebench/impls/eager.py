"""`eager`: the seed's maths with the mask built once, vectorized (QK^T, masked_fill, softmax, @V)."""

from __future__ import annotations

import torch

from sparsebench.impls.base import Impl, Prepared, default_scale, pattern_mask, repeat_kv


class EagerImpl(Impl):
    name = "eager"
    description = "dense n x n scores, mask built once; on `dense` the Standard Transformer"

    def prepare(self, pattern, n, device, dtype, q_len=None) -> Prepared[torch.Tensor]:
        mask = None if pattern.name == "dense" else pattern_mask(pattern, n, device, q_len)  # (L, N) bool
        return Prepared(pattern, n, state=mask, executed_pairs=(q_len or n) * n, q_len=q_len)

    def forward(self, q, k, v, prep: Prepared[torch.Tensor]):
        k, v = repeat_kv(q, k, v)  # GQA: one K/V head per query head
        scores = torch.matmul(q, k.transpose(-2, -1)) * default_scale(q.shape[-1])  # (B, H, L, N)
        if prep.state is not None:
            scores = scores.masked_fill(~prep.state, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), v)

    def estimate_bytes(self, pattern, batch, heads, n, head_dim, dtype, mode, device_type="cpu"):
        elt = torch.finfo(dtype).bits // 8
        return n * n + 2 * batch * heads * n * n * elt * (2 if mode == "fwdbwd" else 1)
