"""`sparsebench run` (not built yet)."""

from sparsebench.cli.common import fail


def run_cmd() -> None:
    """Not built yet."""
    fail("'run' is not implemented yet")
