"""Measure one case inside a worker process: setup, first call, accuracy, memory, latency.

The calls of a case: the first call (compilation, lazy init; its output gives the accuracy), then
- in fwdbwd, the gradient check: one forward+backward with its own upstream gradient (measure/gradients.py);
- a fast case: `warmup` calls, one memory-tracked call (the allocator's peak on CUDA; on CPU the RSS
  high-water mark), on CPU one call under the profiler's memory tracking (the exact peak of live tensor bytes),
  and the timed calls (blocked_autorange: its block-size estimate, then at least `min_run_time` seconds and
  `min_samples` samples);
- a slow case (CPU, a timed call of SLOW_CALL_S or more): one RSS-tracked call that is also the first
  timed sample, then SLOW_SAMPLES - 1 more, then the call under memory tracking. A call that long is its own
  warm-up, and a median of a few seconds-long calls is as steady as one of many. The RSS tracker works before and
  after the call, never inside it, and adds nothing measurable to it (scripts/tracker_cost.py); the profiler
  works inside the call, so its call is never timed.
Every call is counted (`n_calls`). On the CPU every call of the implementation but the gradient check's runs on
one thread, as the timed calls do: torch.compile specialises its kernels to the thread count, so a warm-up on
every thread would leave the first timed call to compile again.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sparsebench.impls.selection import for_pattern
from sparsebench.measure import accuracy, flops, gradients, memory, quality, timing
from sparsebench.patterns.decode import decode_nnz
from sparsebench.resolve import get_impl
from sparsebench.results import Measurement
from sparsebench.runner.cases import Case, MeasureSettings

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]

SLOW_CALL_S = 1.0  # a call at least this long (steady, not the first) makes a slow case
SLOW_SAMPLES = 3  # timed calls of a slow case, its memory-tracked call included (at most min_samples)
# What a slow CPU case costs: the first call, its timed calls and the tensor-memory call (fwdbwd: and the
# gradient check's).
SLOW_CASE_CALLS = 1 + SLOW_SAMPLES + 1


def make_inputs(case: Case, seed: int = 0) -> Inputs:
    """Seeded q (B, H, L, D), k and v (B, KVH, N, D) and, for fwdbwd, the output gradient: every impl of a shape
    group sees the same inputs. L = N, or in decode the q_len newest positions."""
    gen = torch.Generator().manual_seed(seed)
    q_shape = (case.batch, case.heads, case.q_len, case.head_dim)
    kv_shape = (case.batch, case.kv_heads, case.seq_len, case.head_dim)
    needs_grad = case.mode == "fwdbwd"
    q, k, v = (torch.randn(shape, generator=gen).to(case.device, case.torch_dtype).requires_grad_(needs_grad)
               for shape in (q_shape, kv_shape, kv_shape))
    grad_out = torch.randn(q_shape, generator=gen).to(case.device, case.torch_dtype) if needs_grad else None
    return q, k, v, grad_out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(case: Case, inputs: Inputs, settings: MeasureSettings, latency_only: bool = False) -> Measurement:
    """Measure one case (status ok or inaccurate); raises when the implementation fails. `latency_only`: the
    latency alone, no accuracy, quality or memory (NaN there): the A/B gate's later rounds, whose first round
    measured those (they are the same in every round) and which want short rounds."""
    device = torch.device(case.device)
    impl = get_impl(case.impl)
    pattern = case.build_pattern()
    impl = for_pattern(impl, pattern)  # a selection pattern runs on the implementation's selection runner
    q, k, v, grad_out = inputs

    _sync(device)
    t0 = time.perf_counter()
    q_len = case.q_len if case.mode == "decode" else None
    prep = impl.prepare(pattern, case.seq_len, device, case.torch_dtype, q_len=q_len)
    _sync(device)
    setup_ms = (time.perf_counter() - t0) * 1e3

    calls = 0  # every call of the implementation in this case, whatever made it

    def forward() -> torch.Tensor:
        nonlocal calls
        calls += 1
        with torch.no_grad():
            return impl.forward(q, k, v, prep)

    def forward_backward() -> torch.Tensor:
        nonlocal calls
        calls += 1
        out = impl.forward(q, k, v, prep)
        torch.autograd.grad(out, (q, k, v), grad_out, allow_unused=True)  # a missing one: the gradient check's
        return out

    call: Callable[[], torch.Tensor] = forward_backward if case.mode == "fwdbwd" else forward

    # First call: compilation, autotuning, lazy init. Reported apart, never in the latency. On the CPU on one thread,
    # as the timed calls run: torch.compile specialises to the thread count (the first timed call would compile).
    t0 = time.perf_counter()
    try:
        with timing.timed_threads(device):
            out = call()
    except Exception as exc:
        # fwdbwd: name the gradient whose backward fails, when one does
        named = gradients.name_failing_gradient(lambda *x: impl.forward(*x, prep), q, k, v, grad_out) \
            if case.mode == "fwdbwd" else None
        if named is None:
            raise
        raise named from exc
    _sync(device)
    first_call_s = time.perf_counter() - t0

    cache = getattr(prep.state, "cache", None)  # a selection's cache metadata (quest's page bounds)
    if latency_only:
        quality_cols, err, rel, problems = {}, math.nan, math.nan, []
    else:
        quality_cols = quality.columns(out, q, k, v, pattern, cache=cache)  # recall, err_vs_full; a selection's
        quality_cols.pop("max_abs_err", None)  # measured below, with its relative error, like every pattern's
        rule = quality.checked_rule(pattern, q, k, cache)
        err, rel = accuracy.output_errors(out, q, k, v, rule)
        problems = _accuracy_problems(rel, err, case.torch_dtype)
    del out
    grad_err = None
    if case.mode == "fwdbwd" and not latency_only:
        calls += 1
        grad = gradients.check(lambda *x: impl.forward(*x, prep), q, k, v, rule)
        grad_err = grad.worst[1]
        problems += _gradient_problems(grad, case.torch_dtype)

    timed = memory_and_timing(call, device, first_call_s, settings, latency_only)
    stats = timing.summarize(timed.samples)
    if "nnz" in quality_cols:  # a selection's: what the measured inputs kept
        nnz = quality_cols.pop("nnz")
    else:
        nnz = pattern.nnz(case.seq_len) if q_len is None else decode_nnz(pattern, case.seq_len, q_len)
    useful = flops.attention_flops(nnz, case.batch, case.heads, case.head_dim, case.mode)
    # Decode is memory-bound: the K and V rows it reads (per batch and key/value head) are its figure of merit.
    bytes_moved = None
    if q_len is not None:
        elt = torch.finfo(case.torch_dtype).bits // 8
        bytes_moved = 2 * case.batch * case.kv_heads * (prep.kv_rows or case.seq_len) * case.head_dim * elt
    return Measurement(
        status="inaccurate" if problems else "ok",
        error="; ".join(problems),
        density=quality_cols.pop("density", nnz / float(case.q_len * case.seq_len)),
        block_density=prep.extra.get("block_density"),
        nnz=nnz,
        flops_useful=useful,
        flops_executed=flops.attention_flops(prep.executed_pairs, case.batch, case.heads, case.head_dim, case.mode),
        **stats,
        samples=timed.samples,
        tflops_useful=flops.tflops(useful, stats["latency_ms"]),
        bytes_moved=bytes_moved,
        peak_mem_mib=timed.peak_mib,
        nvml_peak_mib=timed.nvml_peak_mib,
        nvml_context_mib=timed.nvml_context_mib,
        setup_ms=setup_ms + prep.extra.get("metadata_ms", 0.0),  # + cache metadata built on the first call
        first_call_s=first_call_s,
        max_abs_err=err,
        tolerance=accuracy.TOLERANCE[case.torch_dtype],
        n_calls=calls,
        rel_err=rel,
        grad_err=grad_err,
        rss_peak_mib=timed.rss_mib,
        launch_overhead_ms=timed.launch_ms,
        extra=quality_cols,  # the inputs' columns come from the sweep (Sweep.measure), on every row
    )


@dataclass(frozen=True)
class Timed:
    """A case's latency samples and memory peaks (NaN where not measured)."""

    samples: list[float]
    peak_mib: float = math.nan  # the allocator's (CUDA) or the live tensors' (CPU) peak
    rss_mib: float = math.nan  # CPU: the RSS high-water mark
    nvml_peak_mib: float = math.nan
    nvml_context_mib: float = math.nan
    launch_ms: float | None = None  # CUDA calls timed with CUDA graphs


def memory_and_timing(call: Callable[[], torch.Tensor], device: torch.device, first_call_s: float,
                      settings: MeasureSettings, latency_only: bool = False) -> Timed:
    """After the first call: the memory peaks (not with `latency_only`), then the timed calls. A slow CPU case
    times a few calls only (`_slow_case`). On the CPU every call runs on one thread, as the timed ones."""
    with timing.timed_threads(device):
        return _memory_and_timing(call, device, first_call_s, settings, latency_only)


def _memory_and_timing(call: Callable[[], torch.Tensor], device: torch.device, first_call_s: float,
                       settings: MeasureSettings, latency_only: bool) -> Timed:
    slow = _slow_case(call, device, first_call_s, settings) if device.type == "cpu" else None
    if slow is not None:
        rss_mib, samples = slow
        peak_mib = math.nan if latency_only else memory.tensor_peak_mib(call)[0]
        return Timed(samples, peak_mib, rss_mib)
    for _ in range(settings.warmup):
        call()
    _sync(device)
    if device.type == "cuda":
        # Hand the allocator's cached blocks (earlier cases, mask building) back to the driver, so NVML's
        # used memory is the context, the inputs and what this call takes, not the cache.
        gc.collect()
        torch.cuda.empty_cache()
        with memory.NvmlSampler(device.index or 0) as nvml:
            peak_mib = memory.call_peak_mib(call, device)
        samples, launch_ms = timing.time_cuda_small(call, settings.min_run_time, settings.min_samples)
        return Timed(samples, peak_mib, nvml_peak_mib=nvml.peak_mib, nvml_context_mib=nvml.context_mib,
                     launch_ms=launch_ms)
    if latency_only:
        return Timed(timing.time_cpu(call, settings.min_run_time, settings.min_samples))
    rss_mib = memory.call_peak_mib(call, device)
    peak_mib, _ = memory.tensor_peak_mib(call)
    return Timed(timing.time_cpu(call, settings.min_run_time, settings.min_samples), peak_mib, rss_mib)


def _accuracy_problems(rel: float, err: float, dtype: torch.dtype) -> list[str]:
    """The output's error over its dtype's tolerance (NaN included), as one message; else nothing."""
    tolerance = accuracy.TOLERANCE[dtype]
    return [] if rel <= tolerance else [f"rel_err {rel:.3g} > tolerance {tolerance:.0e} (max_abs_err {err:.3g})"]


def _gradient_problems(grad: gradients.GradCheck, dtype: torch.dtype) -> list[str]:
    """Each gradient whose relative error is over its dtype's tolerance (NaN included), naming it."""
    tolerance = accuracy.GRAD_TOLERANCE[dtype]
    return [f"{name} rel error {value:.3g} > tolerance {tolerance:.0e}" for name, value in grad.errors.items()
            if not value <= tolerance]


def _slow_case(call: Callable[[], torch.Tensor], device: torch.device, first_call_s: float,
               settings: MeasureSettings) -> tuple[float, list[float]] | None:
    """(peak MiB, samples) of a slow CPU case, or None for a fast one (measured with warm-up and autorange).

    Only a first call of SLOW_CALL_S or more (on one thread, as the timed calls) makes one more call before
    deciding; when that call is fast (the first was compilation or lazy init), the case is measured as a fast one,
    this call one more warm-up: at most SLOW_CALL_S more."""
    if first_call_s < SLOW_CALL_S:
        return None
    peak_mib, (ms,) = memory.tracked_call(lambda: timing.time_cpu_calls(call, 1), device)
    if ms < SLOW_CALL_S * 1e3:
        return None
    return peak_mib, [ms, *timing.time_cpu_calls(call, min(settings.min_samples, SLOW_SAMPLES) - 1)]
