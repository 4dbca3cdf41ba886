"""Band plus globals: `longformer`; gathered blocks: `bigbird`. Both have global rows that see every key.

Global rows are one small dense SDPA (see `Kernel.global_rows`). The other rows see a few key sets that
a blocked kernel handles: the g global columns plus a band (longformer) or a gathered list of key blocks
per query block (bigbird).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsebench.impls.structured_kernels.band import Band
from sparsebench.impls.structured_kernels.core import Kernel, attend_merge, attend_out, bias_from_mask, pad_rows


@dataclass(kw_only=True)
class LongformerKernel(Kernel):
    """longformer: |q - k| <= w//2, or q < g, or k < g.

    Rows q >= g see two disjoint key sets, the g global keys and the band restricted to k >= g:
    - CPU inference: the band (flash with its mask) and the global keys (flash) merged through their lse;
    - with autograd or on CUDA: one masked attention per query block over the global keys followed by the
      block's band window (no merge, so SDPA's fused backward applies), at the price of copying the global
      keys into every block's window (slower than the merge in CPU inference, which therefore keeps it).
    Rows q < g are global rows (dense).
    """

    band: Band | None  # None when every row is global
    bias: torch.Tensor | None = None  # (blocks, block, g + width): the global keys, then the band's bias

    def run(self, q, k, v, flash):
        g, band = self.global_rows, self.band
        if g == 0:
            return band(q, k, v)
        if flash:
            out, lse = band.with_lse(q, k, v, flash)  # rows < g are dropped
            return attend_merge(q[:, g:], k[:, :g], v[:, :g], other=(out[:, g:], lse[:, g:]), flash=flash)
        G, N, D = q.shape
        kw, vw = (torch.cat([x[:, None, :g].expand(G, band.blocks, g, D), band.key_windows(x)], dim=2)
                  for x in (k, v))  # (G, blocks, g + width, D)
        out = attend_out(band.query_blocks(q), kw, vw, self.bias[None])
        return out.reshape(G, -1, D)[:, g:N]


def longformer_kernel(pattern, n: int, device, dtype) -> LongformerKernel:
    half, g = pattern.window // 2, pattern.global_tokens
    if g >= n:
        return LongformerKernel(n=n, executed_pairs=n * n, global_rows=n, band=None)
    band = Band.build(n, -half, half, g, device, dtype)
    if g == 0:
        return LongformerKernel(n=n, executed_pairs=band.pairs, band=band)
    bias = torch.cat([band.bias.new_zeros(band.blocks, band.block, g), band.bias], dim=-1)
    return LongformerKernel(n=n, executed_pairs=band.pairs + band.blocks * band.block * g + g * n, global_rows=g,
                            largest_temp=-(-bias.shape[-1] // band.block), band=band, bias=bias)


@dataclass(kw_only=True)
class BigBirdKernel(Kernel):
    """bigbird: query block i >= g attends to the key blocks of its table row, gathered into one
    (m * b)-key window per query block (m = the most blocks any row keeps; unused slots and keys past n
    are masked). Global query blocks (i < g) are global rows (dense).
    """

    block: int
    index: torch.Tensor  # (nb - g, m) key block indices per non-global query block
    bias: torch.Tensor  # (nb - g, 1, m * b) additive mask, shared by the rows of a block

    def run(self, q, k, v, flash):
        G, N, D = q.shape
        b = self.block
        nb = -(-N // b)
        g = nb - self.index.shape[0]  # global blocks
        qp, kp, vp = (pad_rows(x, 0, nb * b - N).view(G, nb, b, D) for x in (q, k, v))
        kg, vg = (x.index_select(1, self.index.flatten()).view(G, nb - g, -1, D) for x in (kp, vp))  # (G, nb-g, m*b, D)
        out = attend_out(qp[:, g:], kg, vg, self.bias[None])  # (G, nb-g, b, D)
        return out.reshape(G, (nb - g) * b, D)[:, : N - g * b]


def bigbird_kernel(pattern, n: int, device, dtype) -> BigBirdKernel:
    b, g = pattern.block, pattern.global_blocks
    table = pattern.block_table(n)  # (nb, nb) bool, nb = ceil(n / b): tiny next to n^2
    nb = table.shape[0]
    if nb <= g:
        return BigBirdKernel(n=n, executed_pairs=n * n, global_rows=n, block=b,
                             index=torch.zeros(0, 0, dtype=torch.int64), bias=torch.zeros(0))
    rows = table[g:]  # (nb-g, nb)
    counts = rows.sum(1, keepdim=True)
    m = int(counts.max())
    # Kept block indices first (in order), then padding slots pointing at block 0.
    order = torch.sort(rows.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :m]
    slot_ok = torch.arange(m)[None, :] < counts  # (nb-g, m)
    key_pos = order[:, :, None] * b + torch.arange(b)[None, None, :]  # (nb-g, m, b)
    keep = (slot_ok[:, :, None] & (key_pos < n)).reshape(nb - g, 1, m * b)
    index = torch.where(slot_ok, order, 0)
    pairs = (nb - g) * b * m * b + g * b * n
    return BigBirdKernel(n=n, executed_pairs=pairs, global_rows=g * b, largest_temp=m, block=b,
                         index=index.to(device), bias=bias_from_mask(keep.to(device), dtype))
