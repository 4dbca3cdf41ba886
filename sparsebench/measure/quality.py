"""What a pattern keeps of full attention, and a selection pattern's own columns, on sampled query rows.

Columns (all computed on `accuracy.sample_rows` of the queries, in float64, O(rows * n) memory):
- recall: the share of full attention's softmax mass that falls on the kept keys, averaged over the sampled rows,
  batches and heads. Full attention is causal for a causal pattern (a causal selection, or a static rule that
  implies k <= q), dense otherwise. 1.0 for full attention itself.
- err_vs_full: the largest absolute difference between the implementation's output and full attention's on the
  sampled rows: the quality the pattern costs (max_abs_err keeps its meaning: against the pattern's own
  reference).
For selection patterns, also:
- max_abs_err: against a float64 reference of the same selection (what accuracy.max_abs_err is for static rules);
- density (mean over batches and heads), density_min, density_max: kept pairs / (L * n) of each batch and head;
- nnz: kept pairs per batch and head (the mean), for the useful FLOPs;
- select_ms: the selection alone, timed like the calls (one thread on the CPU), median of a few calls.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from sparsebench.measure import timing
from sparsebench.measure.accuracy import sample_rows
from sparsebench.patterns import Pattern
from sparsebench.patterns.selection import Selection, SelectionPattern

SELECT_SAMPLES = 5  # timed selection calls (fewer when one takes over SLOW_SELECT_S)
SLOW_SELECT_S = 0.5
ROW_CHUNK = 8  # query rows per float64 reference chunk


def full_is_causal(pattern: Pattern) -> bool:
    """Whether the full attention a pattern replaces is causal."""
    if isinstance(pattern, SelectionPattern):
        return pattern.is_causal
    return bool(pattern.causal_rule)


class KeptSet:
    """One call's selection, fixed, as the rule the float64 references read (`rows_mask`): a selection pattern's
    output and gradients are checked against the kept set its own selection gives on these inputs."""

    def __init__(self, selection: Selection) -> None:
        self.selection = selection

    def rows_mask(self, positions: torch.Tensor, n: int, device: Any = None) -> torch.Tensor:
        return self.selection.rows_mask(positions)


def checked_rule(pattern: Pattern, q: torch.Tensor, k: torch.Tensor, cache: dict | None = None) -> Any:
    """What the accuracy and gradient checks compare against: the pattern's own rule, or for a selection
    pattern the kept set its selection gives on (q, k) (deterministic: the kernel selects the same)."""
    return KeptSet(pattern.select(q, k, cache)) if isinstance(pattern, SelectionPattern) else pattern


def kept_rows(pattern: Pattern, selection: Selection | None, positions: torch.Tensor, n: int) -> torch.Tensor:
    """(B or 1, H or 1, r, n) bool: the kept keys of the query rows at `positions`."""
    if selection is not None:
        return selection.rows_mask(positions)
    return pattern.rows_mask(positions, n, positions.device)[None, None]


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, kept: torch.Tensor,
              causal_full: bool) -> dict[str, torch.Tensor]:
    """float64 on the given query rows (B, H, r, ...): the kept set's output (`out`), full attention's output
    (`full`) and the share of full attention's mass on the kept keys (`recall`, (B, H, r))."""
    B, H, L, D = q.shape
    n = k.shape[2]
    rep = H // k.shape[1]
    k64, v64 = (x.detach().double().repeat_interleave(rep, dim=1) for x in (k, v))  # (B, H, n, D)
    positions = rows.to(q.device) + (n - L)
    keys = torch.arange(n, device=q.device)
    outs: dict[str, list[torch.Tensor]] = {"out": [], "full": [], "recall": []}
    for start in range(0, len(rows), ROW_CHUNK):
        idx = rows[start:start + ROW_CHUNK].to(q.device)
        pos = positions[start:start + ROW_CHUNK]
        scores = q.detach()[:, :, idx].double() @ k64.transpose(-1, -2) * D ** -0.5  # (B, H, r, n)
        if causal_full:
            scores = scores.masked_fill(keys[None, :] > pos[:, None], float("-inf"))
        full = torch.softmax(scores, dim=-1)
        keep = kept[:, :, start:start + ROW_CHUNK]
        outs["full"].append(full @ v64)
        outs["recall"].append((full * keep).sum(dim=-1))
        outs["out"].append(torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1) @ v64)
    return {name: torch.cat(parts, dim=2) for name, parts in outs.items()}


def time_select(pattern: SelectionPattern, q: torch.Tensor, k: torch.Tensor, cache: dict | None = None) -> float:
    """Median ms of `pattern.select(q, k)` alone (after the calls that warmed it up), one thread on the CPU;
    `cache`: the case's cache metadata (quest's page bounds), as the measured calls use it."""
    device = q.device

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        pattern.select(q, k, cache)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1e3

    with timing.timed_threads(device):  # as the timed calls run
        samples = [once()]
        while len(samples) < SELECT_SAMPLES and samples[0] < SLOW_SELECT_S * 1e3:
            samples.append(once())
    return statistics.median(samples)


def columns(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
            rows: torch.Tensor | None = None, cache: dict | None = None) -> dict[str, Any]:
    """The quality columns of one case (see the module docstring); `out` is the implementation's output,
    `cache` the selection's cache metadata of the case (quest's page bounds)."""
    L, n = q.shape[2], k.shape[2]
    rows = sample_rows(L) if rows is None else rows
    selection = pattern.select(q, k, cache) if isinstance(pattern, SelectionPattern) else None
    kept = kept_rows(pattern, selection, rows.to(q.device) + (n - L), n)
    ref = reference(q, k, v, rows, kept, full_is_causal(pattern))
    got = out.detach()[:, :, rows.to(out.device)].double()
    cols: dict[str, Any] = {"recall": float(ref["recall"].mean()),
                            "err_vs_full": float((got - ref["full"]).abs().max())}
    if selection is not None:
        counts = selection.pair_counts().double()  # (B, Hs)
        area = float(L * n)
        cols.update(max_abs_err=float((got - ref["out"]).abs().max()), nnz=int(round(float(counts.mean()))),
                    density=float(counts.mean()) / area, density_min=float(counts.min()) / area,
                    density_max=float(counts.max()) / area, select_ms=time_select(pattern, q, k, cache))
    return cols
