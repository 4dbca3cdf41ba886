"""sparsebench: is your sparse attention really faster? Benchmarks, plots and a CI gate."""

from sparsebench.api import SparseAttention, attention, benchmark
from sparsebench.patterns import get_pattern

__version__ = "0.1.0"
__all__ = ["SparseAttention", "attention", "benchmark", "get_pattern", "__version__"]
