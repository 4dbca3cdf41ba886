"""Serving-shaped workloads: packed variable-length prefill and batched decode over a paged KV cache.

Explicit registries, by mode: the implementations of a packed prefill batch (mode fwd) and of a paged decode
step (mode decode). Their names are the sweep's implementation names (`nested` exists only here).
"""

from __future__ import annotations

from sparsebench.patterns import Pattern
from sparsebench.serving.base import ServingImpl, ServingPrepared
from sparsebench.serving.batch import ServingBatch, make_batch
from sparsebench.serving.decode import PaddedDecode, PagedFlex, PagedGather
from sparsebench.serving.lengths import PER_SEQUENCE, canonical, check_page_size, check_pattern, count, draw
from sparsebench.serving.prefill import DocumentFlex, NestedSdpa, PackedBlockSparse, PaddedSdpa

PREFILL: dict[str, ServingImpl] = {impl.name: impl for impl in (PaddedSdpa(), NestedSdpa(), DocumentFlex(),
                                                                 PackedBlockSparse())}
DECODE: dict[str, ServingImpl] = {impl.name: impl for impl in (PaddedDecode(), PagedGather(), PagedFlex())}
NAMES = tuple(dict.fromkeys([*PREFILL, *DECODE]))  # every serving implementation name
DEFAULT_SWEEP = ("sdpa", "nested", "structured")  # flex compiles per shape (tens of seconds on a CPU): by name


def get_serving_impl(name: str, mode: str) -> ServingImpl | None:
    return (DECODE if mode == "decode" else PREFILL).get(name)


def unsupported_reason(name: str, pattern: Pattern, mode: str, heads: int, kv_heads: int) -> str | None:
    """Why implementation `name` cannot run this serving case, or None."""
    impl = get_serving_impl(name, mode)
    if impl is None:
        kind = "paged decode" if mode == "decode" else "packed prefill"
        table = DECODE if mode == "decode" else PREFILL
        return f"{name} has no {kind} kernel; serving batches run on {', '.join(table)}"
    return impl.unsupported_reason(pattern, mode, heads, kv_heads)


__all__ = ["DECODE", "DEFAULT_SWEEP", "NAMES", "PER_SEQUENCE", "PREFILL", "ServingBatch", "ServingImpl",
           "ServingPrepared", "canonical", "check_page_size", "check_pattern", "count", "draw",
           "get_serving_impl", "make_batch", "unsupported_reason"]
