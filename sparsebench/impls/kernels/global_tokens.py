"""Band plus globals: `longformer`; gathered blocks: `bigbird`. Both have global rows that see every key.

Global rows are one small dense SDPA (see `Kernel.global_rows`). The other rows see a few key sets that
a blocked kernel handles: the g global columns plus a band (longformer) or a gathered list of key blocks
per query block (bigbird).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsebench.impls.kernels.band import Band
from sparsebench.impls.kernels.core import Kernel, Traits, attend_merge, attend_out, bias_from_mask, pad_rows

# longformer's band and global parts merge through their lse on a fused kernel in CPU inference only; on CUDA
# in float32 on the chunked matmul path.
LONGFORMER = Traits(private_ops=lambda device_type, mode: device_type == "cpu" and mode == "fwd",
                    keeps_scores=lambda device_type, dtype, mode: device_type == "cuda" and dtype == torch.float32)
# bigbird gathers its neighbour, global and random key blocks for every query block.
BIGBIRD = Traits(gathered=lambda pattern: 3 + pattern.global_blocks + pattern.random_blocks)


@dataclass(kw_only=True)
class LongformerKernel(Kernel):
    """longformer: |q - k| <= w//2, or q < g, or k < g.

    Rows q >= g see two disjoint key sets, the g global keys and the band restricted to k >= g:
    - where a merged band runs on the CPU flash kernel (CPU inference): the band with its mask and the global
      keys (a fused kernel) merged through their lse;
    - elsewhere a merged band would run on the matmul path (its scores kept): one masked attention per query
      block over the global keys followed by the block's band window instead (no merge, so SDPA's fused
      backward applies), at the price of copying the global keys into every block's window (slower than the
      merge in CPU inference, which therefore keeps it).
    Rows q < g are global rows (dense).
    """

    band: Band | None  # None when every row is global
    bias: torch.Tensor | None = None  # (blocks, block, n_global + width): the global keys, then the band's bias

    def run(self, q, k, v, inputs):
        n_global, band = self.global_rows, self.band
        if n_global == 0:
            return band(q, k, v, inputs.backend(masked=True, merged=False))
        band_backend = inputs.backend(masked=True, merged=True)
        if band_backend == "cpu_flash":
            out, lse = band.with_lse(q, k, v, band_backend)  # rows < n_global are dropped
            globals_backend = inputs.backend(masked=False, merged=True)
            return attend_merge(q[:, n_global:], k[:, :n_global], v[:, :n_global], backend=globals_backend,
                                other=(out[:, n_global:], lse[:, n_global:]))
        rows, N, D = q.shape
        kw, vw = (torch.cat([x[:, None, :n_global].expand(rows, band.blocks, n_global, D), band.key_windows(x)],
                            dim=2) for x in (k, v))  # (rows, blocks, n_global + width, D)
        out = attend_out(band.query_blocks(q), kw, vw, self.bias[None],
                         backend=inputs.backend(masked=True, merged=False))
        return out.reshape(rows, -1, D)[:, n_global:N]


def longformer_kernel(pattern, n: int, device, dtype) -> LongformerKernel:
    half, n_global = pattern.window // 2, pattern.global_tokens
    if n_global >= n:
        return LongformerKernel(n=n, executed_pairs=n * n, global_rows=n, band=None)
    band = Band.build(n, -half, half, n_global, device, dtype)
    if n_global == 0:
        return LongformerKernel(n=n, executed_pairs=band.pairs, band=band)
    bias = torch.cat([band.bias.new_zeros(band.blocks, band.block, n_global), band.bias], dim=-1)
    pairs = band.pairs + band.blocks * band.block * n_global + n_global * n
    return LongformerKernel(n=n, executed_pairs=pairs, global_rows=n_global,
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

    def run(self, q, k, v, inputs):
        rows, N, D = q.shape
        b = self.block
        nb = -(-N // b)
        n_global = nb - self.index.shape[0]  # global blocks
        qp, kp, vp = (pad_rows(x, 0, nb * b - N).view(rows, nb, b, D) for x in (q, k, v))
        kg, vg = (x.index_select(1, self.index.flatten()).view(rows, nb - n_global, -1, D)
                  for x in (kp, vp))  # (rows, nb - n_global, m*b, D)
        out = attend_out(qp[:, n_global:], kg, vg, self.bias[None],
                         backend=inputs.backend(masked=True, merged=False))  # (rows, nb - n_global, b, D)
        return out.reshape(rows, (nb - n_global) * b, D)[:, : N - n_global * b]


def bigbird_kernel(pattern, n: int, device, dtype) -> BigBirdKernel:
    b, n_global = pattern.block, pattern.global_blocks
    table = pattern.block_table(n)  # (nb, nb) bool, nb = ceil(n / b): tiny next to n^2
    nb = table.shape[0]
    if nb <= n_global:
        return BigBirdKernel(n=n, executed_pairs=n * n, global_rows=n, block=b,
                             index=torch.zeros(0, 0, dtype=torch.int64), bias=torch.zeros(0))
    kept = table[n_global:]  # (nb - n_global, nb)
    counts = kept.sum(1, keepdim=True)
    m = int(counts.max())
    # Kept block indices first (in order), then padding slots pointing at block 0.
    order = torch.sort(kept.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :m]
    slot_ok = torch.arange(m)[None, :] < counts  # (nb - n_global, m)
    key_pos = order[:, :, None] * b + torch.arange(b)[None, None, :]  # (nb - n_global, m, b)
    keep = (slot_ok[:, :, None] & (key_pos < n)).reshape(nb - n_global, 1, m * b)
    index = torch.where(slot_ok, order, 0)
    pairs = (nb - n_global) * b * m * b + n_global * b * n
    return BigBirdKernel(n=n, executed_pairs=pairs, global_rows=n_global * b, largest_temp=m, block=b,
                         index=index.to(device), bias=bias_from_mask(keep.to(device), dtype))
