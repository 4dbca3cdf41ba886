"""Analytic FLOP counts (FlopCounterMode gives 0 for CPU SDPA and raises on flex_attention)."""

from __future__ import annotations

# Backward costs 2.5x forward, so forward+backward is 3.5x forward: the convention of the FlashAttention
# papers' benchmarks (Dao et al. 2022, "FlashAttention", benchmarks/benchmark_flash_attention.py).
FWDBWD_FACTOR = 3.5


def attention_flops(pairs: int, batch: int, heads: int, head_dim: int, mode: str) -> int:
    """FLOPs of attention over `pairs` (q, k) pairs per batch and head.

    Forward: one multiply-add (2 FLOPs) per element of D for QK^T and again for PV, so 4*D per pair;
    softmax is not counted (Dao et al. 2022, sec. 4; same convention as the FlashAttention benchmarks).
    Heads are query heads: with GQA/MQA every query head still does its own work. `decode` is a forward pass.
    """
    forward = 4 * batch * heads * head_dim * pairs
    return int(forward * FWDBWD_FACTOR) if mode == "fwdbwd" else forward


def tflops(flops: float, latency_ms: float) -> float:
    """Throughput in TFLOP/s."""
    return flops / (latency_ms * 1e-3) / 1e12 if latency_ms > 0 else float("nan")
