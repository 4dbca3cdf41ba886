"""Accuracy: max abs error against an exact float64 reference on sampled query rows (O(rows * n) memory)."""

from __future__ import annotations

import torch

from sparsebench.patterns import Pattern

# Max abs error allowed per dtype, for unit-variance random q, k, v.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def sample_rows(n: int, count: int = 64) -> torch.Tensor:
    """Evenly spread query rows, always including the first and last (where windows are clamped)."""
    if n <= count:
        return torch.arange(n)
    return torch.linspace(0, n - 1, count).round().long().unique()


def reference_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, rows: torch.Tensor,
                   chunk: int = 8) -> torch.Tensor:
    """Exact float64 attention output for the given rows of q: (B, H, len(rows), D).

    q: (B, H, L, D); k, v: (B, KVH, n, D) with KVH dividing H (query head h reads key/value head
    h // (H / KVH)). q's rows are the last L positions of the sequence (L = n for a full sequence; fewer in
    decode), so row i is at position n - L + i for the pattern's rule. K and V are never repeated per query
    head: the query heads of one key/value head are a broadcast dimension.
    """
    (batch, heads, length, dim), (kv_heads, n) = q.shape, k.shape[1:3]
    rep, scale = heads // kv_heads, dim ** -0.5
    k64, v64 = k.detach().double()[:, :, None], v.detach().double()[:, :, None]  # (B, KVH, 1, n, D)
    outs = []
    for start in range(0, len(rows), chunk):
        idx = rows[start:start + chunk].to(q.device)
        qr = q.detach()[..., idx, :].double().view(batch, kv_heads, rep, len(idx), dim)
        scores = qr @ k64.transpose(-2, -1) * scale  # (B, KVH, rep, r, n)
        mask = pattern.rows_mask(idx + (n - length), n, q.device)  # (r, n)
        scores = scores.masked_fill(~mask, float("-inf"))
        outs.append((torch.softmax(scores, dim=-1) @ v64).view(batch, heads, len(idx), dim))
    return torch.cat(outs, dim=-2)


def max_abs_err(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
                rows: torch.Tensor | None = None) -> float:
    rows = sample_rows(q.shape[-2]) if rows is None else rows
    ref = reference_rows(q, k, v, pattern, rows)
    return float((out.detach()[..., rows.to(out.device), :].double() - ref).abs().max())
