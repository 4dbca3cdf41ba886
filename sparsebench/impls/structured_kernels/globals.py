"""Band plus globals: `longformer`; gathered blocks: `bigbird`. Both have global rows that see every key.

Global rows are a small dense attention (g rows x n keys). The other rows see a few key sets that a
blocked kernel handles: a band plus the g global columns (longformer) or a gathered list of key blocks
per query block (bigbird).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparsebench.impls.structured_kernels.band import Band
from sparsebench.impls.structured_kernels.core import Kernel, attend, bias_from_mask, merge, pad_rows, use_flash


@dataclass(kw_only=True)
class LongformerKernel(Kernel):
    """longformer: |q - k| <= w//2, or q < g, or k < g.

    Rows q >= g: the band restricted to k >= g, merged with the g global columns (disjoint key sets).
    Rows q < g: dense over all keys, computed apart and written over the first g rows.
    """

    global_tokens: int
    band: Band | None  # None when every row is global

    def __call__(self, q, k, v):
        B, H, N, D = q.shape
        g = self.global_tokens
        if self.band is None:
            return F.scaled_dot_product_attention(q, k, v)
        flash = use_flash(q, k, v)
        band_out, band_lse = self.band(*(x.reshape(B * H, N, D) for x in (q, k, v)), flash)
        out = band_out.reshape(B, H, N, D)
        if g == 0:
            return out
        parts = [(out, band_lse.reshape(B, H, N)), attend(q, k[:, :, :g], v[:, :, :g], flash=flash)]
        rest = merge(parts).to(q.dtype)[:, :, g:]
        return torch.cat([F.scaled_dot_product_attention(q[:, :, :g], k, v), rest], dim=2)


def longformer_kernel(pattern, n: int, device, dtype) -> LongformerKernel:
    half, g = pattern.window // 2, pattern.global_tokens
    if g >= n:
        return LongformerKernel(n=n, executed_pairs=n * n, global_tokens=g, band=None)
    band = Band.build(n, -half, half, g, device, dtype)
    return LongformerKernel(n=n, executed_pairs=band.pairs + 2 * g * n, global_tokens=g, band=band)


@dataclass(kw_only=True)
class BigBirdKernel(Kernel):
    """bigbird: query block i >= g attends to the key blocks of its table row, gathered into one
    contiguous (m * b) key window per query block (m = the most blocks any row keeps; unused slots and
    keys past n are masked). Global query blocks (i < g) see every key: dense, computed apart.
    """

    block: int
    global_blocks: int
    index: torch.Tensor  # (nb - g, m) key block indices per non-global query block
    bias: torch.Tensor  # (nb - g, 1, m * b) additive mask, shared by the rows of a block

    def __call__(self, q, k, v):
        B, H, N, D = q.shape
        b, g = self.block, self.global_blocks
        nb = -(-N // b)
        global_rows = min(N, g * b)
        heads = F.scaled_dot_product_attention(q[:, :, :global_rows], k, v) if global_rows else None
        if nb <= g:
            return heads
        qp, kp, vp = (pad_rows(x, 0, nb * b - N).reshape(B * H, nb, b, D) for x in (q, k, v))
        flat = self.index.flatten()
        kg, vg = (x.index_select(1, flat).view(B * H, nb - g, -1, D) for x in (kp, vp))  # (B*H, nb-g, m*b, D)
        out, _ = attend(qp[:, g:], kg, vg, self.bias[None], flash=use_flash(q, k, v))  # (B*H, nb-g, b, D)
        out = out.reshape(B, H, (nb - g) * b, D)[:, :, : N - global_rows]
        return out if heads is None else torch.cat([heads, out], dim=2)


def bigbird_kernel(pattern, n: int, device, dtype) -> BigBirdKernel:
    b, g = pattern.block, pattern.global_blocks
    table = pattern.block_table(n)  # (nb, nb) bool, nb = ceil(n / b): tiny next to n^2
    nb = table.shape[0]
    rows = table[g:]
    m = int(rows.sum(1).max()) if len(rows) else 0
    # Kept block indices first (in order), then padding slots pointing at block 0.
    order = torch.sort(rows.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :m]
    slot_ok = torch.arange(m)[None, :] < rows.sum(1, keepdim=True)  # (nb-g, m)
    key_pos = order[:, :, None] * b + torch.arange(b)[None, None, :]  # (nb-g, m, b)
    keep = (slot_ok[:, :, None] & (key_pos < n)).reshape(nb - g, 1, m * b)
    index = torch.where(slot_ok, order, 0)
    pairs = (nb - g) * b * m * b + min(n, g * b) * n
    return BigBirdKernel(n=n, executed_pairs=pairs, block=b, global_blocks=g, index=index.to(device),
                         bias=bias_from_mask(keep.to(device), dtype))
