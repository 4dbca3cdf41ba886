"""Optional third-party kernels that run selection patterns (NSA's, FlashInfer's): what they share.

They are not dependencies: each is a registered implementation that says why it cannot run (the package is not
installed, the device is not CUDA, a dtype or mode it lacks) as an `unsupported` row, and runs a selection
pattern's kept set as the kernel takes it when it can. Static patterns are not theirs to run: sparsebench's own
implementations cover those. A selection the kernel cannot express (a token selection, a layout that differs
between the query heads that share a key/value head) is an `error` row of that case, naming the reason.
"""

from __future__ import annotations

import importlib.util
from typing import ClassVar

import torch

from sparsebench.errors import SparsebenchError
from sparsebench.impls.base import Impl
from sparsebench.patterns import Pattern
from sparsebench.patterns.selection import Selection, SelectionPattern


class SelectionKernel(Impl):
    """An optional kernel of selection patterns; subclasses set `package`, `install` and `run_selection`."""

    package: ClassVar[str]  # the module whose presence makes the kernel available
    install: ClassVar[str]  # how to install it (for the unsupported row's reason)
    devices = frozenset({"cuda"})
    in_default_sweep = False  # run when named

    def available(self) -> bool:
        return importlib.util.find_spec(self.package.split(".")[0]) is not None

    def unsupported_reason(self, pattern: Pattern, device: str, dtype: torch.dtype, mode: str) -> str | None:
        if not isinstance(pattern, SelectionPattern):
            return f"{self.name} runs selection patterns (its kernel takes a kept set computed from q and k)"
        if mode not in pattern.modes:
            return f"{pattern.name} runs in {' and '.join(sorted(pattern.modes))}, not {mode}"
        reason = super().unsupported_reason(pattern, device, dtype, mode)
        if reason is None and not self.available():
            return f"{self.package} is not installed ({self.install})"
        return reason

    def run_selection(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: Selection,
                      cache: dict) -> tuple[torch.Tensor, int]:
        """(out (B, H, L, D), executed pairs per batch and query head) of the kernel on `selection`."""
        raise NotImplementedError


def group_layout(selection: Selection, heads: int, kv_heads: int, kernel: str) -> torch.Tensor:
    """(B, KVH, QB, KB) bool: the block layout per key/value head, for kernels that take one selection per
    key/value head, shared by its query heads; a token selection, or a layout that differs inside a group, is
    refused (topk_blocks:shared=1 selects per key/value head)."""
    if selection.indices is not None:
        raise SparsebenchError(f"{kernel} takes key blocks; a token selection (one key set per query) is not "
                               f"a block layout")
    layout = selection.layout
    B, Hs, QB, KB = layout.shape
    if Hs == 1:
        return layout.expand(B, kv_heads, QB, KB)
    grouped = layout.view(B, kv_heads, heads // kv_heads, QB, KB)
    if not bool((grouped == grouped[:, :, :1]).all()):
        raise SparsebenchError(f"{kernel} takes one selection per key/value head, shared by its "
                               f"{heads // kv_heads} query heads; this one differs between them (use a selection "
                               f"shared per key/value head, e.g. topk_blocks:shared=1)")
    return grouped[:, :, 0]
