"""`sparsebench info` (not built yet)."""

from sparsebench.cli.common import fail


def info_cmd() -> None:
    """Not built yet."""
    fail("'info' is not implemented yet")
