"""Sweeps: config expansion, preflight, isolated worker processes, streaming results, resume."""

from sparsebench.runner.cases import Case
from sparsebench.runner.config import SweepConfig, load_config
from sparsebench.runner.launcher import run_cases

__all__ = ["Case", "SweepConfig", "load_config", "run_cases"]
