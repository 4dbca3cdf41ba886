"""`sparsebench plot` (not built yet)."""

from sparsebench.cli.common import fail


def plot_cmd() -> None:
    """Not built yet."""
    fail("'plot' is not implemented yet")
