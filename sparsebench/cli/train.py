"""`sparsebench train` (not built yet)."""

from sparsebench.cli.common import fail


def train_cmd() -> None:
    """Not built yet."""
    fail("'train' is not implemented yet")
