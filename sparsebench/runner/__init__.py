"""Sweeps: config expansion, preflight, isolated worker processes, streaming results, resume."""

from sparsebench.runner.cases import Case, MeasureSettings
from sparsebench.runner.config import SweepConfig, load_config
from sparsebench.runner.launcher import run_cases
from sparsebench.runner.sweep import ResultsDir, Sweep

__all__ = ["Case", "MeasureSettings", "ResultsDir", "Sweep", "SweepConfig", "load_config", "run_cases"]
