"""Latency: raw per-call samples in ms, warm-up and first call excluded by the caller."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch


def time_cpu(fn: Callable[[], object], min_run_time: float, min_samples: int) -> list[float]:
    """Per-call latency samples (ms) from torch.utils.benchmark's blocked_autorange."""
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn})
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    samples = [t * 1e3 for t in measurement.times]  # each entry is one block's mean per-call time
    while len(samples) < min_samples:
        samples.append(timer.timeit(1).times[0] * 1e3)
    return samples


def time_cuda(fn: Callable[[], object], min_run_time: float, min_samples: int) -> list[float]:
    """Per-call latency samples (ms) with CUDA events and an L2 flush before each call.

    Uses triton.testing.do_bench (which does both) when Triton is importable.
    """
    rep_ms = max(min_run_time * 1e3, 1.0)
    try:
        from triton.testing import do_bench

        samples = do_bench(fn, warmup=25, rep=rep_ms, return_mode="all")
        if len(samples) >= min_samples:
            return [float(s) for s in samples]
    except ImportError:
        pass
    return _time_cuda_events(fn, rep_ms, min_samples)


def _time_cuda_events(fn: Callable[[], object], rep_ms: float, min_samples: int) -> list[float]:
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")  # larger than any L2 cache
    samples: list[float] = []
    while len(samples) < min_samples or sum(samples) < rep_ms:
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end))
        if len(samples) >= 10_000:
            break
    return samples


def summarize(samples_ms: list[float]) -> dict[str, float]:
    """Median, interquartile range and minimum of the samples."""
    if len(samples_ms) >= 2:
        q1, _, q3 = statistics.quantiles(samples_ms, n=4, method="inclusive")
    else:
        q1 = q3 = samples_ms[0]
    return {"latency_ms": statistics.median(samples_ms), "latency_iqr_ms": q3 - q1,
            "latency_min_ms": min(samples_ms)}
