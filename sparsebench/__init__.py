"""sparsebench: is your sparse attention really faster? Benchmarks, plots and a CI gate."""

from sparsebench._version import __version__
from sparsebench.api import SparseAttention, attention, benchmark
from sparsebench.resolve import get_pattern

__all__ = ["SparseAttention", "attention", "benchmark", "get_pattern", "__version__"]
