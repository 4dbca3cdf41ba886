"""Accuracy: the error against an exact float64 reference on sampled query rows (O(rows * n) memory).

`rel_err` = max |out - ref| / max |ref| over the sampled rows: the largest error in units of the output's
largest value. It is scale-aware where an absolute tolerance is not (dense attention at n = 32768 has outputs
of about 0.04, under bfloat16's old absolute tolerance of 0.03, so an all-zero output passed); unlike an
element-wise relative error it does not blow up on the many outputs near zero, and unlike a normwise
(Frobenius) error it is not diluted when one row of many is wrong. An all-zero output has rel_err 1, an output
scaled by s has |1 - s|. The tolerances per dtype come from the measured errors of the built-in implementations
(scripts/tolerance_study.py; docs/accuracy/README.md).
"""

from __future__ import annotations

import torch

from sparsebench.patterns import Pattern

# rel_err allowed per dtype for the forward output, for unit-variance random q, k, v. The largest rel_err of the
# built-in implementations (all patterns, n = 256 ... 16384 on CPU; docs/accuracy/README.md) is 3x below these in
# bfloat16 and float16 and 48x or more below in float32; an all-zero output (1.0) and a 0.75x output (0.25) are
# 8x and more above.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}
# grad_err allowed per dtype (the worst of dQ, dK, dV, each max abs error over max |reference|): the built-ins'
# largest is 2.8-2.9x below in bfloat16 and float16, 45x or more in float32; a gradient scaled by 0.9 (0.1) is
# 2.5x above in bfloat16.
GRAD_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 4e-2, torch.float16: 5e-3}


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
    batch, heads, _, dim = q.shape
    outs = [(probs @ v64).view(batch, heads, -1, dim) for _, probs, v64 in row_probs(q, k, v, pattern, rows, chunk)]
    return torch.cat(outs, dim=-2)


def row_probs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, rows: torch.Tensor,
              chunk: int = 8):
    """For each chunk of `rows`: (its row indices, the float64 attention probabilities (B, KVH, rep, r, n),
    V in float64 (B, KVH, 1, n, D)): the softmax of the exact masked scores, chunk by chunk (O(chunk * n))."""
    (batch, heads, length, dim), (kv_heads, n) = q.shape, k.shape[1:3]
    rep, scale = heads // kv_heads, dim ** -0.5
    k64, v64 = k.detach().double()[:, :, None], v.detach().double()[:, :, None]  # (B, KVH, 1, n, D)
    for start in range(0, len(rows), chunk):
        idx = rows[start:start + chunk].to(q.device)
        qr = q.detach()[..., idx, :].double().view(batch, kv_heads, rep, len(idx), dim)
        scores = qr @ k64.transpose(-2, -1) * scale  # (B, KVH, rep, r, n)
        mask = pattern.rows_mask(idx + (n - length), n, q.device)  # (r, n), or a selection's (B, Hs, r, n)
        if mask.dim() == 4:  # per batch and head (Hs is H or 1): onto the (B, KVH, rep) head layout
            mask = mask.reshape(mask.shape[0], *((kv_heads, rep) if mask.shape[1] > 1 else (1, 1)), *mask.shape[2:])
        scores = scores.masked_fill(~mask, float("-inf"))
        yield idx, torch.softmax(scores, dim=-1), v64


def relative(err: float, scale: float) -> float:
    """err / scale; 0 when both are 0, NaN (over any tolerance, an empty cell) when only the scale is."""
    if scale > 0:
        return err / scale
    return 0.0 if err == 0 else float("nan")


def output_errors(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
                  rows: torch.Tensor | None = None) -> tuple[float, float]:
    """(max_abs_err, rel_err) of `out` on sampled query rows against the float64 reference."""
    rows = sample_rows(q.shape[-2]) if rows is None else rows
    ref = reference_rows(q, k, v, pattern, rows)
    err = float((out.detach()[..., rows.to(out.device), :].double() - ref).abs().max())
    return err, relative(err, float(ref.abs().max()))


def max_abs_err(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
                rows: torch.Tensor | None = None) -> float:
    return output_errors(out, q, k, v, pattern, rows)[0]
