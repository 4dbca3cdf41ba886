"""The tensors of a serving case: a packed prefill stream, or a decode step over a paged KV cache.

Prefill: the sequences' q, k, v concatenated along the token axis, (1, H, T, D) and (1, KVH, T, D) with
T = sum(lengths); `offsets` are the cumulative lengths (FlashAttention's cu_seqlens).
Decode: one new query per sequence, q (B, H, 1, D), against a cache of pages: k and v (KVH, num_pages, P, D),
sequence i's position p at page `page_table[i, p >> log2(P)]`, slot `p & (P - 1)`. The page table is a random
permutation of the pages, as a server's allocator leaves it after sequences come and go.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ServingBatch:
    lengths: list[int]
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    page_size: int = 0  # decode only
    page_table: torch.Tensor | None = None  # decode: (B, max pages) int64, unused slots 0

    @property
    def decode(self) -> bool:
        return self.page_table is not None

    @property
    def offsets(self) -> list[int]:
        """Each sequence's first position in the packed stream, and the total last (cu_seqlens)."""
        out = [0]
        for n in self.lengths:
            out.append(out[-1] + n)
        return out

    def sequence(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sequence i on its own: q (1, H, L or 1, D), k and v (1, KVH, L, D) (gathered from its pages in decode)."""
        n = self.lengths[i]
        if not self.decode:
            start = self.offsets[i]
            return tuple(x[:, :, start:start + n] for x in (self.q, self.k, self.v))
        pages = self.page_table[i, :pages_for(n, self.page_size)]
        k, v = (x[:, pages].reshape(x.shape[0], -1, x.shape[-1])[None, :, :n] for x in (self.k, self.v))
        return self.q[i:i + 1], k, v


def pages_for(n: int, page_size: int) -> int:
    return -(-n // page_size)


def make_batch(lengths: list[int], heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
               device: torch.device | str, page_size: int = 0, seed: int = 0) -> ServingBatch:
    """Seeded random inputs; with a page size, a decode step over a shuffled paged cache."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen).to(device, dtype)

    if not page_size:
        total = sum(lengths)
        return ServingBatch(lengths, randn(1, heads, total, head_dim), randn(1, kv_heads, total, head_dim),
                            randn(1, kv_heads, total, head_dim))
    counts = [pages_for(n, page_size) for n in lengths]
    physical = torch.randperm(sum(counts), generator=gen)  # a shuffled allocation
    table = torch.zeros(len(lengths), max(counts), dtype=torch.int64)
    start = 0
    for i, c in enumerate(counts):
        table[i, :c] = physical[start:start + c]
        start += c
    q = randn(len(lengths), heads, 1, head_dim)
    k, v = (randn(kv_heads, sum(counts), page_size, head_dim) for _ in range(2))
    return ServingBatch(lengths, q, k, v, page_size, table.to(device))


def contiguous_pages(batch: ServingBatch) -> ServingBatch:
    """The same cache contents with each sequence's pages in order (page table 0, 1, 2, ...): for tests."""
    counts = [pages_for(n, batch.page_size) for n in batch.lengths]
    order = torch.cat([batch.page_table[i, :c] for i, c in enumerate(counts)])
    table = torch.zeros_like(batch.page_table)
    start = 0
    for i, c in enumerate(counts):
        table[i, :c] = torch.arange(start, start + c)
        start += c
    return ServingBatch(batch.lengths, batch.q, batch.k[:, order].clone(), batch.v[:, order].clone(),
                        batch.page_size, table)
