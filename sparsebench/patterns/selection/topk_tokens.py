"""topk_tokens: DSA-style top-k keys per query token from a cheap indexer (one key set per token, all heads)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from sparsebench.errors import PatternError
from sparsebench.patterns.base import positive
from sparsebench.patterns.selection.base import (
    CHUNK_ENTRIES,
    Selection,
    SelectionPattern,
    expand_heads,
    keep_top_tokens,
)

LAYOUT_BLOCK = 128  # the block size of a token selection's layout (the blocks a block-sparse kernel visits)
PROJECTION_SEED = 0  # the indexer's projection is fixed: the same P for every run


def projection(head_dim: int, index_dim: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(head_dim, index_dim) float32: torch.randn(head_dim, index_dim, generator=torch.Generator().manual_seed(seed))
    / sqrt(index_dim), drawn on the CPU (the same matrix on every device)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(head_dim, index_dim, generator=gen) / math.sqrt(index_dim)).to(device)


@dataclass(frozen=True)
class TopkTokens(SelectionPattern):
    """Top-k keys per query token by an indexer score, causal; one key set per token shared by all heads (DSA).

    Exact rule, for each batch b: P = projection(D, index_dim, PROJECTION_SEED = 0) (see `projection`); the indexer
    score of query position t for key position s is I[t, s] = sum over heads h of (q[b, h, t] P) . (k[b, h', s] P)
    with h' = h // (H / KVH), in float32. Query t keeps the min(topk, t + 1) keys s <= t of highest I[t, s],
    ties to the lower s. Every head of token t attends to those keys.
    `topk` <= 0 is refused; topk >= n at a length is refused for that length (it would keep every causal key).
    """

    name: ClassVar[str] = "topk_tokens"
    doc: ClassVar[str] = "DSA-style: top-k keys per token by a seeded low-dim indexer, causal, shared by heads"
    topk: int = 2048
    index_dim: int = 32

    def check_params(self) -> None:
        positive(self, "topk", "index_dim")

    def validate(self, n: int) -> None:
        super().validate(n)
        if self.topk >= n:
            raise PatternError(f"{self.name}: topk={self.topk} keeps every causal key at n={n}: that is causal "
                               f"attention; use topk < {n}")

    @property
    def is_causal(self) -> bool:
        return True

    def budget(self, n: int) -> int:
        return min(n, self.topk) * n

    def index_scores(self, q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, keys: int | None = None,
                     ki: torch.Tensor | None = None) -> torch.Tensor:
        """(B, len(rows), keys) float32 indexer scores of the given query rows against the first `keys` keys
        (all n by default); `ki`: the keys' projection (`index_keys`), when already made."""
        B, H = q.shape[:2]
        P = projection(q.shape[-1], self.index_dim, PROJECTION_SEED, q.device)
        qi = (q.detach()[:, :, rows].float() @ P).transpose(1, 2).reshape(B, len(rows), -1)  # (B, r, H * I)
        ki = self.index_keys(k, H) if ki is None else ki
        return qi @ ki[:, :keys].transpose(1, 2)  # the sum over heads of each head's I-dim dot product

    def index_keys(self, k: torch.Tensor, heads: int | None = None) -> torch.Tensor:
        """(B, n, H * index_dim) float32: every key's projection, repeated per query head."""
        P = projection(k.shape[-1], self.index_dim, PROJECTION_SEED, k.device)
        ki = expand_heads(k.detach().float() @ P, heads or k.shape[1])
        return ki.transpose(1, 2).reshape(k.shape[0], k.shape[2], -1).contiguous()

    def select(self, q: torch.Tensor, k: torch.Tensor, cache: dict | None = None) -> Selection:
        B, H, L, _ = q.shape
        n = k.shape[2]
        kept = min(self.topk, n)
        indices = torch.full((B, 1, L, kept), -1, dtype=torch.int64, device=q.device)
        keys = torch.arange(n, device=q.device)
        step = max(1, CHUNK_ENTRIES // max(1, B * n))
        with torch.no_grad():
            ki = self.index_keys(k, H)
            for start in range(0, L, step):
                rows = torch.arange(start, min(L, start + step), device=q.device)
                upto = int(rows[-1]) + 1  # causal: no row of the chunk keeps a key past its last row
                if upto <= self.topk:  # every row keeps all its keys
                    keep = (keys[None, None, :upto] <= rows[None, :, None]).expand(B, -1, -1)
                else:
                    scores = self.index_scores(q, k, rows, upto, ki)
                    keep = keep_top_tokens(scores, keys[None, :upto] <= rows[:, None], self.topk)
                # kept keys in ascending order, then padding: each kept key goes to slot (kept keys before it)
                slot = torch.where(keep, keep.cumsum(dim=-1) - 1, kept)  # not kept: a dropped extra slot
                out = torch.full((B, len(rows), kept + 1), -1, dtype=torch.int64, device=q.device)
                out.scatter_(-1, slot, keys[:upto].expand_as(slot))
                indices[:, 0, start: start + len(rows)] = out[..., :kept]
        nb = -(-n // LAYOUT_BLOCK)
        layout = torch.zeros(B, 1, -(-L // LAYOUT_BLOCK), nb + 1, dtype=torch.bool, device=q.device)
        blocks = torch.where(indices < 0, nb, indices // LAYOUT_BLOCK)  # padding to a dropped extra column
        query_blocks = (torch.arange(L, device=q.device) // LAYOUT_BLOCK)[None, None, :, None].expand_as(blocks)
        layout[torch.arange(B)[:, None, None, None], 0, query_blocks, blocks] = True
        return Selection(n=n, block=LAYOUT_BLOCK, layout=layout[..., :nb], causal=True, indices=indices)
