"""Preflight: skip cases that cannot fit in free memory or finish within the timeout."""

from __future__ import annotations

import torch

from sparsebench.errors import SparsebenchError
from sparsebench.impls.selection import for_pattern
from sparsebench.measure.flops import attention_flops
from sparsebench.resolve import get_impl
from sparsebench.runner.cases import Case
from sparsebench.runner.measure_case import SLOW_CASE_CALLS

# Conservative sustained throughput (FLOP/s) for the time estimate: far below real peaks on purpose,
# so only hopeless cases are skipped and the per-case timeout catches the rest.
ASSUMED_FLOPS = {"cpu": 20e9, "cuda": 20e12}
# The calls of a case slow enough to come near the timeout: on the CPU, the first call and the slow-case samples
# (measure_case); on CUDA, the first call, warm-up, memory call and the fewest timed samples.
CALLS_PER_CASE = {"cpu": SLOW_CASE_CALLS, "cuda": 10}
MEMORY_HEADROOM = 0.8  # use at most 80% of what is free


def free_bytes(device: str) -> int:
    """Memory free on the device, without creating a CUDA context in this process when NVML works."""
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        try:
            import pynvml

            pynvml.nvmlInit()
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).free)
        except Exception:
            return int(torch.cuda.mem_get_info(index)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def input_bytes(case: Case) -> int:
    """q and out (H heads, q_len rows), k and v (KVH heads, n rows); for fwdbwd the gradients of each too."""
    elt = torch.finfo(case.torch_dtype).bits // 8
    rows = 2 * case.heads * case.q_len + 2 * case.kv_heads * case.seq_len
    return (2 if case.mode == "fwdbwd" else 1) * rows * case.batch * case.head_dim * elt


def serving_input_bytes(case: Case, lengths: list[int]) -> int:
    """A serving batch's q and out (one row per sequence in decode) and its k and v (the packed stream, or the
    pages of the cache)."""
    elt = torch.finfo(case.torch_dtype).bits // 8
    if case.mode == "decode":
        kv_rows = sum(-(-n // case.page_size) for n in lengths) * case.page_size
        rows = 2 * case.heads * len(lengths) + 2 * case.kv_heads * kv_rows
    else:
        rows = (2 * case.heads + 2 * case.kv_heads) * sum(lengths)
    return rows * case.head_dim * elt


def check_serving_fits(case: Case, lengths: list[int]) -> None:
    """A usage error (before the sweep) when a serving batch's inputs alone cannot fit in free memory."""
    need, free = serving_input_bytes(case, lengths), free_bytes(case.device)
    if need > free * MEMORY_HEADROOM:
        raise SparsebenchError(f"--seq-lens {case.seq_lens}: {sum(lengths)} tokens need ~{need / 2**30:.1f} GiB of "
                               f"inputs alone, {free / 2**30:.1f} GiB free on {case.device}; give shorter lengths or "
                               "fewer of them")


def _serving_estimate(case: Case) -> tuple[int, float]:
    """A serving case: its inputs, plus the padded copies (and mask) of the padded baselines, or the packed and
    block-aligned copies of the others; time from the padded pairs, an upper bound for every implementation."""
    from sparsebench.serving import draw

    lengths = draw(case.seq_lens, case.seq_lens_seed)
    elt = torch.finfo(case.torch_dtype).bits // 8
    inputs = serving_input_bytes(case, lengths)
    padded = len(lengths) * max(lengths)
    if case.mode == "decode":
        extra = 2 * case.kv_heads * padded * case.head_dim * elt + padded
        pairs = padded
        if case.pattern == "quest":  # its float32 page bounds, a mask per query head, the kept pages gathered
            pages = -(-max(lengths) // case.page_size)
            gathered = min(padded, len(lengths) * (case.build_pattern().topk + 1) * case.page_size)
            extra += (2 * case.kv_heads * len(lengths) * pages * case.head_dim * 4 + case.heads * padded
                      + 2 * case.heads * gathered * case.head_dim * elt)
    else:
        extra = (2 * case.heads + 2 * case.kv_heads) * padded * case.head_dim * elt
        if case.impl == "sdpa" and case.pattern not in ("dense", "causal"):
            extra += padded * max(lengths)  # its boolean mask, per sequence
        if case.impl == "nested" and case.device_type == "cpu":
            # torch's nested SDPA has no fused CPU kernel: its math fallback holds float32 scores, weights and a
            # copy for every head of the padded batch (measured: 21 GB at 16 x 3789 keys, H = 8)
            extra += 3 * case.heads * padded * max(lengths) * 4
        pairs = padded * max(lengths)
    flops = attention_flops(pairs, 1, case.heads, case.head_dim, case.mode)
    return inputs + extra, CALLS_PER_CASE[case.device_type] * flops / ASSUMED_FLOPS[case.device_type]


def estimate(case: Case) -> tuple[int, float]:
    """(peak bytes, seconds) this case is expected to need."""
    if case.serving:
        return _serving_estimate(case)
    impl, pattern = get_impl(case.impl), case.build_pattern()
    impl = for_pattern(impl, pattern)  # a selection pattern: the implementation's selection runner
    if case.mode == "decode":  # at most one float32 score and one mask entry per (query row, key) pair
        pairs = case.q_len * case.seq_len
        need = input_bytes(case) + case.batch * case.heads * pairs * 5
    else:
        args = (pattern, case.batch, case.heads, case.seq_len, case.head_dim, case.torch_dtype, case.mode)
        need = input_bytes(case) + impl.estimate_bytes(*args, device_type=case.device_type)
        pairs = impl.estimate_pairs(pattern, case.seq_len)
    flops = attention_flops(pairs, case.batch, case.heads, case.head_dim, case.mode)
    seconds = CALLS_PER_CASE[case.device_type] * flops / ASSUMED_FLOPS[case.device_type]
    return need, seconds


def skip_reason(case: Case, timeout_s: float, free: int) -> str | None:
    """A one-line reason to skip the case, or None to run it."""
    # The inputs first: they take O(1) to count, and where they cannot fit the estimate's exact nnz (O(n / block)
    # memory and more time for some patterns) is not worth computing.
    need, seconds = (0 if case.serving else input_bytes(case)), 0.0
    if need <= free * MEMORY_HEADROOM:
        need, seconds = estimate(case)
    if need > free * MEMORY_HEADROOM:
        return f"preflight: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free on {case.device}"
    if seconds > timeout_s:
        return f"preflight: estimated ~{seconds:.0f} s, over the {timeout_s:.0f} s timeout"
    return None
