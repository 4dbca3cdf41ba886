"""`seed`: the write-up's attention, reproduced faithfully (Python-loop float mask on every call)."""

from __future__ import annotations

import math

import torch

from sparsebench.impls.base import Impl, Prepared, repeat_kv


def seed_mask(pattern_name: str, seq_len: int, window_size: int = 64, stride: int = 8) -> torch.Tensor:
    """The write-up's `create_sparse_mask`, loops and all; window and stride are its constants."""
    mask = torch.zeros(seq_len, seq_len)
    if pattern_name == "local":
        for i in range(seq_len):
            start = max(0, i - window_size // 2)
            end = min(seq_len, i + window_size // 2)
            mask[i, start:end] = 1
    elif pattern_name == "strided":
        for i in range(seq_len):
            mask[i, ::stride] = 1
            mask[i, i] = 1  # Always attend to self
    return mask


class SeedImpl(Impl):
    name = "seed"
    description = "the write-up's code: dense n x n scores, Python-loop mask rebuilt every call"
    patterns = frozenset({"local", "strided"})
    modes = frozenset({"fwd", "fwdbwd"})  # the write-up's module has no KV cache: no decode

    def forward(self, q, k, v, prep: Prepared):
        pattern = prep.pattern
        mask = seed_mask(pattern.name, q.shape[-2], **_seed_kwargs(pattern)).to(q.device)
        k, v = repeat_kv(q, k, v)  # GQA: the write-up's module has as many K/V heads as query heads
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, N, N)
        scores = scores.masked_fill(mask.unsqueeze(0).unsqueeze(0) == 0, float("-inf"))
        attention_weights = torch.softmax(scores, dim=-1)
        return torch.matmul(attention_weights, v)

    def estimate_bytes(self, pattern, batch, heads, n, head_dim, dtype, mode, device_type="cpu"):
        elt = torch.finfo(dtype).bits // 8
        # float32 mask + scores, masked scores and softmax output; backward keeps them all
        return 4 * n * n + 3 * batch * heads * n * n * elt * (2 if mode == "fwdbwd" else 1)


def _seed_kwargs(pattern) -> dict[str, int]:
    if pattern.name == "local":
        return {"window_size": pattern.window}
    return {"stride": pattern.stride}
