"""The device's own ceilings, measured: dense matmul throughput and copy bandwidth (for the plots' roofs)."""

from __future__ import annotations

import torch

from sparsebench.measure import timing


def measure_ceilings(device: str, dtype: torch.dtype, min_run_time: float = 0.3) -> dict[str, float]:
    """{'matmul_tflops': ..., 'copy_gbps': ...} for this device and dtype."""
    dev = torch.device(device)
    timer = timing.time_cuda if dev.type == "cuda" else timing.time_cpu
    # CPU half-precision matmul is slow (one 2048^3 float16 product took 43 s on a 2-core VM): a smaller one
    size = 8192 if dev.type == "cuda" else 2048 if dtype == torch.float32 else 512
    a = torch.randn(size, size, device=dev).to(dtype)
    b = torch.randn(size, size, device=dev).to(dtype)
    matmul_ms = timing.summarize(timer(lambda: a @ b, min_run_time, 5))["latency_ms"]
    src = torch.empty(64 * 2**20 if dev.type == "cpu" else 1024 * 2**20, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_ms = timing.summarize(timer(lambda: dst.copy_(src), min_run_time, 5))["latency_ms"]
    return {"matmul_tflops": 2 * size**3 / (matmul_ms * 1e-3) / 1e12,
            # read + write of every byte
            "copy_gbps": 2 * src.numel() / (copy_ms * 1e-3) / 1e9}
