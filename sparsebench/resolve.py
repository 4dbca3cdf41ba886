"""Names to implementations and patterns, user code included: the layer above the registries.

`impls` and `patterns` know only what is registered in them; this module loads a `module:attr` spec or the
installed entry-point plugins first (`plugins` registers them), so the registries never import `plugins`.
"""

from __future__ import annotations

from sparsebench import impls, patterns, plugins
from sparsebench.impls import IMPLS, Impl
from sparsebench.patterns import PATTERNS, SELECTIONS, Pattern


def get_impl(name: str) -> Impl:
    """A registered implementation by name; a `module:attr` spec or an installed plugin is loaded first."""
    if name not in IMPLS:
        if plugins.is_spec(name):
            return IMPLS[plugins.load_impl(name)]
        plugins.load_entry_points()
    return impls.get_impl(name)


def get_pattern(name: str, **params: int) -> Pattern:
    """Build a pattern by name (see `patterns.get_pattern`); a `module:attr` spec or an installed plugin is
    loaded first."""
    if name not in PATTERNS and name not in SELECTIONS:
        if plugins.is_spec(name):
            name = plugins.load_pattern(name)
        else:
            plugins.load_entry_points()
    return patterns.get_pattern(name, **params)


__all__ = ["get_impl", "get_pattern"]
