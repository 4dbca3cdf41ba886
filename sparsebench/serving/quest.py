"""quest over a serving batch's paged KV cache: each sequence's query keeps its top-k pages by per-page key bounds.

The rule is patterns/selection/quest.py's, applied to each sequence at its own length (its scoring and its
choice, `page_scores` and `keep_pages`, are called, not copied): the cache's pages are quest's pages, so quest's
`page` must equal the cache's page size (refused before the sweep otherwise). A sequence with at most topk + 1
pages keeps all of them. The page bounds are cache metadata built in `prepare` (setup, as Quest builds them on
append), per sequence in its logical page order; the selection runs inside every timed call, as for
single-length quest.
- `sdpa`: the baseline, the padded dense cache of decode.PaddedDecode with the selection as a boolean key mask;
- `structured`: per sequence and query head, only its kept pages gathered through the page table, one SDPA call.
Both record, from their last call, the kept (q, k) pairs (`extra["nnz"]`) and the rows read (`kv_rows`: the
K/V rows, plus the bounds read, two D-vectors per page as much as one K and V row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparsebench.impls.kernels.core import bias_from_mask
from sparsebench.patterns import Pattern, get_pattern
from sparsebench.serving.base import ServingImpl, ServingPrepared
from sparsebench.serving.batch import ServingBatch, pages_for
from sparsebench.serving.decode import PaddedDecode


@dataclass
class QuestCache:
    """The per-case state: each sequence's page bounds (1, KVH, its pages, 2 D) float32 in logical page order
    (quest's `joined` [max | min]), its page count and last page (B, 1, 1, 1), its length (B,), and the padded
    dense cache of the baseline."""

    bounds: list[torch.Tensor]
    pages: torch.Tensor
    last: torch.Tensor
    lengths: torch.Tensor
    padded: tuple[torch.Tensor, torch.Tensor] | None = None


def page_bounds(pattern: Pattern, batch: ServingBatch) -> QuestCache:
    """Each sequence's page bounds, from its own keys (quest's `page_bounds`: the last page over its own rows)."""
    device, P = batch.q.device, batch.page_size
    counts = [pages_for(n, P) for n in batch.lengths]
    kvh, D = batch.k.shape[0], batch.k.shape[-1]
    bounds = []
    for i, (n, c) in enumerate(zip(batch.lengths, counts)):
        keys = batch.k[:, batch.page_table[i, :c]].view(1, kvh, c * P, D)[:, :, :n]  # its keys, in order (no V)
        bounds.append(pattern.joined(*pattern.page_bounds(keys)))
    pages = torch.tensor(counts, device=device).view(-1, 1, 1, 1)
    lengths = torch.tensor(batch.lengths, device=device)
    return QuestCache(bounds, pages, (lengths.view(-1, 1, 1, 1) - 1) // P, lengths)


def select(pattern: Pattern, q: torch.Tensor, cache: QuestCache) -> torch.Tensor:
    """(B, H, most pages) bool: the pages each sequence's query keeps, per query head."""
    B, H, _, D = q.shape
    kvh, most = cache.bounds[0].shape[1], int(cache.pages.max())
    # the query heads of a key/value head score its bounds as a group (no copy of the bounds per query head); a
    # call per sequence reads only its own pages' bounds (padding them to the most pages read 2.4x as many here)
    grouped = q.view(B, kvh, H // kvh, D)
    scores = torch.full((B, kvh, H // kvh, most), float("-inf"), device=q.device)  # past a sequence's pages: none
    for i, bounds in enumerate(cache.bounds):
        scores[i:i + 1, :, :, :bounds.shape[2]] = pattern.page_scores(grouped[i:i + 1], bounds)
    return pattern.keep_pages(scores, cache.last, cache.pages).view(B, H, -1)


def kept_pairs(layout: torch.Tensor, cache: QuestCache, P: int) -> int:
    """Kept (q, k) pairs per query head summed over the batch: whole kept pages, the last one as far as n."""
    tail = cache.lengths - cache.last.view(-1) * P  # keys in each sequence's last page
    per_head = (layout.sum(dim=-1) - 1) * P + tail[:, None]  # (B, H)
    return int(round(float(per_head.double().mean(dim=1).sum())))


def _record(prep: ServingPrepared, layout: torch.Tensor, cache: QuestCache, P: int, kv_rows: int) -> None:
    prep.extra["nnz"] = kept_pairs(layout, cache, P)
    prep.kv_rows = kv_rows + int(cache.pages.sum())  # + the bounds read


class PaddedQuest(ServingImpl):
    name = "sdpa"
    modes = frozenset({"decode"})

    def prepare(self, pattern: Pattern, batch: ServingBatch) -> ServingPrepared:
        dense = PaddedDecode().prepare(get_pattern("dense"), batch)  # the padded cache, built as dense builds it
        cache = page_bounds(pattern, batch)
        cache.padded = dense.state[:2]
        return ServingPrepared(state=(pattern, cache), executed_pairs=dense.executed_pairs, kv_rows=dense.kv_rows,
                               padding_waste=dense.padding_waste)

    def forward(self, batch: ServingBatch, prep: ServingPrepared) -> torch.Tensor:
        pattern, cache = prep.state
        k, v = cache.padded
        B, _, L, _ = k.shape
        layout = select(pattern, batch.q, cache)  # (B, H, pages)
        keys = torch.arange(L, device=k.device)
        mask = layout[..., keys // batch.page_size] & (keys < cache.lengths[:, None, None])  # (B, H, L)
        out = F.scaled_dot_product_attention(batch.q, k, v, attn_mask=mask[:, :, None],
                                             enable_gqa=batch.q.shape[1] != k.shape[1])
        _record(prep, layout, cache, batch.page_size, B * L)
        return out


class PagedQuest(ServingImpl):
    name = "structured"
    modes = frozenset({"decode"})

    def prepare(self, pattern: Pattern, batch: ServingBatch) -> ServingPrepared:
        return ServingPrepared(state=(pattern, page_bounds(pattern, batch)))

    def forward(self, batch: ServingBatch, prep: ServingPrepared) -> torch.Tensor:
        pattern, cache = prep.state
        P, (B, H, _, D) = batch.page_size, batch.q.shape
        kvh, physical_pages = batch.k.shape[:2]
        layout = select(pattern, batch.q, cache)  # (B, H, pages)
        counts = layout.sum(dim=-1)  # (B, H)
        m = int(counts.max())
        # each (sequence, head)'s kept pages in ascending order, then unused slots (masked)
        slots = torch.sort(layout.to(torch.int8), dim=-1, descending=True, stable=True).indices[..., :m]
        physical = batch.page_table.gather(1, slots.reshape(B, -1)).view(B, H, m)
        kv_head = torch.arange(H, device=layout.device) // (H // kvh)
        rows = (kv_head[:, None] * physical_pages + physical).view(-1)  # rows of the cache as (KVH * pages, P, D)
        k, v = (x.view(-1, P, D).index_select(0, rows).view(B, H, m * P, D) for x in (batch.k, batch.v))
        position = slots[..., None] * P + torch.arange(P, device=layout.device)  # (B, H, m, P)
        used = torch.arange(m, device=layout.device) < counts[..., None]
        keep = (used[..., None] & (position < cache.lengths[:, None, None, None])).view(B, H, 1, m * P)
        out = F.scaled_dot_product_attention(batch.q, k, v, attn_mask=bias_from_mask(keep, batch.q.dtype))
        prep.executed_pairs = B * m * P
        # rows read per key/value head: the union of its query heads' kept pages
        union = layout.view(B, kvh, H // kvh, -1).any(dim=2).sum(dim=-1).double().mean(dim=1)
        _record(prep, layout, cache, P, round(float(union.sum()) * P))
        return out
