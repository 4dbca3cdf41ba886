"""Latency: raw per-call samples in ms, warm-up and first call excluded by the caller."""

from __future__ import annotations

import statistics
import timeit
from collections.abc import Callable

import torch


def time_cpu(fn: Callable[[], object], min_run_time: float, min_samples: int) -> list[float]:
    """Per-call latency samples (ms) from torch.utils.benchmark's blocked_autorange, topped up to min_samples
    with single calls."""
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn})  # num_threads=1: CPU latency is one thread's
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    samples = [t * 1e3 for t in measurement.times]  # each entry is one block's mean per-call time
    return samples + time_cpu_calls(fn, min_samples - len(samples))


def time_cpu_calls(fn: Callable[[], object], count: int) -> list[float]:
    """`count` single calls (ms), timed as blocked_autorange times its calls: one thread, garbage collection
    off, by timeit. (Timer.timeit(1) would make two untimed warm-up calls before each.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timer = timeit.Timer(fn)
        return [timer.timeit(1) * 1e3 for _ in range(count)]
    finally:
        torch.set_num_threads(threads)


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
