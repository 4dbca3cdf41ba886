"""Serving-shaped workloads: packed variable-length prefill and batched decode over a paged KV cache.

Explicit registries, by mode: the implementations of a packed prefill batch (mode fwd) and of a paged decode
step (mode decode), and those of a decode step under a selection pattern (quest) on the paged cache. Their names
are the sweep's implementation names (`nested` exists only here).
"""

from __future__ import annotations

from sparsebench.patterns import Pattern
from sparsebench.patterns.selection import SelectionPattern
from sparsebench.serving.base import ServingImpl, ServingPrepared
from sparsebench.serving.batch import ServingBatch, make_batch
from sparsebench.serving.decode import PaddedDecode, PagedFlex, PagedGather
from sparsebench.serving.lengths import (
    PAGED_SELECTIONS,
    PER_SEQUENCE,
    canonical,
    check_page_match,
    check_page_size,
    check_pattern,
    count,
    draw,
    own_count,
)
from sparsebench.serving.prefill import DocumentFlex, NestedSdpa, PackedBlockSparse, PaddedSdpa
from sparsebench.serving.quest import PaddedQuest, PagedQuest

PREFILL: dict[str, ServingImpl] = {impl.name: impl for impl in (PaddedSdpa(), NestedSdpa(), DocumentFlex(),
                                                                 PackedBlockSparse())}
DECODE: dict[str, ServingImpl] = {impl.name: impl for impl in (PaddedDecode(), PagedGather(), PagedFlex())}
DECODE_SELECTION: dict[str, ServingImpl] = {impl.name: impl for impl in (PaddedQuest(), PagedQuest())}
NAMES = tuple(dict.fromkeys([*PREFILL, *DECODE]))  # every serving implementation name
DEFAULT_SWEEP = ("sdpa", "nested", "structured")  # flex compiles per shape (tens of seconds on a CPU): by name


def get_serving_impl(name: str, mode: str, pattern: Pattern | None = None) -> ServingImpl | None:
    if isinstance(pattern, SelectionPattern):
        return DECODE_SELECTION.get(name) if mode == "decode" else None
    return (DECODE if mode == "decode" else PREFILL).get(name)


def unsupported_reason(name: str, pattern: Pattern, mode: str, heads: int, kv_heads: int) -> str | None:
    """Why implementation `name` cannot run this serving case, or None."""
    if isinstance(pattern, SelectionPattern) and mode != "decode":
        return f"{pattern.name} selects pages of a KV cache: it runs in decode only"
    if isinstance(pattern, SelectionPattern) and name not in DECODE_SELECTION:
        return (f"{name} has no paged decode kernel for {pattern.name}; it runs on "
                f"{', '.join(DECODE_SELECTION)}")
    impl = get_serving_impl(name, mode, pattern)
    if impl is None:
        kind = "paged decode" if mode == "decode" else "packed prefill"
        table = DECODE if mode == "decode" else PREFILL
        return f"{name} has no {kind} kernel; serving batches run on {', '.join(table)}"
    return impl.unsupported_reason(pattern, mode, heads, kv_heads)


__all__ = ["DECODE", "DECODE_SELECTION", "DEFAULT_SWEEP", "NAMES", "PAGED_SELECTIONS", "PER_SEQUENCE", "PREFILL",
           "ServingBatch", "ServingImpl", "ServingPrepared", "canonical", "check_page_match", "check_page_size",
           "check_pattern", "count", "draw", "get_serving_impl", "make_batch", "own_count", "unsupported_reason"]
