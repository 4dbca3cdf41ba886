"""Attention over a token selection (one key set per query token, shared by the heads: topk_tokens, DSA).

Rows of queries at a time, each row chunk against the keys its rows can keep (causal: keys before the chunk's
last row), with an additive mask made from the selection's indices (0 on a row's kept keys, -inf-like on the
others) shared by every head (a (B, 1, rows, keys) mask that SDPA's fused CPU kernel broadcasts):
- when the chunk's kept keys fall in few key blocks (of `block` positions), those blocks are gathered and the
  rest skipped; otherwise the keys are a view of K and V (nothing copied);
- work is rows x visited keys; it is what a row costs no matter how few of its keys it keeps.

Why not what came before, measured at n = 8192 on `--inputs structured` (topk 2048, 1 thread, loaded machine):
- the union of 128-blocks with per-token masks (gathered_blocks): each query block's gathered key blocks plus
  a pair mask cut out of an n x n dense mask: 8.9 s, against 2.0 s for SDPA with the dense mask; on these
  inputs the union of the key blocks of a query block's tokens is every causal block (51% of all blocks), so it
  did causal attention's work plus a copy of every block per query block and the n x n mask;
- smaller units do not help on these inputs: the union of the exact kept tokens of 16 neighbouring queries is
  already 84% of their causal keys (32 queries: 90%, 128: 98%), so any block formulation does close to causal
  work; only a per-query gather computes the kept pairs alone, and it moves D values per pair computed (about
  137 GB at n = 16384), far more than causal attention's compute costs on this CPU;
- so: causal work on views, the mask built per row chunk from the indices (never n x n), no copy of K or V
  where the chunk's union is dense, a gather of the kept blocks where it is sparse (inputs with locality).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparsebench.impls.base import repeat_kv
from sparsebench.impls.kernels.core import neg_value

MASK_ENTRIES = 1 << 22  # mask entries per row chunk (16 MiB in float32): rows = MASK_ENTRIES // keys
GATHER_SHARE = 0.75  # gather the chunk's kept key blocks when they are at most this share of its causal keys


def token_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor,
                    layout: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """out (B, H, L, D) of each query row over its kept keys (`indices` (B, 1, L, K) int64 positions, -1 =
    padding, each row's first entry a kept key; query row i at position i, keys k <= i only; `layout`
    (B, 1, QB, KB) bool: the key blocks of `block` positions that each block of query rows keeps), and the
    executed (q, k) pairs per batch and head (rows x visited keys, summed over the chunks)."""
    B, H, L, D = q.shape
    n = k.shape[2]
    k, v = repeat_kv(q, k, v)
    neg = neg_value(q.dtype)
    idx = indices[:, 0]  # (B, L, K)
    rows_per = max(block, (MASK_ENTRIES // max(1, n)) // block * block)
    outs, pairs = [], 0
    for start in range(0, L, rows_per):
        end = min(L, start + rows_per)
        upto = min(n, end)  # causal: the chunk's rows keep keys before its last row only
        chunk = idx[:, start:end]  # (B, r, K)
        used = layout[:, 0, start // block: -(-end // block)].any(dim=1).any(dim=0).nonzero().flatten()
        if len(used) * block <= GATHER_SHARE * upto:  # gather the kept blocks; positions map to slots
            pos = (used[:, None] * block + torch.arange(block, device=q.device)).flatten()
            pos = pos[pos < n]
            where = torch.full((n + 1,), -1, dtype=torch.int64, device=q.device)
            where[pos] = torch.arange(len(pos), device=q.device)
            kc, vc = k.index_select(2, pos), v.index_select(2, pos)
            slots = where[chunk]  # padding (-1) reads where[n] = -1
        else:
            kc, vc = k[:, :, :upto], v[:, :, :upto]
            slots = chunk
        width = kc.shape[2]
        bias = torch.full((B, end - start, width), neg, dtype=q.dtype, device=q.device)
        # padding writes the row's first kept key again (every row keeps at least one key, listed first)
        bias.scatter_(-1, torch.where(slots < 0, slots[..., :1], slots), 0.0)
        bias = bias.unsqueeze(1)  # (B, 1, r, width): every head
        outs.append(F.scaled_dot_product_attention(q[:, :, start:end], kc, vc, attn_mask=bias))
        pairs += (end - start) * width
    return torch.cat(outs, dim=2), pairs
