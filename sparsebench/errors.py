"""Exceptions shared across sparsebench."""


class SparsebenchError(Exception):
    """Base class: a problem the user can fix; the CLI prints it as one line, exit code 2."""


class PatternError(SparsebenchError, ValueError):
    """A pattern name or parameter is invalid."""


class Unsupported(SparsebenchError):
    """An implementation cannot run this (pattern, device, dtype, mode) combination."""


class NotComparable(SparsebenchError):
    """Two result sets cannot be compared (other device, other result schema, no common case): gate exit 3."""
