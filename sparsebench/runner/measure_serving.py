"""Measure one serving case (packed prefill or paged decode) inside a worker: setup, first call, accuracy
against each sequence's own float64 reference, memory, latency; the calls as in measure_case (inference only)."""

from __future__ import annotations

import time

import torch

from sparsebench import serving
from sparsebench.measure import accuracy, flops, quality, timing
from sparsebench.patterns.decode import decode_nnz
from sparsebench.results import Measurement
from sparsebench.runner.cases import Case, MeasureSettings
from sparsebench.runner.measure_case import _accuracy_problems, _sync, memory_and_timing
from sparsebench.serving import ServingBatch


def make_serving_inputs(case: Case, settings: MeasureSettings | None = None) -> ServingBatch:
    """The case's batch: its lengths drawn from (seq_lens, seq_lens_seed), seeded random q, k, v."""
    seed = settings.input_seed if settings is not None else 0
    lengths = serving.draw(case.seq_lens, case.seq_lens_seed)
    return serving.make_batch(lengths, case.heads, case.kv_heads, case.head_dim, case.torch_dtype, case.device,
                              page_size=case.page_size if case.mode == "decode" else 0, seed=seed)


def sequence_errors(out: torch.Tensor, batch: ServingBatch, pattern) -> tuple[float, float]:
    """(max_abs_err, rel_err), the worst over the sequences, each against its own unpacked float64 reference
    (sampled rows, the pattern at the sequence's own length; a selection pattern's kept set is its selection on
    the sequence alone)."""
    worst = (0.0, 0.0)
    for i, n in enumerate(batch.lengths):
        q, k, v = batch.sequence(i)
        if batch.decode:
            mine = out[i:i + 1]
        else:
            start = batch.offsets[i]
            mine = out[:, :, start:start + n]
        err, rel = accuracy.output_errors(mine, q, k, v, quality.checked_rule(pattern, q, k))
        worst = (max(worst[0], err), rel if not rel <= worst[1] else worst[1])  # NaN wins
    return worst


def useful_pairs(pattern, lengths: list[int], decode: bool) -> int:
    """Kept (q, k) pairs summed over the sequences: the pattern at each one's length (decode: its last row)."""
    return sum(decode_nnz(pattern, n, 1) if decode else pattern.nnz(n) for n in lengths)


def measure_serving(case: Case, batch: ServingBatch, settings: MeasureSettings) -> Measurement:
    """Measure one serving case (status ok or inaccurate); raises when the implementation fails."""
    device = torch.device(case.device)
    pattern = case.build_pattern()
    impl = serving.get_serving_impl(case.impl, case.mode, pattern)

    _sync(device)
    t0 = time.perf_counter()
    prep = impl.prepare(pattern, batch)
    _sync(device)
    setup_ms = (time.perf_counter() - t0) * 1e3
    calls = 0

    def call() -> torch.Tensor:
        nonlocal calls
        calls += 1
        with torch.no_grad():
            return impl.forward(batch, prep)

    t0 = time.perf_counter()
    with timing.timed_threads(device):  # as the timed calls run (see measure_case)
        out = call()
    _sync(device)
    first_call_s = time.perf_counter() - t0
    err, rel = sequence_errors(out, batch, pattern)
    del out
    problems = _accuracy_problems(rel, err, case.torch_dtype)

    timed = memory_and_timing(call, device, first_call_s, settings)
    stats = timing.summarize(timed.samples)
    decode = case.mode == "decode"
    # a selection's: what its last call kept on these inputs
    nnz = prep.extra["nnz"] if "nnz" in prep.extra else useful_pairs(pattern, batch.lengths, decode)
    total = sum(batch.lengths)
    # heads: every query head does its own work; batch 1: the pairs are already summed over the sequences
    useful = flops.attention_flops(nnz, 1, case.heads, case.head_dim, case.mode)
    elt = torch.finfo(case.torch_dtype).bits // 8
    bytes_moved = 2 * case.kv_heads * prep.kv_rows * case.head_dim * elt if decode else None
    seconds = stats["latency_ms"] * 1e-3
    return Measurement(
        status="inaccurate" if problems else "ok",
        error="; ".join(problems),
        density=nnz / float(total if decode else sum(n * n for n in batch.lengths)),  # of the keys / the pairs
        block_density=prep.extra.get("block_density"),
        nnz=nnz,
        flops_useful=useful,
        flops_executed=flops.attention_flops(prep.executed_pairs, 1, case.heads, case.head_dim, case.mode),
        **stats,
        samples=timed.samples,
        tflops_useful=flops.tflops(useful, stats["latency_ms"]),
        bytes_moved=bytes_moved,
        peak_mem_mib=timed.peak_mib,
        nvml_peak_mib=timed.nvml_peak_mib,
        nvml_context_mib=timed.nvml_context_mib,
        setup_ms=setup_ms,
        first_call_s=first_call_s,
        max_abs_err=err,
        tolerance=accuracy.TOLERANCE[case.torch_dtype],
        n_calls=calls,
        rel_err=rel,
        rss_peak_mib=timed.rss_mib,
        launch_overhead_ms=timed.launch_ms,
        extra={"total_tokens": total, "padding_waste": prep.padding_waste,
               "tokens_per_s": (len(batch.lengths) if decode else total) / seconds},
    )
