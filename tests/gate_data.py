"""Synthetic result sets for the gate's tools (export, history, machines): the real schema, realistic noise."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pandas as pd

from sparsebench import gate
from sparsebench.results import ResultWriter, format_samples

# (pattern, params, impl, latency at n=1024 in ms, peak MiB); dense/sdpa is the normalisation reference
CASES = [
    ("dense", "", "sdpa", 10.0, 200.0),
    ("local", "window=64", "flex", 3.0, 80.0),
    ("local", "window=64", "structured", 2.0, 60.0),
    ("strided", "stride=8", "structured", 4.0, 120.0),
]
SEQ_LENS = (1024, 2048)
FLEX = "local(window=64)/flex/1024/float32/fwd"
MACHINE = {"cpu": "AMD EPYC", "cpu_count": 2, "gpus": []}


def make_rows(seed: int, slow: dict[str, float] | None = None, change: dict[str, dict] | None = None,
              device: str = "cpu", device_name: str = "Synthetic CPU", scale: float = 1.0) -> list[dict]:
    """One run: every case at every seq_len, 15 samples with ±5% jitter; `slow` multiplies the latency of named
    cases, `change` overrides columns of named cases (names as the gate prints them)."""
    rng = random.Random(seed)
    slow, change = slow or {}, change or {}
    rows = []
    for n in SEQ_LENS:
        for pattern, params, impl, ms, mib in CASES:
            density = 0.0625 if pattern != "dense" else 1.0
            row: dict[str, Any] = {
                "run_id": f"run{seed}", "pattern": pattern, "params": params, "impl": impl, "device": device,
                "dtype": "float32", "mode": "fwd", "batch": 1, "heads": 8, "seq_len": n, "head_dim": 64,
                "device_name": device_name, "density": density, "flops_useful": 4 * 8 * 64 * density * n * n,
                "flops_executed": 4 * 8 * 64 * n * n, "peak_mem_mib": mib * n / 1024, "max_abs_err": 0.0,
                "status": "ok", "error": ""}
            if device == "cpu":  # CPU peak_mem_mib is the exact peak of tensor bytes; the RSS peak beside it
                row["rss_peak_mib"] = row["peak_mem_mib"] + 30.0
            name = gate.case_name(row)
            mean = ms * (n / 1024) ** 2 * scale * slow.get(name, 1.0)
            samples = [mean * rng.uniform(0.95, 1.05) for _ in range(15)]
            series = pd.Series(samples)
            row.update(samples_ms=format_samples(samples), latency_ms=float(series.median()), n_samples=15,
                       latency_iqr_ms=float(series.quantile(0.75) - series.quantile(0.25)))
            row.update(change.get(name, {}))
            rows.append(row)
    return rows


def write_run(directory: Path, rows: list[dict], meta: dict[str, Any] | None = None) -> Path:
    """results.csv (and meta.json when `meta` is given) in `directory`; returns the results.csv."""
    path = directory / "results.csv"
    with ResultWriter(path) as writer:
        for row in rows:
            writer.write(row)
    if meta is not None:
        (directory / "meta.json").write_text(json.dumps({"schema_version": 2, **meta}))
    return path
