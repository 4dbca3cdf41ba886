"""Pattern-aware kernels behind the `structured` implementation: one builder per pattern, one file per family."""

from __future__ import annotations

from collections.abc import Callable

import torch

from sparsebench.impls.kernels import band, blocksparse, columns, dense, global_tokens
from sparsebench.impls.kernels.band import dilated_kernel, local_kernel, sliding_window_kernel
from sparsebench.impls.kernels.blocksparse import blocksparse_kernel
from sparsebench.impls.kernels.columns import fixed_kernel, strided_kernel
from sparsebench.impls.kernels.core import Kernel, Traits
from sparsebench.impls.kernels.decode import decode_kernel
from sparsebench.impls.kernels.dense import causal_kernel, dense_kernel
from sparsebench.impls.kernels.global_tokens import bigbird_kernel, longformer_kernel
from sparsebench.patterns import Pattern

Builder = Callable[[Pattern, int, torch.device, torch.dtype], Kernel]

BUILDERS: dict[str, Builder] = {
    "dense": dense_kernel,
    "causal": causal_kernel,
    "local": local_kernel,
    "strided": strided_kernel,
    "sliding_window": sliding_window_kernel,
    "dilated": dilated_kernel,
    "fixed": fixed_kernel,
    "longformer": longformer_kernel,
    "bigbird": bigbird_kernel,
}

# What each builder does, known before it is built (defined beside the builder): user patterns, on the generic
# block-sparse kernel, have none (their estimates come from its plan).
TRAITS: dict[str, Traits] = {
    "dense": dense.SDPA,
    "causal": dense.SDPA,
    "local": band.BAND,
    "strided": columns.STRIDED,
    "sliding_window": band.BAND,
    "dilated": band.BAND,
    "fixed": columns.FIXED,
    "longformer": global_tokens.LONGFORMER,
    "bigbird": global_tokens.BIGBIRD,
}


def estimate_pairs(pattern: Pattern, n: int) -> int:
    """(q, k) pairs the kernel for `pattern` computes, no kernel built: its builder's traits, or for a user
    pattern the generic block-sparse kernel's plan."""
    traits = TRAITS.get(pattern.name)
    return blocksparse.plan_pairs(pattern, n, "cpu") if traits is None else traits.estimate_pairs(pattern, n)


def build_kernel(pattern: Pattern, n: int, device: torch.device | str, dtype: torch.dtype,
                 q_len: int | None = None) -> Kernel:
    """The prepared kernel for `pattern` at length n (masks and indices built here, once): its specialised
    kernel, or the generic block-sparse one for a pattern without one; with `q_len`, the decode kernel for the
    last q_len positions (any pattern)."""
    pattern.validate(n)
    if q_len is not None:
        return decode_kernel(pattern, n, q_len, torch.device(device), dtype)
    builder = BUILDERS.get(pattern.name, blocksparse_kernel)  # user patterns: the generic block-sparse kernel
    return builder(pattern, n, torch.device(device), dtype)


__all__ = ["BUILDERS", "TRAITS", "Kernel", "Traits", "build_kernel", "estimate_pairs"]
