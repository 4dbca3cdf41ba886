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
    top_token_indices,
)

# The block size of a token selection's layout (the blocks a block-sparse kernel or flex visits). Measured on
# --inputs structured at n = 8192 (topk 2048): the key blocks that 16 to 128 neighbouring queries keep cover
# 100-102% of their causal keys at blocks of 16, 64 or 128 alike (84-98% with single keys): no block size
# shrinks the union there, so the layout keeps flex's 128; the token kernel visits keys, not these blocks,
# except to gather a chunk's kept blocks where they are few (kernels/selected_tokens.py).
LAYOUT_BLOCK = 128
BLOCK_SHIFT = LAYOUT_BLOCK.bit_length() - 1  # a power of two: key // LAYOUT_BLOCK = key >> BLOCK_SHIFT
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
        """Query rows t < topk keep every key s <= t (no score needed); the others, in chunks of rows, score
        their causal keys (the keys past a row, inside the chunk's last square, set to -inf) and keep their
        top `topk` by `top_token_indices` (a sampled threshold, then the exact rule on the keys above it)."""
        B, H, L, _ = q.shape
        n = k.shape[2]
        kept = min(self.topk, n)
        nb = -(-n // LAYOUT_BLOCK)
        indices = torch.empty(B, 1, L, kept, dtype=torch.int64, device=q.device)  # every row written below
        # each row's key blocks (then the union per block of rows: the layout), filled chunk by chunk
        row_blocks = torch.zeros(B, -(-L // LAYOUT_BLOCK) * LAYOUT_BLOCK, nb, dtype=torch.bool, device=q.device)
        keys = torch.arange(n, device=q.device)
        every = min(L, kept)  # rows t < kept have at most `kept` causal keys: they keep them all
        if every:
            rows = torch.arange(every, device=q.device)
            indices[:, 0, :every] = torch.where(keys[None, :kept] <= rows[:, None], keys[None, :kept], -1)
            row_blocks[:, :every] = (keys[None, ::LAYOUT_BLOCK] <= rows[:, None])[:, :nb]
        step = max(1, CHUNK_ENTRIES // max(1, B * n))
        with torch.no_grad():
            ki = self.index_keys(k, H) if every < L else None
            for start in range(every, L, step):
                rows = torch.arange(start, min(L, start + step), device=q.device)
                upto = int(rows[-1]) + 1  # causal: no row of the chunk keeps a key past its last row
                scores = self.index_scores(q, k, rows, upto, ki)  # (B, r, upto)
                scores[:, :, start:].masked_fill_(torch.ones(len(rows), len(rows), dtype=torch.bool,
                                                             device=q.device).triu(1), float("-inf"))
                top = top_token_indices(scores.view(B * len(rows), upto), kept).view(B, len(rows), kept)
                indices[:, 0, start: start + len(rows)] = top
                row_blocks[:, start: start + len(rows)].scatter_(-1, top >> BLOCK_SHIFT, True)  # // is slow
        layout = row_blocks.view(B, 1, -1, LAYOUT_BLOCK, nb).any(dim=3)
        return Selection(n=n, block=LAYOUT_BLOCK, layout=layout, causal=True, indices=indices)
