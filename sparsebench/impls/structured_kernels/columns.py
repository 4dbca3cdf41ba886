"""Gathered columns: `strided` (every s-th key plus self) and `fixed` (own block plus summary columns).

A set of key columns shared by many queries is one dense attention against a strided view or a small
gathered copy of K and V; the per-row extras (self for strided, the own block for fixed) are separate
parts, merged through their logsumexp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sparsebench.impls.structured_kernels.core import NEG_LSE, Kernel, attend, bias_from_mask, merge, pad_rows


@dataclass(kw_only=True)
class StridedKernel(Kernel):
    """strided: the ceil(n/s) columns k = 0, s, 2s, ... for every row, plus the self key when q mod s != 0.

    Work: n * ceil(n/s) pairs for the columns and n dot products for the self term.
    """

    stride: int
    self_extra: torch.Tensor  # (n,) bool: the self key is not already a column

    def run(self, q, k, v, flash):
        s = self.stride
        cols = attend(q, k[:, ::s], v[:, ::s], flash=flash)  # (G, N, D), (G, N)
        # The self term is a single key per row: its score is the row-wise dot product q . k.
        score = (q.float() * k.float()).sum(-1) / math.sqrt(q.shape[-1])  # (G, N)
        self_lse = score.masked_fill(~self.self_extra, NEG_LSE)
        return merge([cols, (v, self_lse)]).to(q.dtype)


def strided_kernel(pattern, n: int, device, dtype) -> StridedKernel:
    s = pattern.stride
    extra = torch.arange(n, device=device) % s != 0
    return StridedKernel(n=n, executed_pairs=n * -(-n // s) + n, row_copies=6, stride=s, self_extra=extra)


@dataclass(kw_only=True)
class FixedKernel(Kernel):
    """fixed: (same block of l, or a summary column k mod l >= l - c) and k <= q.

    Two disjoint parts per row:
    - own block: causal attention inside each block of l rows (the blocks run as extra heads);
    - summary columns of the *earlier* blocks: a gathered (nb - 1) * c column copy of K and V. Block i
      sees the first i*c of them, so rows go in chunks that each attend only to the columns their last
      block needs (about half of the rectangle), with a block-causal bias per chunk.
    """

    length: int
    summary: int
    chunk_blocks: int  # query blocks per chunk of the summary part
    chunk_bias: list[torch.Tensor]  # per chunk: (rows, columns) additive bias

    def run(self, q, k, v, flash):
        G, N, D = q.shape
        l, c = self.length, self.summary
        nb = -(-N // l)
        qp, kp, vp = (pad_rows(x, 0, nb * l - N) for x in (q, k, v))  # (G, nb*l, D)
        # Own block, causal: padded keys sit after every real query of the last block, so k <= q hides them.
        own_out, own_lse = attend(*(x.view(G, nb, l, D) for x in (qp, kp, vp)), causal=True, flash=flash)
        own = (own_out.reshape(G, nb * l, D), own_lse.reshape(G, nb * l))
        if nb == 1:
            return own[0][:, :N]
        # Summary columns of blocks 0 .. nb-2 (those of the last block are only seen by its own rows).
        ks, vs = (x.view(G, nb, l, D)[:, : nb - 1, l - c:].reshape(G, (nb - 1) * c, D) for x in (kp, vp))
        outs, lses = [], []
        for i, bias in enumerate(self.chunk_bias):
            rows, cols = bias.shape
            start = i * self.chunk_blocks * l
            if cols == 0:  # only block 0: no earlier summary column
                outs.append(qp.new_zeros(G, rows, D))
                lses.append(qp.new_full((G, rows), NEG_LSE, dtype=torch.float32))
                continue
            out, lse = attend(qp[:, start:start + rows], ks[:, :cols], vs[:, :cols], bias, flash=flash)
            outs.append(out)
            lses.append(lse)
        summary = (torch.cat(outs, dim=1), torch.cat(lses, dim=1))
        return merge([own, summary])[:, :N].to(q.dtype)


def fixed_kernel(pattern, n: int, device, dtype) -> FixedKernel:
    l, c = pattern.length, pattern.summary
    nb = -(-n // l)
    chunk_blocks = max(1, 1024 // l)  # ~1024 query rows per summary chunk
    biases, pairs = [], nb * l * (l + 1) // 2  # own blocks: the flash kernel skips keys above the diagonal
    for first in range(0, nb, chunk_blocks) if nb > 1 else ():
        last = min(nb, first + chunk_blocks) - 1
        q_block = torch.arange(first * l, (last + 1) * l, device=device)[:, None] // l
        col_block = torch.arange(last * c, device=device)[None, :] // c
        biases.append(bias_from_mask(col_block < q_block, dtype))  # (rows, last*c)
        pairs += (last + 1 - first) * l * last * c
    return FixedKernel(n=n, executed_pairs=pairs, row_copies=6, length=l, summary=c, chunk_blocks=chunk_blocks,
                       chunk_bias=biases)
