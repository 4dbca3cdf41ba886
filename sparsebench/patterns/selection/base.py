"""Selection patterns: the kept set is computed from q and k on every call, not from indices alone.

A `SelectionPattern` has the static Pattern's parameters and validation, and one more view: `select(q, k)`
returns a `Selection`, the kept set of this call:
- a block layout (B, Hs, QB, KB) bool: key blocks of `block` positions that each query block keeps, with the
  causal rule (k <= q) applied inside the kept blocks when `causal`; Hs is 1 (one layout for every head) or H;
- for token selection, also `indices` (B, Hs, L, K) int64: the key positions each query keeps (-1: padding,
  after the kept positions; the kept ones in no particular order);
  `layout` is then the union of those keys' blocks (what a block-sparse kernel visits).
The static views (mask_mod, row masks, nnz) do not exist without the inputs: `nnz(n)` is the *budget* (the
most pairs a selection can keep, for the preflight's estimates); a row's `nnz` and `density` come from the
selection of the measured inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from sparsebench.errors import PatternError
from sparsebench.patterns.base import Pattern, positive

CHUNK_ENTRIES = 1 << 24  # score entries computed at once when a selection scores every key


@dataclass
class Selection:
    """The kept set of one call. Query row i is at position offset + i (prefill: offset 0, L = n; decode: the
    last L positions); layout row r covers query rows [r * q_block, (r + 1) * q_block)."""

    n: int
    block: int
    layout: torch.Tensor  # (B, Hs, QB, KB) bool: key blocks kept per query block
    causal: bool  # inside kept blocks, only keys k <= q
    indices: torch.Tensor | None = None  # (B, Hs, L, K) int64 key positions, -1 = padding last (token selection)
    offset: int = 0  # position of query row 0
    q_block: int = 0  # query rows per layout row; 0: `block` (square blocks)

    @property
    def rows_per_block(self) -> int:
        return self.q_block or self.block

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.layout.shape)  # type: ignore[return-value]

    def rows_mask(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, Hs, len(rows), n) bool: the kept keys of the query rows at the given positions."""
        rows = rows.to(self.layout.device, torch.int64)
        keys = torch.arange(self.n, device=rows.device)
        if self.indices is not None:
            idx = self.indices[:, :, rows - self.offset]  # (B, Hs, r, K)
            out = torch.zeros(*idx.shape[:3], self.n + 1, dtype=torch.bool, device=idx.device)
            out.scatter_(-1, torch.where(idx < 0, self.n, idx), True)  # padding lands in the dropped last column
            return out[..., : self.n]
        mask = self.layout[:, :, (rows - self.offset) // self.rows_per_block][..., keys // self.block]  # (B, Hs, r, n)
        return mask & (keys[None, :] <= rows[:, None]) if self.causal else mask

    def dense_mask(self) -> torch.Tensor:
        """(B, Hs, L, n) bool: every query row's kept keys."""
        return self.rows_mask(torch.arange(self.offset, self.n, device=self.layout.device))

    def pair_counts(self) -> torch.Tensor:
        """(B, Hs) int64: kept (q, k) pairs per batch and head, exactly, in O(n * KB) memory."""
        if self.indices is not None:
            return (self.indices >= 0).sum(dim=(-1, -2))
        if self.offset or self.rows_per_block != self.block:  # decode: a few rows, counted from their masks
            return self.dense_mask().sum(dim=(-1, -2))
        return (self.layout.to(torch.int64) * block_areas(self.n, self.block, self.causal, self.layout.device)
                ).sum(dim=(-1, -2))

    def kept_blocks(self) -> torch.Tensor:
        """(B, Hs) int64: kept (query block, key block) pairs."""
        return self.layout.sum(dim=(-1, -2))


def block_areas(n: int, b: int, causal: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """(QB, KB) int64: the (q, k) pairs inside each block pair that a kept block keeps (k <= q when causal;
    ragged last blocks counted as they are)."""
    nb = -(-n // b)
    sizes = torch.full((nb,), b, dtype=torch.int64, device=device)
    sizes[-1] = n - b * (nb - 1)
    if not causal:
        return sizes[:, None] * sizes[None, :]
    pos = torch.arange(n, device=device)
    per_row = (pos[:, None] - torch.arange(nb, device=device)[None, :] * b + 1).clamp(min=0)
    per_row = torch.minimum(per_row, sizes[None, :])  # (n, KB): keys of block j at or before row q
    padded = torch.zeros(nb * b, nb, dtype=torch.int64, device=device)
    padded[:n] = per_row
    return padded.view(nb, b, nb).sum(dim=1)


def block_means(x: torch.Tensor, b: int) -> torch.Tensor:
    """(B, H, N, D) -> (B, H, ceil(N / b), D) float32: the mean of each block's positions (the ragged last block
    over the positions it has)."""
    B, H, N, D = x.shape
    nb = -(-N // b)
    if N == nb * b and x.dtype == torch.float32 and x.is_contiguous():
        # the same sums, read in place: the padded copy below (zeroed, then filled) cost more than the sums
        return x.view(B, H, nb, b, D).sum(dim=3) / float(b)
    padded = torch.zeros(B, H, nb * b, D, dtype=torch.float32, device=x.device)
    padded[:, :, :N] = x
    sizes = torch.full((nb,), float(b), device=x.device)
    sizes[-1] = N - b * (nb - 1)
    return padded.view(B, H, nb, b, D).sum(dim=3) / sizes[:, None]


def keep_top(scores: torch.Tensor, candidates: torch.Tensor, topk: int) -> torch.Tensor:
    """Bool of scores' shape: per row (last dim), the min(topk, candidates) candidates of highest score, ties to
    the lower index (a stable descending sort). `candidates` broadcasts against `scores`."""
    candidates = candidates.expand_as(scores)
    masked = scores.masked_fill(~candidates, float("-inf"))
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices
    count = candidates.sum(dim=-1, keepdim=True).clamp(max=topk)
    ranked = torch.arange(scores.shape[-1], device=scores.device) < count  # the first `count` in score order
    return torch.zeros_like(candidates).scatter(-1, order, ranked)


def keep_top_tokens(scores: torch.Tensor, candidates: torch.Tensor, topk: int) -> torch.Tensor:
    """As `keep_top`, without sorting every row: an unsorted torch.topk finds the count-th highest candidate
    score t (the least of the top values; a sorted topk spent half its time ordering them), then every
    candidate at or above t, and of the candidates equal to t beyond what a row needs, the highest indices are
    dropped (the same set, exactly; the tie fix-up runs on the rows with ties only)."""
    candidates = candidates.expand_as(scores)
    masked = scores.masked_fill(~candidates, float("-inf"))
    count = candidates.sum(dim=-1, keepdim=True).clamp(max=topk)
    k = min(topk, scores.shape[-1])
    t = torch.topk(masked, k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    t = torch.where(count < k, float("-inf"), t)  # fewer candidates than topk: every candidate
    keep = (masked >= t) & candidates
    return drop_extra_ties(keep, masked, t, keep.sum(dim=-1, keepdim=True) - count)


def drop_extra_ties(keep: torch.Tensor, scores: torch.Tensor, t: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """keep, less the `extra` (per row) highest-index kept entries whose score equals the row's threshold t."""
    ties = (extra > 0).squeeze(-1)
    if bool(ties.any()):
        rows_keep = keep[ties]
        equal = (scores[ties] == t[ties]) & rows_keep
        drop = equal & (equal.flip(-1).cumsum(dim=-1).flip(-1) <= extra[ties])
        keep[ties] = rows_keep & ~drop
    return keep


def top_token_indices(scores: torch.Tensor, topk: int) -> torch.Tensor:
    """(R, topk) int64: the positions of the topk highest of each row of `scores` (R, m) float32, ties to the
    lower index, in no particular order (deterministic: torch.topk's, ascending on rows with ties), where every
    row has at least topk finite entries and a -inf entry is not a candidate (finite scores only). The same set
    as `keep_top_tokens`, straight from one unsorted torch.topk of topk + 1: its two least values are the
    row's topk-th and (topk + 1)-th highest; where they differ, the kept set is the top-(topk + 1) less its
    least; where they are equal, topk's choice among the ties is arbitrary and the row takes `keep_top_tokens`'
    exact rule (rare on real-valued scores).
    Tried and dropped (n = 16384, rows of up to 16384 keys, 1 thread, a loaded machine): a threshold from a
    strided sample, then the keys above it compacted (nonzero) for an exact top-k on about 1.25 topk keys a
    row: nonzero over the (R, m) mask cost more (about 10 ns an entry) than the full top-k it saved (about
    6 ns); sorting each row's indices (110 ns an index, as much as the top-k) and counting each row's keys at
    or above the threshold to find ties (a boolean reduction over (R, m), about half the top-k's time): the
    (topk + 1)-th value finds them instead."""
    R, m = scores.shape
    if m == topk:
        return torch.arange(m, device=scores.device).expand(R, m).clone()
    values, idx = torch.topk(scores, topk + 1, dim=-1, sorted=False)
    least, at = values.min(dim=-1, keepdim=True)  # the (topk + 1)-th highest and where it is
    t = values.scatter(-1, at, float("inf")).amin(dim=-1, keepdim=True)  # the topk-th highest
    out = idx.scatter(-1, at, idx[:, -1:])[:, :topk]  # the least moved out: the last entry takes its place
    ties = (t == least).flatten().nonzero().flatten()
    if len(ties):
        rows = scores[ties]
        keep = keep_top_tokens(rows, rows > float("-inf"), topk)
        out[ties] = keep.nonzero()[:, 1].view(len(ties), topk)
    return out


def expand_heads(k: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, KVH, ...) -> (B, heads, ...): query head h reads key/value head h // (heads / KVH) (GQA/MQA)."""
    rep = heads // k.shape[1]
    return k if rep == 1 else k.repeat_interleave(rep, dim=1)


@dataclass(frozen=True)
class SelectionPattern(Pattern):
    """Base of the selection patterns (see the module docstring); subclasses define `select` and `budget`."""

    is_selection: ClassVar[bool] = True
    modes: ClassVar[frozenset[str]] = frozenset({"fwd", "fwdbwd"})

    @property
    def is_causal(self) -> bool:
        """Whether the kept set obeys k <= q (recall and speed-up then compare with causal attention)."""
        return bool(getattr(self, "causal", 1))

    def select(self, q: torch.Tensor, k: torch.Tensor, cache: dict | None = None) -> Selection:
        """The kept set for q (B, H, L, D) and k (B, KVH, N, D); no gradient flows through it.
        `cache`: a dict kept across the calls of one case (cache metadata, as Quest's page bounds)."""
        raise NotImplementedError

    def budget(self, n: int) -> int:
        """The most (q, k) pairs one head can keep at length n."""
        return n * n

    def mask_mod(self, b, h, q, k):
        raise PatternError(f"{self.name}: a selection pattern's kept set depends on q and k; it has no mask_mod")

    def rows_mask(self, rows, n, device="cpu"):
        raise PatternError(f"{self.name}: a selection pattern's kept set depends on q and k; use select(q, k)")

    def row_counts(self, n: int) -> torch.Tensor:
        raise PatternError(f"{self.name}: a selection pattern's row counts depend on q and k")

    def count_pairs(self, n: int) -> int:
        """The budget (an upper bound): the exact count is the selection's, per call."""
        return min(n * n, self.budget(n))


def blocks_param(pattern: Pattern, n: int) -> None:
    """Checks shared by the block selections at length n."""
    positive(pattern, "block", "topk")
    if getattr(pattern, "causal", 1) not in (0, 1):
        raise PatternError(f"{pattern.name}: causal must be 0 or 1, got {pattern.causal}")
