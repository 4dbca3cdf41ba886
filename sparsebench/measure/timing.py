"""Latency: raw per-call samples in ms, warm-up and first call excluded by the caller."""

from __future__ import annotations

import contextlib
import math
import statistics
import timeit
from collections.abc import Callable, Iterator

import torch


@contextlib.contextmanager
def timed_threads(device: torch.device | str = "cpu") -> Iterator[None]:
    """On the CPU, torch runs on one thread inside, as the timed calls do (the thread count is restored after).
    Calls made before timing need it too: torch.compile specialises its kernels to the thread count, so a first
    call on every thread would leave the first timed call to compile again."""
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
    with timed_threads():
        timer = timeit.Timer(fn)
        return [timer.timeit(1) * 1e3 for _ in range(count)]


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


# A call whose event-timed median is under this (ms) is timed again with CUDA graphs: CUDA events add 10-30 us of
# jitter and the CPU's launch overhead, which dominate calls this short (flex local at 8192 on an H200: an IQR
# of 59% of its median).
GRAPH_BELOW_MS = 0.1
GRAPH_REPLAY_MS = 1.0  # each timed replay runs enough calls back to back to take about this long


def time_cuda_small(fn: Callable[[], object], min_run_time: float, min_samples: int,
                    events: Callable[..., list[float]] | None = None,
                    graphs: Callable[..., list[float] | None] | None = None) -> tuple[list[float], float | None]:
    """(per-call samples in ms, launch overhead in ms or None).

    Timed with events (`time_cuda`); a case whose median is under GRAPH_BELOW_MS is timed again with CUDA graphs
    (`time_cuda_graph`), whose samples are then its latency, and the launch overhead is the event-timed median
    minus the graph-timed one: what launching the call from Python costs on top of the kernels. A call that
    cannot be captured (it synchronises with the CPU, say) keeps its event timing and no overhead.
    `events` and `graphs` replace the two timers (tests)."""
    events = events or time_cuda
    graphs = graphs or time_cuda_graph
    samples = events(fn, min_run_time, min_samples)
    median = statistics.median(samples)
    if median >= GRAPH_BELOW_MS:
        return samples, None
    graphed = graphs(fn, min_run_time, min_samples, median)
    if not graphed:
        return samples, None
    return graphed, median - statistics.median(graphed)


def time_cuda_graph(fn: Callable[[], object], min_run_time: float, min_samples: int, call_ms: float,
                    cuda: object = None) -> list[float] | None:
    """Per-call samples (ms) from CUDA graph replays, or None when fn cannot be captured.

    One graph holds `calls` back-to-back calls of fn, enough for about GRAPH_REPLAY_MS at `call_ms` a call (at
    most 1000); each sample is one replay's event time over `calls`. No L2 flush between the calls: a flush
    inside the graph would cost more than the calls it separates, and the inputs of a call this short are
    small. Warm-up on a side stream first, as capture requires. `cuda`: torch.cuda, or a stand-in (tests).
    """
    cuda = cuda or torch.cuda
    calls = max(1, min(1000, math.ceil(GRAPH_REPLAY_MS / max(call_ms, 1e-6))))
    try:
        stream = cuda.Stream()
        stream.wait_stream(cuda.current_stream())
        with cuda.stream(stream):
            for _ in range(3):
                fn()
        cuda.current_stream().wait_stream(stream)
        graph = cuda.CUDAGraph()
        with cuda.graph(graph):
            for _ in range(calls):
                fn()
    except Exception:  # not capturable: keep the event timing
        return None
    samples: list[float] = []
    while len(samples) < min_samples or sum(samples) * calls < min_run_time * 1e3:
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        cuda.synchronize()
        samples.append(start.elapsed_time(end) / calls)
        if len(samples) >= 10_000:
            break
    return samples


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
