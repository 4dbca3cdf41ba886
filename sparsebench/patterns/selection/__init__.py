"""Selection patterns: kept sets computed from (q, k) on every call (see base.py); an explicit registry."""

from __future__ import annotations

from sparsebench.patterns.base import Pattern
from sparsebench.patterns.selection.base import Selection, SelectionPattern
from sparsebench.patterns.selection.oracle_topk import OracleTopk
from sparsebench.patterns.selection.quest import Quest
from sparsebench.patterns.selection.topk_blocks import TopkBlocks
from sparsebench.patterns.selection.topk_tokens import TopkTokens
from sparsebench.patterns.selection.user import is_selector, selector_pattern

SELECTIONS: dict[str, type[SelectionPattern]] = {
    "topk_blocks": TopkBlocks,
    "topk_tokens": TopkTokens,
    "oracle_topk": OracleTopk,
    "quest": Quest,
}


def is_selection(pattern: Pattern) -> bool:
    """Whether a pattern's kept set is computed from the inputs."""
    return isinstance(pattern, SelectionPattern)


__all__ = ["SELECTIONS", "Selection", "SelectionPattern", "is_selection", "is_selector", "selector_pattern"]
