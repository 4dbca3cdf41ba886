"""A user's FlexAttention `mask_mod(b, h, q_idx, kv_idx) -> bool` as a pattern (attention-gym style).

The mask_mod is evaluated on broadcast index tensors a band of rows at a time, so the exact nnz of any n
takes bounded memory (never n x n at once), and is cached per n. A factory `make(n, **params) -> mask_mod`
works too, for masks that depend on the length (documents packed into n tokens); its integer keyword
parameters with defaults become the pattern's parameters (`--pattern masks.py:document:docs=4`), and a
`device` parameter, if it has one, gets the device its lookup tables must live on.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from functools import lru_cache
from typing import ClassVar

import torch

from sparsebench.errors import PatternError
from sparsebench.patterns.base import MaskMod, Pattern

ROW_BLOCK_ENTRIES = 1 << 22  # mask entries evaluated at once when counting (4 Mi booleans)


@dataclasses.dataclass(frozen=True)
class MaskModPattern(Pattern):
    """Base of the patterns made by `mask_mod_pattern`; each subclass carries one user function."""

    name: ClassVar[str] = "mask_mod"
    make: ClassVar[Callable[..., MaskMod]]  # (n, device, **params) -> the mask_mod at length n
    is_factory: ClassVar[bool] = False

    def mask_mod_for(self, n: int, device: torch.device | str = "cpu") -> MaskMod:
        return _mask_mod(type(self), n, tuple(sorted(self.params.items())), str(torch.device(device)))

    def mask_mod(self, b, h, q, k):
        raise PatternError(f"{self.name}: a user mask depends on n; use mask_mod_for(n)")

    def rows_mask(self, rows: torch.Tensor, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        rows = rows.to(device=device, dtype=torch.int64)
        keys = torch.arange(n, device=device)
        zero = torch.zeros((), dtype=torch.int64, device=device)
        out = self.mask_mod_for(n, device)(zero, zero, rows[:, None], keys[None, :])
        return torch.as_tensor(out, device=device).expand(len(rows), n)

    def count_pairs(self, n: int) -> int:
        return _counts(self, n)[0]

    def validate(self, n: int) -> None:
        super().validate(n)
        _check(self, n)


def mask_mod_pattern(name: str, function: Callable, origin: str = "") -> type[MaskModPattern]:
    """A Pattern class for a user's mask_mod (4 arguments) or factory (n first, optional int parameters)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        raise PatternError(f"{origin or name}: not a function with a signature") from None
    params = list(signature.parameters.values())
    if len(params) == 4 and all(p.default is inspect.Parameter.empty for p in params):
        is_factory, extra = False, []
    elif params and params[0].default is inspect.Parameter.empty and all(
            p.default is not inspect.Parameter.empty for p in params[1:]):
        is_factory, extra = True, [p for p in params[1:] if p.name != "device"]
        bad = [p.name for p in extra if not isinstance(p.default, int) or isinstance(p.default, bool)]
        if bad:
            raise PatternError(f"{origin or name}: factory parameters must have integer defaults ({', '.join(bad)})")
    else:
        raise PatternError(f"{origin or name}: expected a mask_mod(b, h, q_idx, kv_idx) or a factory make(n, ...) "
                           f"returning one; got a function of ({', '.join(p.name for p in params)})")
    fields = [(p.name, int, dataclasses.field(default=p.default)) for p in extra]
    cls = dataclasses.make_dataclass(name, fields, bases=(MaskModPattern,), frozen=True)
    cls.name = name
    cls.doc = (inspect.getdoc(function) or "a user mask_mod").splitlines()[0]
    takes_device = is_factory and "device" in signature.parameters
    if not is_factory:
        cls.make = staticmethod(lambda n, device, _fn=function: _fn)
    elif takes_device:
        cls.make = staticmethod(function)
    else:
        cls.make = staticmethod(lambda n, device, _fn=function, **params: _fn(n, **params))
    cls.is_factory = is_factory
    return cls


@lru_cache(maxsize=64)
def _mask_mod(cls: type[MaskModPattern], n: int, params: tuple[tuple[str, int], ...], device: str) -> MaskMod:
    return cls.make(n, device=torch.device(device), **dict(params))


@lru_cache(maxsize=64)
def _counts(pattern: MaskModPattern, n: int) -> tuple[int, int]:
    """(kept pairs, the first query row that keeps no key or -1), a band of rows at a time."""
    total, empty = 0, -1
    step = max(1, ROW_BLOCK_ENTRIES // n)
    for start in range(0, n, step):
        rows = pattern.rows_mask(torch.arange(start, min(n, start + step)), n)
        kept = rows.sum(dim=1)
        total += int(kept.sum())
        if empty < 0 and bool((kept == 0).any()):
            empty = start + int((kept == 0).nonzero()[0])
    return total, empty


def _check(pattern: MaskModPattern, n: int) -> None:
    """One clear error for a mask_mod that raises, returns no boolean, or keeps no key in some row."""
    try:
        probe = pattern.rows_mask(torch.arange(min(n, 4)), n)
    except PatternError:
        raise
    except Exception as exc:  # the user's code
        raise PatternError(f"{pattern.name}: its mask_mod raised {type(exc).__name__}: {exc}".strip()) from None
    if probe.dtype != torch.bool:
        raise PatternError(f"{pattern.name}: its mask_mod must return booleans, got {probe.dtype}")
    empty = _counts(pattern, n)[1]
    if empty >= 0:
        raise PatternError(f"{pattern.name}: query row {empty} keeps no key at n={n} (its softmax is undefined)")
