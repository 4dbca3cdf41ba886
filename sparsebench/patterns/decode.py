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
    """Raise when a decode row keeps no key: its softmax would be undefined.

    O(chunk) memory at any n and q_len: each row is checked at its own key first (every built-in pattern keeps
    the diagonal, so that is all they cost), and only rows without it against the other keys, in blocks.
    """
    mask_mod = pattern.mask_mod_for(n)
    zero = torch.zeros((), dtype=torch.int64)
    for first in range(n - q_len, n, _DIAGONAL_CHUNK):
        rows = torch.arange(first, min(first + _DIAGONAL_CHUNK, n))
        rows = rows[~mask_mod(zero, zero, rows, rows).expand(len(rows))]  # a rule may not depend on q or k
        for start in range(0, len(rows), _BLOCK):
            left = rows[start:start + _BLOCK]
            for stop in range(n, 0, -_BLOCK * 4):  # the newest keys first: decode rows mostly keep those
                if not len(left):
                    break
                keys = torch.arange(max(stop - _BLOCK * 4, 0), stop)
                kept = mask_mod(zero, zero, left[:, None], keys[None, :]).expand(len(left), len(keys))
                left = left[~kept.any(dim=-1)]
            if len(left):
                raise SparsebenchError(f"{pattern.label()} leaves decode query row {int(left[0])} (of n={n}) "
                                       "with no key to attend to")


_DIAGONAL_CHUNK = 1 << 20  # rows per diagonal check (8 MiB of positions)
_BLOCK = 1024  # rows per block of the full check, against 4 * _BLOCK keys at a time (32 MiB of int64 indices)
