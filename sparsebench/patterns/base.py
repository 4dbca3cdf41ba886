"""The Pattern base class: one sparsity rule, four views of it (mask_mod, dense mask, nnz, validation)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch

from sparsebench.errors import PatternError

# Parameters are token or block counts (and a seed): past 2^31 - 1 they overflow the masks' index arithmetic.
MAX_PARAM = 2**31 - 1

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Pattern:
    """A sparsity pattern over a square (n, n) attention matrix; subclasses are frozen dataclasses.

    Subclasses define `mask_mod` (tensor ops only, so FlexAttention can vmap it), `row_counts`
    (how many keys each query keeps, O(n) memory), `count_pairs` (nnz in closed form, or in O(n / block)
    memory) and optionally `check_params`.
    """

    name: ClassVar[str]
    doc: ClassVar[str] = ""
    causal_rule: ClassVar[bool] = False  # True when the rule already implies k <= q
    renamed: ClassVar[dict[str, str]] = {}  # old parameter name -> current name, still accepted by get_pattern

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise PatternError(f"{self.name}: parameter {f.name} must be an integer, got {value!r}")
            if abs(value) > MAX_PARAM:
                raise PatternError(f"{self.name}: parameter {f.name} = {value} is too large: at most {MAX_PARAM}")
        self.check_params()

    def check_params(self) -> None:
        """Raise PatternError on parameters that are invalid for any n."""

    def validate(self, n: int) -> None:
        """Raise PatternError when the pattern cannot be used at sequence length n."""
        if not isinstance(n, int) or n <= 0:
            raise PatternError(f"sequence length must be a positive integer, got {n!r}")

    # Parameters added after results were published, with the value that reproduces the earlier rule: written
    # (in `params`, so in the CSV and the gate's case key) only when they differ, so earlier rows keep their key.
    later_params: ClassVar[dict[str, int]] = {}

    @property
    def params(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if self.later_params.get(k, v + 1) != v}

    def label(self) -> str:
        """Short human label, e.g. 'local(window=64)'."""
        return pattern_label(self.name, self.params)

    # --- the rule -------------------------------------------------------------------------
    def mask_mod(self, b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mask_mod_for(self, n: int, device: torch.device | str = "cpu") -> MaskMod:
        """The FlexAttention mask_mod at length n (only patterns with lookup tables depend on n)."""
        rule = self.mask_mod

        def mask_mod(b, h, q, k):  # a plain function: create_block_mask rejects bound methods
            return rule(b, h, q, k)

        mask_mod.__name__ = f"{self.name}_mask"
        return mask_mod

    def row_counts(self, n: int) -> torch.Tensor:
        """Number of kept keys for each query row, shape (n,), int64, without an n x n tensor."""
        raise NotImplementedError

    # --- derived views ----------------------------------------------------------------------
    def rows_mask(self, rows: torch.Tensor, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Boolean mask (len(rows), n) of the kept keys for the given query rows."""
        rows = rows.to(device=device, dtype=torch.int64)
        keys = torch.arange(n, device=device)
        zero = torch.zeros((), dtype=torch.int64, device=device)
        return self.mask_mod_for(n, device)(zero, zero, rows[:, None], keys[None, :])

    def dense_mask(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Boolean mask (n, n); True where query q may attend to key k."""
        self.validate(n)
        return self.rows_mask(torch.arange(n, device=device), n, device)

    def count_pairs(self, n: int) -> int:
        """Exact number of kept (q, k) pairs at a valid n. This fallback takes O(n) memory: patterns
        override it with a closed form (or O(n / block) memory), so nnz stays cheap at any n."""
        return int(self.row_counts(n).sum())

    def nnz(self, n: int) -> int:
        """Exact number of kept (q, k) pairs."""
        self.validate(n)
        return self.count_pairs(n)

    def density(self, n: int) -> float:
        return self.nnz(n) / float(n * n)


def pattern_label(name: str, params: Mapping[str, object], sep: str = ",") -> str:
    """'name(key=value,...)', or the name alone without parameters: a pattern's label, also where only its name
    and parameters are known (a results row, whose pattern may be user code not loaded here)."""
    inner = sep.join(f"{k}={v}" for k, v in params.items())
    return f"{name}({inner})" if inner else name


def ramp_sum(count: int, shift: int) -> int:
    """sum(max(q + shift, 0) for q in range(count)), exactly, in O(1)."""
    if count <= 0:
        return 0
    if shift >= 0:
        return count * shift + count * (count - 1) // 2
    top = count - 1 + shift  # the last term, when positive
    return top * (top + 1) // 2 if top > 0 else 0


def positive(pattern: Pattern, *names: str) -> None:
    """Check that each named parameter is > 0."""
    for name in names:
        value = getattr(pattern, name)
        if value <= 0:
            raise PatternError(f"{pattern.name}: {name} must be > 0, got {value}")
