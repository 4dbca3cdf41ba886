"""A pattern with its parameters as a typed value, parsed once (the sweep's config) and carried as it is: in a
Case, to the worker and back. Its text forms belong to the file boundary only: the CSV's params cell
'k=v;k=v' (schema.format_params / parse_params) and the label 'name(k=v,...)' (labels.pattern_label)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sparsebench.results.labels import pattern_label
from sparsebench.results.schema import format_params, parse_params

Params = tuple[tuple[str, int], ...]  # (name, value) pairs sorted by name: equal parameters compare equal
ParamsLike = Params | Mapping[str, int] | Iterable[tuple[str, int]] | str | None


def canonical_params(params: ParamsLike) -> Params:
    """Parameters as sorted (name, int) pairs, from pairs, a mapping, or the CSV's 'k=v;k=v' text (empty: none;
    a NaN cell too)."""
    if params is None or (isinstance(params, float) and math.isnan(params)):
        return ()
    if isinstance(params, str):
        params = parse_params(params)
    items = params.items() if isinstance(params, Mapping) else params
    return tuple(sorted((str(name), int(value)) for name, value in items))


@dataclass(frozen=True)
class PatternSpec:
    """A pattern's name and integer parameters (canonical: sorted pairs, so equal specs compare and hash equal)."""

    name: str
    params: Params = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", canonical_params(self.params))

    @classmethod
    def from_text(cls, name: str, text: Any) -> PatternSpec:
        """The spec of a results row: its pattern and params cells."""
        return cls(str(name), canonical_params(text))

    @property
    def kwargs(self) -> dict[str, int]:
        """The parameters as keyword arguments of the pattern's constructor."""
        return dict(self.params)

    def params_text(self) -> str:
        """The CSV's params cell: canonical 'k=v;k=v'."""
        return format_params(self.kwargs)

    def label(self) -> str:
        """'local(window=64)', as the pattern labels itself."""
        return pattern_label(self.name, self.kwargs)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.kwargs}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PatternSpec:
        return cls(data["name"], canonical_params(data.get("params") or {}))
