"""quest: decode-time top-k KV-cache pages scored by per-page key bounds (Quest, Tang et al. 2024)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from sparsebench.errors import PatternError
from sparsebench.patterns.base import positive
from sparsebench.patterns.selection.base import Selection, SelectionPattern, keep_top_tokens, top_token_indices


@dataclass(frozen=True)
class Quest(SelectionPattern):
    """Decode only: per query, the top-k KV-cache pages by an upper bound of q . k, plus the last page.

    Exact rule, for each batch b, head h and query row at position t (the last q_len positions of n): keys are
    cut into pages of `page` positions (the last may be shorter); per page and dimension d, min_d and max_d of
    its keys (key/value head h // (H / KVH)) are the page's bounds. The page's score is
    sum_d max(q_d min_d, q_d max_d) (float32), an upper bound of q . k over its keys. The query keeps the page
    holding position n - 1 and the min(topk, other pages) other pages of highest score, ties to the lower page;
    inside kept pages the keys k <= t. The bounds are cache metadata, built once per cache (Quest keeps them up
    to date on append) and reused while the keys do not change: reported as setup, not in the latency.
    `topk` <= 0 is refused; topk >= pages - 1 at a length is refused for that length (it keeps every page).
    """

    name: ClassVar[str] = "quest"
    doc: ClassVar[str] = "decode: top-k KV pages by per-page key bounds (Quest) + the last page"
    modes: ClassVar[frozenset[str]] = frozenset({"decode"})
    page: int = 16
    topk: int = 256

    def check_params(self) -> None:
        positive(self, "page", "topk")

    def validate(self, n: int) -> None:
        super().validate(n)
        pages = -(-n // self.page)
        if self.topk >= pages - 1:
            raise PatternError(f"{self.name}: topk={self.topk} keeps every page at n={n} ({pages} pages of "
                               f"{self.page}): that is full attention; use topk < {max(1, pages - 1)} or a longer n")

    @property
    def is_causal(self) -> bool:
        return True

    def budget(self, n: int) -> int:
        return min(n, (self.topk + 1) * self.page) * n

    def page_bounds(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(min, max), each (B, KVH, pages, D) float32: the elementwise bounds of each page's keys."""
        B, KVH, n, D = k.shape
        pages = -(-n // self.page)
        padded = torch.empty(B, KVH, pages * self.page, D, device=k.device)
        padded[:, :, :n] = k.detach()
        padded[:, :, n:] = float("inf")
        low = padded.view(B, KVH, pages, self.page, D).amin(dim=3)
        padded[:, :, n:] = float("-inf")
        high = padded.view(B, KVH, pages, self.page, D).amax(dim=3)
        return low, high

    def bounds(self, k: torch.Tensor, cache: dict | None) -> torch.Tensor:
        """(B, KVH, pages, 2 D) float32: each page's [max | min] bounds side by side (`page_bounds`), so that a
        decode step reads them in one pass, a page's 2 D values contiguous; from `cache` while k is the same
        tensor, unchanged (its build time goes to cache["metadata_ms"])."""
        key = (k.data_ptr(), k._version, tuple(k.shape), self.page)
        if cache is not None and cache.get("quest_key") == key:
            return cache["quest_bounds"]
        t0 = time.perf_counter()
        bounds = self.joined(*self.page_bounds(k))
        if cache is not None:
            cache.update(quest_key=key, quest_bounds=bounds, metadata_ms=(time.perf_counter() - t0) * 1e3)
        return bounds

    def select(self, q: torch.Tensor, k: torch.Tensor, cache: dict | None = None) -> Selection:
        """One matmul per key/value head scores every page (the bounds read once: [max(q, 0) | min(q, 0)] .
        [max | min] = sum_d max(q_d min_d, q_d max_d)); the page lists come from `top_token_indices` (an
        unsorted top-k; ties fixed exactly). Against the former select (two matmuls over separate min and max
        tensors, copied per query head under GQA, and a boolean top-k mask), interleaved at n = 65536 on a loaded
        machine: 1.2-1.35x faster, the whole decode step 1.3x (the same pages, the same output). The bounds are
        still read whole (1/8 of K): the rule needs every page's score."""
        B, H, L, D = q.shape
        KVH, n = k.shape[1], k.shape[2]
        with torch.no_grad():
            scores = self.page_scores(q.reshape(B, KVH, -1, D), self.bounds(k, cache)).view(B * H * L, -1)
            pages = scores.shape[-1]
            last = (n - 1) // self.page
            if pages - 1 <= self.topk:  # every page (validate refuses such n; a serving batch's short sequence)
                return Selection(n=n, block=self.page, layout=torch.ones(B, H, L, pages, dtype=torch.bool,
                                                                         device=q.device),
                                 causal=True, offset=n - L, q_block=1)
            scores[:, last] = float("-inf")  # kept anyway; not a candidate for the top-k
            top = top_token_indices(scores, self.topk)  # (rows, topk) ascending, all below `last`
            layout = torch.zeros(B * H * L, pages, dtype=torch.bool, device=q.device)
            layout.scatter_(-1, top, True)
            layout[:, last] = True
        return Selection(n=n, block=self.page, layout=layout.view(B, H, L, pages), causal=True, offset=n - L,
                         q_block=1)

    @staticmethod
    def joined(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """(..., pages, 2 D): the bounds as `bounds` keeps them, [max | min] side by side."""
        return torch.cat([high, low], dim=-1)

    @staticmethod
    def page_scores(q: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
        """(..., R, pages) float32: each page's upper bound of q . k for the query rows q (..., R, D) (the query
        heads of one key/value head side by side) against `joined` bounds (..., pages, 2 D):
        [max(q, 0) | min(q, 0)] . [max | min] = sum_d max(q_d min_d, q_d max_d), one matmul."""
        qf = q.detach().float()
        return torch.cat([qf.clamp(min=0), qf.clamp(max=0)], dim=-1) @ bounds.transpose(-1, -2)

    def keep_pages(self, scores: torch.Tensor, last: int | torch.Tensor,
                   pages: int | torch.Tensor | None = None) -> torch.Tensor:
        """Bool of scores' shape: the page `last` (holding position n - 1) and the min(topk, others) other pages
        of highest score among the first `pages` (default: all), ties to the lower page. `last` and `pages` may
        be tensors that broadcast against scores[..., :1] (a batch of sequences of their own lengths, as a
        serving batch has; `select` takes the faster unsorted top-k of one length)."""
        j = torch.arange(scores.shape[-1], device=scores.device)
        candidates = j != last if pages is None else (j != last) & (j < pages)
        return keep_top_tokens(scores, candidates, self.topk) | (j == last)
