"""oracle_topk: per query block, the key blocks with the largest true attention mass (the ceiling of any block
selection at that budget)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from sparsebench.patterns.selection.base import CHUNK_ENTRIES, expand_heads
from sparsebench.patterns.selection.topk_blocks import TopkBlocks


@dataclass(frozen=True)
class OracleTopk(TopkBlocks):
    """Own block + the top-k key blocks by true attention mass: what topk_blocks would keep with perfect scores.

    Exact rule, for each batch b and head h: p = softmax(q k^T / sqrt(D)) over all keys (causal=1: over keys
    k <= q), in float32; the mass of (query block i, key block j) is the sum of p over the rows of block i and
    the keys of block j. Then exactly topk_blocks' rule with that mass as the score: own block i, plus the
    min(topk, candidates) candidate blocks (j != i; causal=1: j < i) of largest mass, ties to the lower j.
    It computes every score, so it is never faster than full attention: its latency is shown, its recall is
    the ceiling a block selection of that budget can reach.
    """

    name: ClassVar[str] = "oracle_topk"
    doc: ClassVar[str] = "own block + top-k key blocks by true attention mass (the ceiling of block selection)"

    def block_scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """topk_blocks' rule with the true attention mass as the score."""
        return self.block_mass(q, k)

    def block_mass(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(B, H, QB, KB) float32: attention mass per block pair, a band of query rows at a time."""
        B, H, L, D = q.shape
        n, b = k.shape[2], self.block
        kf = expand_heads(k.detach().float(), H)  # (B, H, n, D)
        nb = -(-n // b)
        mass = torch.zeros(B, H, -(-L // b), nb, device=q.device)
        step = max(b, CHUNK_ENTRIES // max(1, B * H * n) // b * b)  # whole query blocks per band
        keys = torch.arange(n, device=q.device)
        for start in range(0, L, step):
            rows = torch.arange(start, min(L, start + step), device=q.device)
            # causal: the band's keys end at its last row (half the work); the softmax is the same
            upto = min(n, int(rows[-1]) + 1) if self.causal else n
            upto_blocks = -(-upto // b)
            scores = q.detach()[:, :, rows].float() @ kf[:, :, :upto].transpose(-1, -2) * D ** -0.5  # (B, H, r, upto)
            if self.causal:
                scores.masked_fill_(keys[None, :upto] > rows[:, None], float("-inf"))
            p = torch.softmax(scores, dim=-1)
            if upto < upto_blocks * b:  # a ragged last block: pad it to a whole block
                p = torch.nn.functional.pad(p, (0, upto_blocks * b - upto))
            per_key_block = p.view(B, H, len(rows), upto_blocks, b).sum(-1)  # (B, H, r, blocks up to upto)
            mass[..., :upto_blocks].index_add_(2, rows // b, per_key_block)
        return mass
