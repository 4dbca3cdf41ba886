"""Decoding against a KV cache: q_len query rows at the end of a sequence of n keys, under a pattern's rule."""

from __future__ import annotations

from functools import lru_cache

import torch

from sparsebench.errors import SparsebenchError
from sparsebench.patterns.base import Pattern


def decode_positions(n: int, q_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The query positions n - q_len ... n - 1 (the newest tokens)."""
    return torch.arange(n - q_len, n, device=device)


def decode_mask(pattern: Pattern, n: int, q_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(q_len, n) bool: the pattern's rule at the decode positions (O(q_len * n), never n^2)."""
    return pattern.rows_mask(decode_positions(n, q_len, device), n, device)


@lru_cache(maxsize=256)
def decode_nnz(pattern: Pattern, n: int, q_len: int) -> int:
    """Exact kept (q, k) pairs of the decode rows."""
    return int(decode_mask(pattern, n, q_len).sum())


def check_decode_rows(pattern: Pattern, n: int, q_len: int) -> None:
    """Raise when a decode row keeps no key: its softmax would be undefined."""
    empty = (~decode_mask(pattern, n, q_len).any(dim=-1)).nonzero()
    if len(empty):
        raise SparsebenchError(f"{pattern.label()} leaves decode query row {n - q_len + int(empty[0])} (of n={n}) "
                               "with no key to attend to")
