"""`sparsebench gate` (not built yet)."""

from sparsebench.cli.common import fail


def gate_cmd() -> None:
    """Not built yet."""
    fail("'gate' is not implemented yet")
