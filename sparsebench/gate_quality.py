"""The gate's quality check: with deterministic inputs a pattern's selection is deterministic, so a lower `recall`
or a higher `err_vs_full` than the baseline's is a regression (a change that loses quality fails CI).

Like density, they are gated as exact metrics, up to QUALITY_RTOL: float64 reductions over the same inputs
agree to far better than that on one machine; across machines the inputs' float32 products may round apart.
Rows without them (files written before these columns) are not compared.
"""

from __future__ import annotations

import math
from typing import Any

QUALITY_RTOL = 1e-6
# metric -> +1 when larger is better, -1 when smaller is better
QUALITY_METRICS = {"recall": 1, "err_vs_full": -1}


def _value(row: dict[str, Any], metric: str) -> float:
    try:
        value = float(row.get(metric))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return value


def quality_findings(base: dict[str, Any], cur: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, verdict, message) for each quality metric that got worse ("regression") or better
    ("improvement") than QUALITY_RTOL allows; one warning instead when the rows were measured on other inputs."""
    base_inputs, cur_inputs = (str(row.get("inputs") or "") for row in (base, cur))
    if base_inputs and cur_inputs and base_inputs != cur_inputs and base_inputs != "nan" and cur_inputs != "nan":
        return [("inputs", "warning", f"measured on other inputs ({base_inputs} -> {cur_inputs}): recall and "
                                      "err_vs_full not compared")]
    out = []
    for metric, better in QUALITY_METRICS.items():
        b, c = _value(base, metric), _value(cur, metric)
        if math.isnan(b) or math.isnan(c) or abs(c - b) <= QUALITY_RTOL * max(abs(b), abs(c), 1e-12):
            continue
        verdict = "improvement" if (c - b) * better > 0 else "regression"
        out.append((metric, verdict, f"{metric} {b:.6g} -> {c:.6g} (quality is gated exactly; refresh the "
                                     "baseline if intended)"))
    return out
