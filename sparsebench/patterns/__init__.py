"""Sparsity patterns: an explicit registry, one small file per pattern family."""

from __future__ import annotations

import warnings
from dataclasses import fields

from sparsebench.errors import PatternError
from sparsebench.patterns.base import Pattern
from sparsebench.patterns.bigbird import BigBird
from sparsebench.patterns.dense import Causal, Dense
from sparsebench.patterns.dilated import Dilated
from sparsebench.patterns.fixed import Fixed
from sparsebench.patterns.intersect import CausalOf, causal_of
from sparsebench.patterns.local import Local
from sparsebench.patterns.longformer import Longformer
from sparsebench.patterns.selection import SELECTIONS
from sparsebench.patterns.sliding_window import SlidingWindow
from sparsebench.patterns.strided import Strided

PATTERNS: dict[str, type[Pattern]] = {
    "dense": Dense,
    "causal": Causal,
    "local": Local,
    "strided": Strided,
    "sliding_window": SlidingWindow,
    "dilated": Dilated,
    "fixed": Fixed,
    "longformer": Longformer,
    "bigbird": BigBird,
}


def pattern_params(name: str) -> dict[str, int]:
    """The parameter names of a pattern with their defaults."""
    return {f.name: f.default for f in fields(pattern_class(name))}


def pattern_class(name: str) -> type[Pattern]:
    """A registered pattern class: a static pattern (PATTERNS) or a selection pattern (SELECTIONS)."""
    return PATTERNS[name] if name in PATTERNS else SELECTIONS[name]


def get_pattern(name: str, **params: int) -> Pattern:
    """Build a pattern by name; parameters it does not take are an error (use `select_params` to filter).

    A parameter's old name (results written before a rename, e.g. bigbird's `seed`) is accepted with a
    DeprecationWarning. Registered patterns only: `sparsebench.resolve.get_pattern` loads plugins first.
    """
    if name not in PATTERNS and name not in SELECTIONS:
        raise PatternError(f"unknown pattern {name!r}; choose from: {', '.join([*PATTERNS, *SELECTIONS])}")
    params = current_names(name, params)
    allowed = pattern_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        hint = ", ".join(allowed) or "none"
        raise PatternError(f"pattern {name!r} takes no parameter {', '.join(unknown)} (it takes: {hint})")
    return pattern_class(name)(**params)


def current_names(name: str, params: dict[str, int]) -> dict[str, int]:
    """`params` with old parameter names of pattern `name` replaced by the current ones."""
    renamed = pattern_class(name).renamed
    old = [key for key in params if key in renamed]
    if not old:
        return dict(params)
    for key in old:
        warnings.warn(f"{name}: parameter {key!r} is now called {renamed[key]!r}", DeprecationWarning, stacklevel=3)
        if renamed[key] in params:
            raise PatternError(f"{name}: give {renamed[key]!r} only (its old name {key!r} is given too)")
    return {renamed.get(key, key): value for key, value in params.items()}


def select_params(name: str, params: dict[str, int]) -> dict[str, int]:
    """The subset of `params` that pattern `name` takes (a sweep passes one parameter set to all)."""
    allowed = pattern_params(name)
    return {k: v for k, v in params.items() if k in allowed and v is not None}


__all__ = ["PATTERNS", "Pattern", "CausalOf", "causal_of", "current_names", "get_pattern", "pattern_params",
           "select_params", "SELECTIONS", "pattern_class"]
