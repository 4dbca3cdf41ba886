"""Batched decode over a paged KV cache: one new query per sequence, each with its own context length.

- `sdpa`: the baseline, a dense cache padded to the longest sequence ((B, KVH, Lmax, D), built in setup, as a
  server without paging keeps it) and one SDPA call with a key mask: it reads every padded row;
- `structured`: gathers, per sequence, only the pages that hold a key its query keeps under the pattern (the
  last pages for local and sliding_window, all of them for dense), through the page table, into
  (B, KVH, m * P, D), and runs one SDPA call masked on the partial pages: it reads m pages per sequence;
- `flex`: FlexAttention over the physical cache as it lies, (1, KVH, pages * P, D), with the B queries as one
  row each and a mask_mod that maps a physical key slot through the page table to its sequence and position
  (attention-gym's paged attention does the same through a converted BlockMask): the BlockMask skips the key
  blocks (of BLOCK_SIZE slots, several pages) that hold no kept key of any query.
The query of sequence i is its position L_i - 1; the pattern's rule is applied at that position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparsebench.impls.kernels.core import bias_from_mask
from sparsebench.patterns import Pattern
from sparsebench.serving.base import ServingImpl, ServingPrepared
from sparsebench.serving.batch import ServingBatch, pages_for


def kept_keys(pattern: Pattern, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n,) bool: the keys that the query at position n - 1 keeps (O(n))."""
    return pattern.rows_mask(torch.tensor([n - 1]), n, device)[0]


class PaddedDecode(ServingImpl):
    name = "sdpa"
    modes = frozenset({"decode"})

    def prepare(self, pattern: Pattern, batch: ServingBatch) -> ServingPrepared:
        lengths, device = batch.lengths, batch.q.device
        B, L = len(lengths), max(lengths)
        keep = torch.zeros(B, L, dtype=torch.bool, device=device)
        caches = [batch.k.new_zeros(B, batch.k.shape[0], L, batch.k.shape[-1]) for _ in range(2)]
        for i, n in enumerate(lengths):
            _, k, v = batch.sequence(i)
            caches[0][i, :, :n], caches[1][i, :, :n] = k[0], v[0]
            keep[i, :n] = kept_keys(pattern, n, device)
        mask = None if bool(keep.all()) else keep[:, None, None, :]  # (B, 1, 1, L)
        return ServingPrepared(state=(caches[0], caches[1], mask), executed_pairs=B * L, kv_rows=B * L,
                               padding_waste=1.0 - sum(lengths) / float(B * L))

    def forward(self, batch: ServingBatch, prep: ServingPrepared) -> torch.Tensor:
        k, v, mask = prep.state
        return F.scaled_dot_product_attention(batch.q, k, v, attn_mask=mask, enable_gqa=batch.q.shape[1] != k.shape[1])


class PagedGather(ServingImpl):
    name = "structured"
    modes = frozenset({"decode"})

    def prepare(self, pattern: Pattern, batch: ServingBatch) -> ServingPrepared:
        P, device = batch.page_size, batch.q.device
        shift = P.bit_length() - 1  # P is a power of two (lengths.check_page_size)
        table = batch.page_table.cpu()
        needed = []  # per sequence: (physical pages holding a kept key, the kept keys over those pages' slots)
        for i, n in enumerate(batch.lengths):
            keep = kept_keys(pattern, n)
            full = torch.zeros(pages_for(n, P) << shift, dtype=torch.bool)
            full[:n] = keep
            pages = full.view(-1, P).any(dim=1).nonzero().flatten()
            needed.append((table[i, pages], full.view(-1, P)[pages].flatten()))
        m = max(len(pages) for pages, _ in needed)
        rows = sum(len(pages) for pages, _ in needed) * P
        if m <= BATCHED_PAGES:  # one call over (B, KVH, m * P, D), padding slots masked
            physical = torch.zeros(len(needed), m, dtype=torch.int64)
            keep = torch.zeros(len(needed), m * P, dtype=torch.bool)
            for i, (pages, slots) in enumerate(needed):
                physical[i, :len(pages)] = pages
                keep[i, :len(slots)] = slots
            bias = bias_from_mask(keep.to(device), batch.q.dtype)[:, None, None, :]  # (B, 1, 1, m * P)
            state = ("batched", physical.flatten().to(device), bias, m)
            rows = len(needed) * m * P
        else:  # a call per sequence over its own pages: no padding to the longest
            state = ("each", [_one_sequence(pages, slots, device, batch.q.dtype) for pages, slots in needed])
        return ServingPrepared(state=state, executed_pairs=rows, kv_rows=rows)

    def forward(self, batch: ServingBatch, prep: ServingPrepared) -> torch.Tensor:
        gqa = batch.q.shape[1] != batch.k.shape[1]
        if prep.state[0] == "batched":
            _, pages, bias, m = prep.state
            k, v = (_gathered(x, pages, len(batch.lengths)) for x in (batch.k, batch.v))
            return F.scaled_dot_product_attention(batch.q, k, v, attn_mask=bias, enable_gqa=gqa)
        out = torch.empty_like(batch.q)
        for i, (pages, kept, bias) in enumerate(prep.state[1]):
            k, v = (_gathered(x, pages, 1)[:, :, :kept] for x in (batch.k, batch.v))
            out[i:i + 1] = F.scaled_dot_product_attention(batch.q[i:i + 1], k, v, attn_mask=bias, enable_gqa=gqa)
        return out


class PagedFlex(ServingImpl):
    name = "flex"
    modes = frozenset({"decode"})

    def prepare(self, pattern: Pattern, batch: ServingBatch) -> ServingPrepared:
        from torch.nn.attention.flex_attention import create_block_mask

        from sparsebench.impls.flex import BLOCK_SIZE

        P, device = batch.page_size, batch.q.device
        kvh, pages, _, D = batch.k.shape
        owner = torch.full((pages,), -1, dtype=torch.int64)  # physical page -> its sequence (-1: none)
        logical = torch.zeros(pages, dtype=torch.int64)  # physical page -> its page number in that sequence
        for i, n in enumerate(batch.lengths):
            physical = batch.page_table[i, :pages_for(n, P)].cpu()
            owner[physical] = i
            logical[physical] = torch.arange(len(physical))
        owner, logical = owner.to(device), logical.to(device)
        lengths = torch.tensor(batch.lengths, device=device)
        rule = pattern.mask_mod_for(max(batch.lengths), device)  # per-sequence rules do not depend on n
        shift = P.bit_length() - 1

        def paged_mask(b, h, q_idx, kv_idx):
            page = kv_idx >> shift
            position = (logical[page] << shift) + (kv_idx & (P - 1))
            mine = owner[page] == q_idx
            return mine & (position < lengths[q_idx]) & rule(b, h, lengths[q_idx] - 1, position)

        B, slots = len(batch.lengths), pages * P
        block_mask = create_block_mask(paged_mask, None, None, B, slots, device=device)
        blocks = int(block_mask.kv_num_blocks.sum())
        if block_mask.full_kv_num_blocks is not None:
            blocks += int(block_mask.full_kv_num_blocks.sum())
        rows = blocks * BLOCK_SIZE  # key rows read per key/value head: every query shares one query block
        k, v = (x.reshape(1, kvh, slots, D) for x in (batch.k, batch.v))  # a view: the cache as it lies
        return ServingPrepared(state=(block_mask, k, v), executed_pairs=rows * B, kv_rows=rows)

    def forward(self, batch: ServingBatch, prep: ServingPrepared) -> torch.Tensor:
        from sparsebench.impls.flex import compiled_flex

        block_mask, k, v = prep.state
        q = batch.q.transpose(0, 2)  # (B, H, 1, D) -> (1, H, B, D): a query row per sequence
        out = compiled_flex()(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])
        return out.transpose(0, 2)


BATCHED_PAGES = 64  # at most this many pages per sequence: one call for the batch; more: a call per sequence


def _gathered(cache: torch.Tensor, pages: torch.Tensor, batch: int) -> torch.Tensor:
    """(KVH, pages, P, D) -> (batch, KVH, len(pages) / batch * P, D): the pages, in order, per sequence."""
    kvh, _, P, D = cache.shape
    return cache.index_select(1, pages).view(kvh, batch, -1, D).transpose(0, 1)


def _one_sequence(pages: torch.Tensor, slots: torch.Tensor, device: torch.device, dtype: torch.dtype):
    """(pages, kept, bias) of one sequence: its slots up to the last kept key, a mask only where the kept keys
    are not all of them (dense and causal keep a prefix: no mask)."""
    kept = int(slots.nonzero().max()) + 1
    bias = None if bool(slots[:kept].all()) else bias_from_mask(slots[:kept].to(device), dtype).view(1, 1, 1, -1)
    return pages.to(device), kept, bias
