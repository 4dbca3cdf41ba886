"""A user's selector `select(q, k, **params) -> block layout` as a selection pattern.

The contract (`--pattern module:attr[:key=INT,...]`, attr a function whose first two parameters are named
`q` and `k`):
- it is called as select(q, k, **params) on every call, without gradient: q (B, H, L, D), k (B, KVH, N, D)
  (KVH divides H; query head h reads key/value head h // (H / KVH)), in the run's dtype and device;
- its other parameters are keyword parameters with integer defaults: they are the pattern's parameters
  (`--pattern my.py:select:topk=8`); `block` (required) is the block size of the layout it returns, and
  `causal` (optional, 0 or 1; 0 when absent) applies k <= q inside the kept blocks;
- it returns a bool tensor (B, H or 1, ceil(L / block), ceil(N / block)): True where query block i keeps key
  block j (1 head: the same layout for every head). Every query row must keep a key (with causal=1: its own,
  diagonal block, or a block before it).
A return value of another shape or dtype, or a query row without a key, fails the case (an `error` row).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import ClassVar

import torch

from sparsebench.errors import PatternError
from sparsebench.patterns.base import positive
from sparsebench.patterns.selection.base import Selection, SelectionPattern


def is_selector(function: Callable) -> bool:
    """Whether a function looks like a selector: its first two parameters are named q and k."""
    try:
        names = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return False
    return names[:2] == ["q", "k"]


@dataclasses.dataclass(frozen=True)
class UserSelection(SelectionPattern):
    """Base of the patterns made by `selector_pattern`; each subclass carries one user function."""

    name: ClassVar[str] = "selector"
    function: ClassVar[Callable[..., torch.Tensor]]

    def check_params(self) -> None:
        positive(self, "block")
        if getattr(self, "causal", 0) not in (0, 1):
            raise PatternError(f"{self.name}: causal must be 0 or 1, got {self.causal}")

    @property
    def is_causal(self) -> bool:
        return bool(getattr(self, "causal", 0))

    def budget(self, n: int) -> int:
        return n * n

    def select(self, q: torch.Tensor, k: torch.Tensor, cache: dict | None = None) -> Selection:
        with torch.no_grad():
            layout = type(self).function(q.detach(), k.detach(), **self.params)
        B, H, L, _ = q.shape
        n, b = k.shape[2], self.block
        expected = (B, H, -(-L // b), -(-n // b))
        if not isinstance(layout, torch.Tensor):
            raise TypeError(f"selector {self.name} returned {type(layout).__name__}, not a bool tensor of shape "
                            f"{expected}")
        if layout.dtype != torch.bool or layout.dim() != 4 or layout.shape[1] not in (1, H) or \
                tuple(layout.shape[:1] + layout.shape[2:]) != (B, *expected[2:]):
            raise TypeError(f"selector {self.name} returned {layout.dtype} {tuple(layout.shape)}; expected torch.bool "
                            f"of shape (B, H or 1, ceil(L/block), ceil(N/block)) = {expected} (block={b})")
        layout = layout.to(q.device)
        i = torch.arange(layout.shape[2], device=q.device)[:, None]
        j = torch.arange(layout.shape[3], device=q.device)[None, :]
        reach = layout & (j <= i) if self.is_causal else layout
        empty = ~reach.any(dim=-1)
        if bool(empty.any()):
            block = int(empty.nonzero()[0, -1])
            raise ValueError(f"selector {self.name}: query block {block} keeps no key"
                             + (" at or before itself (causal=1)" if self.is_causal else ""))
        return Selection(n=n, block=b, layout=layout, causal=self.is_causal)


def selector_pattern(name: str, function: Callable) -> type[UserSelection]:
    """A SelectionPattern class for a user's selector (see the module docstring for the contract)."""
    params = list(inspect.signature(function).parameters.values())[2:]
    bad = [p.name for p in params if p.kind is not p.KEYWORD_ONLY and p.kind is not p.POSITIONAL_OR_KEYWORD
           or not isinstance(p.default, int) or isinstance(p.default, bool)]
    if bad:
        raise PatternError(f"{name}: a selector's parameters after q, k must have integer defaults "
                           f"({', '.join(bad)})")
    if "block" not in [p.name for p in params]:
        raise PatternError(f"{name}: a selector needs a `block` parameter (the block size of its layout)")
    fields = [(p.name, int, dataclasses.field(default=p.default)) for p in params]
    cls = dataclasses.make_dataclass(name, fields, bases=(UserSelection,), frozen=True)
    cls.name = name
    cls.doc = (inspect.getdoc(function) or "a user selector").splitlines()[0]
    cls.function = staticmethod(function)
    return cls
