"""Which machine a result set ran on (from its meta.json), and what gating across two machines means.

Normalising by the dense reference cancels a machine's overall speed, but not a different CPU model, core
count or GPU: those change the kernels' speeds relative to each other. So a baseline from another machine
still gates the deterministic metrics (flops, density, memory, status), and its latency findings are only
warnings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparsebench import gate


@dataclass(frozen=True)
class Machine:
    """What meta.json says about the hardware; None where it says nothing (no meta.json, or an older one)."""

    cpu: str | None = None
    cores: int | None = None
    gpus: tuple[str, ...] | None = None  # distinct GPU names; () for none

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Machine:
        cpu = meta.get("cpu")
        cores = meta.get("cpu_count")
        gpus = meta.get("gpus")
        names = None
        if isinstance(gpus, list):
            names = tuple(sorted({str(g.get("name")) for g in gpus if isinstance(g, dict) and g.get("name")}))
        return cls(str(cpu) if cpu else None, cores if isinstance(cores, int) and not isinstance(cores, bool)
                   else None, names)

    def describe(self) -> str:
        """e.g. 'AMD EPYC, 2 cores, no GPU'; 'unknown machine' when meta.json says nothing."""
        parts = [self.cpu] if self.cpu else []
        if self.cores is not None:
            parts.append(f"{self.cores} cores")
        if self.gpus is not None:
            parts.append(" + ".join(self.gpus) if self.gpus else "no GPU")
        return ", ".join(parts) or "unknown machine"


def differences(baseline: Machine, current: Machine) -> list[str]:
    """What differs, e.g. ['CPU AMD EPYC vs Intel Xeon', 'cores 2 vs 4']; a field unknown on either side is
    not compared (an older meta.json cannot prove a difference)."""
    out = []
    if baseline.cpu and current.cpu and baseline.cpu != current.cpu:
        out.append(f"CPU {baseline.cpu} vs {current.cpu}")
    if baseline.cores is not None and current.cores is not None and baseline.cores != current.cores:
        out.append(f"cores {baseline.cores} vs {current.cores}")
    if baseline.gpus is not None and current.gpus is not None and baseline.gpus != current.gpus:
        out.append(f"GPU {' + '.join(baseline.gpus) or 'none'} vs {' + '.join(current.gpus) or 'none'}")
    return out


def reason(found: list[str]) -> str:
    """One line: why the two result sets count as from different machines."""
    return f"baseline from another machine ({'; '.join(found)})"


def latency_as_warnings(report: gate.GateReport, found: list[str]) -> gate.GateReport:
    """Demote the report's latency findings (regressions and improvements) to warnings, say why in one note, and
    stop latency from counting in later re-runs (`gate.confirm`). Deterministic findings are left as they are."""
    if not found:
        return report
    for case in report.cases:
        for finding in case.findings:
            if finding.metric == "latency" and finding.verdict in (gate.REGRESSION, gate.IMPROVEMENT):
                finding.verdict = gate.WARNING
                finding.message += " [other machine: not gated]"
    report.gate_latency = False
    report.notes.append(f"{reason(found)}: latency findings are warnings; flops, density, memory and status are "
                        "still gated (--strict-machine exits 3 instead)")
    return report
