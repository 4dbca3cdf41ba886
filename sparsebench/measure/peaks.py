"""Vendor peak rates of known GPUs, keyed by the name NVML reports: the datasheets' dense figures.

The measured matmul and copy ceilings of each run (meta.json) are the primary "% of peak"; these are the
marketing peaks beside them, so a reader sees both how close a kernel gets to what the card really sustains
and to what its vendor quotes.

Sources (dense, i.e. without 2:4 structured sparsity; SXM parts unless named):
- H100 SXM and H200 SXM: NVIDIA H100 Tensor Core GPU datasheet and NVIDIA H200 datasheet (2024): BF16/FP16
  989.5 TFLOP/s (the "1,979" figure is with sparsity), FP32 67 TFLOP/s; memory 3.35 TB/s (H100 SXM),
  4.8 TB/s (H200).
- H100 PCIe: same datasheet: BF16/FP16 756.5 TFLOP/s, FP32 51 TFLOP/s, 2.0 TB/s.
- A100 (SXM4 and PCIe, 40/80 GB): NVIDIA A100 datasheet (2021): BF16/FP16 312 TFLOP/s, FP32 19.5 TFLOP/s;
  80 GB SXM4 2.039 TB/s.
"""

from __future__ import annotations

# (NVML name prefix, {dtype: TFLOP/s}), most specific first: "NVIDIA H100 PCIe" before any H100.
VENDOR_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("NVIDIA H200 NVL", {"bfloat16": 835.5, "float16": 835.5, "float32": 60.0}),
    ("NVIDIA H200", {"bfloat16": 989.5, "float16": 989.5, "float32": 67.0}),
    ("NVIDIA H100 PCIe", {"bfloat16": 756.5, "float16": 756.5, "float32": 51.0}),
    ("NVIDIA H100 80GB HBM3", {"bfloat16": 989.5, "float16": 989.5, "float32": 67.0}),  # SXM5
    ("NVIDIA A100", {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5}),
]


def vendor_peak_tflops(device_name: str, dtype: str) -> float | None:
    """The datasheet's dense peak for this GPU and dtype, or None for an unknown device (and every CPU)."""
    for prefix, peaks in VENDOR_PEAK_TFLOPS:
        if str(device_name).startswith(prefix):
            return peaks.get(dtype)
    return None
