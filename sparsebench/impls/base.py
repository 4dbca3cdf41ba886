"""The Impl base class: an attention implementation that declares what it supports."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

import torch

from sparsebench.patterns import Pattern

ALL_DTYPES = frozenset({torch.float32, torch.bfloat16, torch.float16})
ALL_MODES = frozenset({"fwd", "fwdbwd", "decode"})


StateT = TypeVar("StateT")


@dataclass
class Prepared(Generic[StateT]):
    """What `Impl.prepare` built once per (pattern, n, device, dtype, q_len); its cost is `setup_ms`.

    `state` is the implementation's own type (a mask, a BlockMask, a prepared kernel, or None).
    """

    pattern: Pattern
    n: int
    state: StateT | None = None
    executed_pairs: int = 0  # (q, k) pairs the kernel really computes, per batch and query head
    q_len: int | None = None  # decode: the query rows n - q_len ... n - 1; None: all n rows
    kv_rows: int | None = None  # K and V rows read per batch and key/value head (decode); None: all n
    extra: dict[str, float] = field(default_factory=dict)  # e.g. block_density

    @property
    def queries(self) -> int:
        return self.n if self.q_len is None else self.q_len


class Impl:
    """One attention implementation. Subclasses set the class attributes and `prepare`/`forward`."""

    name: ClassVar[str]
    description: ClassVar[str]
    patterns: ClassVar[frozenset[str] | None] = None  # None: every pattern
    devices: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda"})
    dtypes: ClassVar[frozenset[torch.dtype]] = ALL_DTYPES
    modes: ClassVar[frozenset[str]] = ALL_MODES
    in_default_sweep: bool = True  # run when a sweep names no implementation

    def unsupported_reason(self, pattern: Pattern, device: str, dtype: torch.dtype, mode: str) -> str | None:
        """None when the combination runs, else a one-line reason."""
        device_type = torch.device(device).type
        if self.patterns is not None and pattern.name not in self.patterns:
            return f"{self.name} implements only {', '.join(sorted(self.patterns))}"
        if device_type not in self.devices:
            return f"{self.name} does not run on {device_type}"
        if dtype not in self.dtypes:
            return f"{self.name} does not support {str(dtype).removeprefix('torch.')}"
        if mode not in self.modes:
            return f"{self.name} does not support mode {mode}"
        return self.device_reason(pattern, device_type, dtype, mode)

    def device_reason(self, pattern: Pattern, device_type: str, dtype: torch.dtype, mode: str) -> str | None:
        """Hook for limits that depend on the device (e.g. CPU flex is inference only)."""
        return None

    def prepare(self, pattern: Pattern, n: int, device: torch.device | str, dtype: torch.dtype,
                q_len: int | None = None) -> Prepared:
        """Build masks, indices or compiled functions once; must not touch q, k, v. `q_len`: decode, the
        queries are the last q_len positions (None: every position)."""
        return Prepared(pattern, n, executed_pairs=(q_len or n) * n, q_len=q_len)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prep: Prepared) -> torch.Tensor:
        """q: (B, H, L, D); k, v: (B, KVH, N, D) with KVH dividing H (GQA/MQA) -> (B, H, L, D).

        L = N, or in decode q_len (the queries at positions N - L ... N - 1)."""
        raise NotImplementedError

    def estimate_pairs(self, pattern: Pattern, n: int) -> int:
        """(q, k) pairs the kernel will compute, for the preflight's time estimate (default: all n^2)."""
        return n * n

    def estimate_bytes(self, pattern: Pattern, batch: int, heads: int, n: int, head_dim: int,
                       dtype: torch.dtype, mode: str, device_type: str = "cpu") -> int:
        """Rough peak extra memory of one call, for the preflight (default: O(nnz) working set)."""
        elt = torch.finfo(dtype).bits // 8
        work = batch * heads * (pattern.nnz(n) * 2 + 4 * n * head_dim) * max(elt, 4)
        return work * (3 if mode == "fwdbwd" else 1)


def default_scale(head_dim: int) -> float:
    """1/sqrt(D), as in the write-up and SDPA."""
    return 1.0 / math.sqrt(head_dim)


def repeat_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V with one head per query head (a copy, for implementations without GQA support)."""
    rep = q.shape[1] // k.shape[1]
    return (k, v) if rep == 1 else (k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1))


def pattern_mask(pattern: Pattern, n: int, device: torch.device | str, q_len: int | None) -> torch.Tensor:
    """(L, N) bool, True = kept: the dense mask, or in decode the rule at the last q_len positions."""
    from sparsebench.patterns.decode import decode_mask

    return pattern.dense_mask(n, device) if q_len is None else decode_mask(pattern, n, q_len, device)
