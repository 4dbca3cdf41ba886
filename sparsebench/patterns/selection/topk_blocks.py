"""topk_blocks: MoBA / NSA-selection style top-k key blocks per query block, scored against pooled keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from sparsebench.errors import PatternError
from sparsebench.patterns.selection.base import (
    Selection,
    SelectionPattern,
    block_means,
    blocks_param,
    expand_heads,
    keep_top_tokens,
)


@dataclass(frozen=True)
class TopkBlocks(SelectionPattern):
    """Top-k key blocks per query block by mean query . mean key, plus its own block (MoBA / NSA selection).

    Exact rule, for each batch b and head h. Positions are cut into blocks of `block` (the last block may be
    shorter). Query block i's score for key block j is s[i, j] = mean(q rows of block i) . mean(k rows of block
    j) (float32 means over the positions the block has; no scale). The candidates of query block i are the key
    blocks j != i, and with causal=1 only j < i. Query block i keeps its own block i and the min(topk, number of
    candidates) candidates of highest score, ties to the lower j. Inside kept blocks every pair is kept, except
    that with causal=1 only k <= q (which matters in the own, diagonal block only).
    shared=1 (GQA, as NSA selects): the query heads that read one key/value head share one selection, scored by
    the sum of their scores s[i, j] (NSA's importance summed over the heads of a group, Yuan et al. 2025, eq. 10);
    with shared=0 (default) each query head selects for itself.
    `topk` <= 0 is refused; a length where topk reaches every other block (topk >= ceil(n / block) - 1) is
    refused for that length (the selection would keep everything: that is dense or causal attention).
    """

    name: ClassVar[str] = "topk_blocks"
    doc: ClassVar[str] = "per query block, its own block + top-k key blocks by mean q . mean k (MoBA/NSA)"
    block: int = 64
    topk: int = 16
    causal: int = 1
    shared: int = 0
    later_params: ClassVar[dict[str, int]] = {"shared": 0}

    def check_params(self) -> None:
        blocks_param(self, 0)
        if self.shared not in (0, 1):
            raise PatternError(f"{self.name}: shared must be 0 or 1, got {self.shared}")

    def validate(self, n: int) -> None:
        super().validate(n)
        check_topk_blocks(self, n)

    def budget(self, n: int) -> int:
        return min(n, (self.topk + 1) * self.block) * n

    def block_scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(B, H, QB, KB) float32 scores (see the rule)."""
        qm = block_means(q.detach(), self.block)  # (B, H, QB, D)
        km = expand_heads(block_means(k.detach(), self.block), q.shape[1])  # (B, H, KB, D)
        return qm @ km.transpose(-1, -2)

    def select(self, q: torch.Tensor, k: torch.Tensor, cache: dict | None = None) -> Selection:
        with torch.no_grad():
            scores = self.block_scores(q, k)
            if self.shared:  # one score per key/value head: the sum over its query heads, repeated per head
                B, H, QB, KB = scores.shape
                group = H // k.shape[1]
                scores = scores.view(B, -1, group, QB, KB).sum(dim=2).repeat_interleave(group, dim=1)
            return select_blocks(scores, k.shape[2], self.block, self.topk, bool(self.causal))


def select_blocks(scores: torch.Tensor, n: int, block: int, topk: int, causal: bool) -> Selection:
    """The Selection keeping, per query block i, block i and the top-k candidates of `scores` (B, H, QB, KB)."""
    qb, kb = scores.shape[-2:]
    i, j = torch.arange(qb, device=scores.device)[:, None], torch.arange(kb, device=scores.device)[None, :]
    candidates = (j < i) if causal else (j != i)
    # keep_top's set without a stable sort of every row (the sort took half the selection's time at n=16384)
    layout = keep_top_tokens(scores, candidates, topk) | (j == i)
    return Selection(n=n, block=block, layout=layout, causal=causal)


def check_topk_blocks(pattern: SelectionPattern, n: int) -> None:
    blocks = -(-n // pattern.block)
    if pattern.topk >= blocks - 1:
        raise PatternError(f"{pattern.name}: topk={pattern.topk} keeps every block at n={n} ({blocks} blocks of "
                           f"{pattern.block}): that is full attention; use topk < {max(1, blocks - 1)} or a longer n")
