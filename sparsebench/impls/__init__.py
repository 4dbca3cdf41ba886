"""Attention implementations: an explicit registry, one file per implementation."""

from __future__ import annotations

from sparsebench.errors import SparsebenchError
from sparsebench.impls.base import Impl, Prepared
from sparsebench.impls.blocksparse import BlockSparseImpl
from sparsebench.impls.eager import EagerImpl
from sparsebench.impls.flashinfer_bsr import FlashInferImpl
from sparsebench.impls.flex import FlexImpl
from sparsebench.impls.nsa import NsaImpl
from sparsebench.impls.sdpa import BACKENDS, SdpaImpl
from sparsebench.impls.seed import SeedImpl
from sparsebench.impls.structured import StructuredImpl

IMPLS: dict[str, Impl] = {
    "seed": SeedImpl(),
    "eager": EagerImpl(),
    "sdpa": SdpaImpl(),
    "flex": FlexImpl(),
    "structured": StructuredImpl(),
    "blocksparse": BlockSparseImpl(),
    # optional third-party kernels of selection patterns (CUDA; `unsupported` rows, with the reason, without them)
    "nsa": NsaImpl(),
    "flashinfer": FlashInferImpl(),
    # SDPA's backends, each forced: the dense baselines a kernel is compared against (run when named)
    **{f"sdpa[{backend}]": SdpaImpl(backend) for backend in BACKENDS},
}


def get_impl(name: str) -> Impl:
    """A registered implementation by name (`sparsebench.resolve.get_impl` loads plugins first)."""
    if name not in IMPLS:
        if name.startswith("sdpa[") and name.endswith("]"):
            raise SparsebenchError(f"unknown SDPA backend {name[5:-1]!r} in {name!r}; choose from: "
                                   f"{', '.join(BACKENDS)} (e.g. sdpa[cudnn])")
        raise SparsebenchError(f"unknown implementation {name!r}; choose from: {', '.join(IMPLS)}")
    return IMPLS[name]


__all__ = ["IMPLS", "Impl", "Prepared", "get_impl"]
