"""Decoding against a KV cache: read only the K and V rows that the q_len new queries keep.

Every pattern: the union of the keys kept by the decode rows (positions n - q_len ... n - 1) is found once in
`prepare` from the pattern's row masks (O(q_len * n), never n^2). When it is one contiguous range (dense,
causal, local, sliding_window) the kernel attends to a view of K and V; otherwise (strided, dilated, fixed,
longformer, bigbird) it gathers those rows. One SDPA call with a small (q_len, m) mask over the m rows read
(none when every query keeps every one of them), GQA through `enable_gqa`. A local window of 64 reads about
64 rows of the cache, not n.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparsebench.impls.kernels.core import Kernel, bias_from_mask
from sparsebench.patterns import Pattern
from sparsebench.patterns.decode import decode_mask


@dataclass(kw_only=True)
class DecodeKernel(Kernel):
    """q (B, H, q_len, D) against the rows `start:stop` (or `index`) of k, v (B, KVH, n, D)."""

    q_len: int
    start: int
    stop: int
    index: torch.Tensor | None  # (m,) key rows to gather; None: the contiguous rows start:stop
    bias: torch.Tensor | None  # (q_len, m) additive mask; None: every query keeps every row read

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.shape[-2] != self.q_len or k.shape[-2] != self.n:
            raise ValueError(f"kernel prepared for q_len={self.q_len}, n={self.n}; called with {q.shape[-2]}, "
                             f"{k.shape[-2]}")
        if self.index is None:
            k, v = k[:, :, self.start:self.stop], v[:, :, self.start:self.stop]  # views: no copy
        else:
            k, v = k.index_select(2, self.index), v.index_select(2, self.index)  # (B, KVH, m, D)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias, enable_gqa=q.shape[1] != k.shape[1])


def decode_kernel(pattern: Pattern, n: int, q_len: int, device: torch.device, dtype: torch.dtype) -> DecodeKernel:
    keep = decode_mask(pattern, n, q_len, device)  # (q_len, n)
    rows = keep.any(dim=0).nonzero().flatten()  # the key rows some query keeps, in order
    start, stop = int(rows[0]), int(rows[-1]) + 1
    contiguous = len(rows) == stop - start
    sub = keep[:, start:stop] if contiguous else keep[:, rows]  # (q_len, m)
    return DecodeKernel(n=n, executed_pairs=q_len * sub.shape[1], kv_rows=sub.shape[1], q_len=q_len,
                        start=start, stop=stop, index=None if contiguous else rows,
                        bias=None if bool(sub.all()) else bias_from_mask(sub, dtype))
