"""The gate's quality check: with deterministic inputs a pattern's selection is deterministic, so a lower `recall`
or a higher `err_vs_full` than the baseline's is a regression (a change that loses quality fails CI).

Like density, they are gated as exact metrics, up to QUALITY_RTOL: float64 reductions over the same inputs
agree to far better than that on one machine; across machines the inputs' float32 products may round apart.
Rows without them (files written before these columns) are not compared, nor rows measured on other inputs: a
kind (`inputs`) or, where both rows have one, an `input_id` (the seed, a file's content hash) of its own. Where
both rows keep all of full attention's mass (recall 1: dense, causal, a window wider than n), err_vs_full is
the kernel's rounding against full attention, not a cost of the pattern, and max_abs_err gates that already.
"""

from __future__ import annotations

import math
from typing import Any

from sparsebench.results import same_inputs, text_cell

QUALITY_RTOL = 1e-6
ALL_MASS = 1 - 1e-9  # recall at or above this: the row keeps every key full attention weighs
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
    if not same_inputs(base, cur):
        base_inputs, cur_inputs = (" ".join(filter(None, (text_cell(row, c) for c in ("inputs", "input_id"))))
                                   for row in (base, cur))
        return [("inputs", "warning", f"measured on other inputs ({base_inputs} -> {cur_inputs}): recall and "
                                      "err_vs_full not compared")]
    keeps_all = all(_value(row, "recall") >= ALL_MASS for row in (base, cur))
    out = []
    for metric, better in QUALITY_METRICS.items():
        b, c = _value(base, metric), _value(cur, metric)
        if math.isnan(b) or math.isnan(c) or abs(c - b) <= QUALITY_RTOL * max(abs(b), abs(c), 1e-12):
            continue
        if metric == "err_vs_full" and keeps_all:
            continue
        verdict = "improvement" if (c - b) * better > 0 else "regression"
        out.append((metric, verdict, f"{metric} {b:.6g} -> {c:.6g} (quality is gated exactly; refresh the "
                                     "baseline if intended)"))
    return out
