"""Gathered columns: `strided` (every s-th key plus self) and `fixed` (own block plus summary columns).

A set of key columns shared by many queries is one dense attention against a strided view or a small
gathered copy of K and V; the per-row extras (self for strided, the own block for fixed) are separate
parts, merged through their logsumexp. The unmasked part of each runs on a fused kernel where torch has
one (`attend_merge`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sparsebench.impls.kernels.core import (
    NEG_LSE,
    Kernel,
    Traits,
    attend,
    attend_merge,
    bias_from_mask,
    pad_rows,
    per_device,
)

# Query rows per chunk of fixed's summary part, by device type: a chunk attends to the columns its last block
# needs, so smaller chunks waste fewer pairs but make more calls. 1024 is the CPU's; the CUDA value is
# provisional until measured on a GPU.
CHUNK_ROWS = {"cpu": 1024, "cuda": 1024}


@dataclass(kw_only=True)
class StridedKernel(Kernel):
    """strided: the ceil(n/s) columns k = 0, s, 2s, ... for every row, plus the self key when q mod s != 0.

    Work: n * ceil(n/s) pairs for the columns and n dot products for the self term.
    """

    stride: int
    self_extra: torch.Tensor  # (n,) bool: the self key is not already a column

    def run(self, q, k, v, inputs):
        s = self.stride
        # The self term is a single key per row: its score is the row-wise dot product q . k, reduced in
        # float32 by vecdot; no float32 copies of q and k (in half precision the score is rounded to it, an
        # error of ~2^-9 relative in one key's weight among N/s).
        score = torch.linalg.vecdot(q, k).float() / math.sqrt(q.shape[-1])  # (G, N)
        self_lse = score.masked_fill(~self.self_extra, NEG_LSE)
        return attend_merge(q, k[:, ::s], v[:, ::s], backend=inputs.backend(masked=False, merged=True),
                            other=(v, self_lse))


# Columns merged with the self term through their lse on a fused kernel; on CUDA in float32 (no fused kernel
# there) on the chunked matmul path. Every query row shares the gathered columns.
STRIDED = Traits(private_ops=lambda device_type, mode: True,
                 keeps_scores=lambda device_type, dtype, mode: device_type == "cuda" and dtype == torch.float32,
                 all_rows_share=True)
# fixed's summary columns run on the chunked matmul path, except in CPU inference.
FIXED = Traits(private_ops=lambda device_type, mode: True,
               keeps_scores=lambda device_type, dtype, mode: mode == "fwdbwd" or device_type == "cuda",
               all_rows_share=True)


def strided_kernel(pattern, n: int, device, dtype) -> StridedKernel:
    s = pattern.stride
    extra = torch.arange(n, device=device) % s != 0
    return StridedKernel(n=n, executed_pairs=n * -(-n // s) + n, stride=s, self_extra=extra)


@dataclass(kw_only=True)
class FixedKernel(Kernel):
    """fixed: (same block of `length` keys, or a summary column k mod length >= length - c) and k <= q.

    Two disjoint parts per row:
    - own block: causal attention inside each block (the blocks run as extra heads);
    - summary columns of the *earlier* blocks: a gathered (nb - 1) * c column copy of K and V. Block i
      sees the first i*c of them, so rows go in chunks of `chunk_blocks` blocks that each attend only to
      the columns their last block needs (about half of the rectangle).
    The chunk masks are all views of one `summary_bias`: counted from the right end of a chunk's
    columns, the mask depends only on a row's block within the chunk.
    """

    length: int
    summary: int
    chunk_blocks: int  # query blocks per chunk of the summary part
    summary_bias: torch.Tensor  # (chunk_blocks * size, (nb - 1) * c) additive, right-aligned block-causal mask

    def run(self, q, k, v, inputs):
        G, N, D = q.shape
        size, c, per_chunk = self.length, self.summary, self.chunk_blocks
        nb = -(-N // size)
        qp, kp, vp = (pad_rows(x, 0, nb * size - N) for x in (q, k, v))  # (G, nb*size, D)
        # Own block, causal: padded keys sit after every real query of the last block, so k <= q hides them.
        own = tuple(x.view(G, nb, size, D) for x in (qp, kp, vp))  # the blocks run as extra heads
        if nb == 1:
            own_backend = inputs.backend(masked=False, merged=False)
            return attend_merge(*own, backend=own_backend, causal=True).reshape(G, size, D)[:, :N]
        summary_backend = inputs.backend(masked=True, merged=True)
        # Summary columns of blocks 0 .. nb-2 (those of the last block are only seen by its own rows).
        ks, vs = (x.view(G, nb, size, D)[:, : nb - 1, size - c:].reshape(G, (nb - 1) * c, D) for x in (kp, vp))
        outs, lses = [], []
        for first in range(0, nb, per_chunk):
            blocks = min(nb, first + per_chunk) - first
            cols = (first + blocks - 1) * c  # the summary columns the chunk's last block sees
            rows = slice(first * size, (first + blocks) * size)
            if cols == 0:  # only block 0: no earlier summary column
                outs.append(qp.new_zeros(G, blocks * size, D))
                lses.append(qp.new_full((G, blocks * size), NEG_LSE, dtype=torch.float32))
                continue
            bias = self.summary_bias[(per_chunk - blocks) * size:, self.summary_bias.shape[1] - cols:]
            out, lse = attend(qp[:, rows], ks[:, :cols], vs[:, :cols], bias, backend=summary_backend)
            outs.append(out)
            lses.append(lse)
        summary = (torch.cat(outs, dim=1).view(G, nb, size, D), torch.cat(lses, dim=1).view(G, nb, size))
        own_backend = inputs.backend(masked=False, merged=True)
        return attend_merge(*own, backend=own_backend, other=summary, causal=True).reshape(G, nb * size, D)[:, :N]


def fixed_kernel(pattern, n: int, device, dtype) -> FixedKernel:
    size, c = pattern.length, pattern.summary
    nb = -(-n // size)
    per_chunk = max(1, per_device(CHUNK_ROWS, device.type) // size)
    # Row r (block r // size of its chunk) keeps the column at distance e from the right end of the chunk's
    # columns iff e > (per_chunk - 1 - r // size) * c: the summary columns of the blocks before its own.
    cols = (nb - 1) * c
    dist = cols - torch.arange(cols, device=device)[None, :]  # (1, cols): e = 1 .. cols
    row_block = torch.arange(per_chunk * size, device=device)[:, None] // size
    bias = bias_from_mask(dist > (per_chunk - 1 - row_block) * c, dtype)
    return FixedKernel(n=n, executed_pairs=fixed_pairs(n, size, c, per_chunk), length=size, summary=c,
                       chunk_blocks=per_chunk, summary_bias=bias)


def fixed_pairs(n: int, size: int, c: int, per_chunk: int) -> int:
    """Pairs fixed computes: causal own blocks, and per chunk of query blocks the summary columns its last
    block sees, for every (padded) row of the chunk."""
    nb = -(-n // size)
    # own blocks: the flash kernel skips keys above the diagonal (the matmul path computes whole blocks)
    pairs = nb * size * (size + 1) // 2
    for first in range(0, nb, per_chunk) if nb > 1 else ():
        blocks = min(nb, first + per_chunk) - first
        pairs += blocks * size * (first + blocks - 1) * c
    return pairs
