"""Attention implementations: an explicit registry, one file per implementation."""

from __future__ import annotations

from sparsebench.errors import SparsebenchError
from sparsebench.impls.base import Impl, Prepared
from sparsebench.impls.eager import EagerImpl
from sparsebench.impls.flex import FlexImpl
from sparsebench.impls.sdpa import SdpaImpl
from sparsebench.impls.seed import SeedImpl
from sparsebench.impls.structured import StructuredImpl

IMPLS: dict[str, Impl] = {
    "seed": SeedImpl(),
    "eager": EagerImpl(),
    "sdpa": SdpaImpl(),
    "flex": FlexImpl(),
    "structured": StructuredImpl(),
}


def get_impl(name: str) -> Impl:
    if name not in IMPLS:
        raise SparsebenchError(f"unknown implementation {name!r}; choose from: {', '.join(IMPLS)}")
    return IMPLS[name]


__all__ = ["IMPLS", "Impl", "Prepared", "get_impl"]
