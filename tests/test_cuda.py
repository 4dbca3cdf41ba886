"""The CUDA paths (skipped without a GPU): every implementation in bf16/fp16, forward and backward."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import brute_force_attention

from sparsebench.errors import Unsupported
from sparsebench.impls import IMPLS
from sparsebench.measure.peaks import vendor_peak_tflops
from sparsebench.patterns import PATTERNS, get_pattern

pytestmark = pytest.mark.cuda

TOL = {torch.bfloat16: 3e-2, torch.float16: 5e-3, torch.float32: 1e-4}
GRAD_TOL = {torch.bfloat16: 1e-1, torch.float16: 2e-2, torch.float32: 1e-3}
FLEX_FP32 = ("local", "bigbird")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("pattern_name", list(PATTERNS))
def test_cuda_forward_and_backward(impl_name, pattern_name, dtype):
    impl, pattern = IMPLS[impl_name], get_pattern(pattern_name)
    if impl.unsupported_reason(pattern, "cuda", dtype, "fwdbwd"):
        pytest.skip(impl.unsupported_reason(pattern, "cuda", dtype, "fwdbwd"))
    if impl_name == "flex" and dtype == torch.float32 and pattern_name not in FLEX_FP32:
        # every flex case compiles a forward and a backward kernel (tens of seconds on a fresh machine)
        pytest.skip("flex in float32: only " + ", ".join(FLEX_FP32) + " (compile time)")
    n = 1000
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 64, device="cuda", generator=gen).to(dtype).requires_grad_() for _ in range(3))
    try:
        out = impl.forward(q, k, v, impl.prepare(pattern, n, "cuda", dtype))
    except Unsupported as exc:  # a forced SDPA backend that cannot run the case says why
        pytest.skip(str(exc))
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = brute_force_attention(*ref_in, pattern.dense_mask(n, "cuda"))
    assert (out.double() - ref).abs().max() <= TOL[dtype]
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    want = torch.autograd.grad(ref, ref_in, grad_out.double())
    for g, w in zip(got, want):
        assert (g.double() - w).abs().max() <= GRAD_TOL[dtype] * max(1.0, w.abs().max().item())


@pytest.mark.parametrize("q_len", [None, 16], ids=["gqa-prefill", "gqa-decode"])
@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("pattern_name", ["causal", "local", "strided", "bigbird"])
def test_cuda_gqa_and_decode(impl_name, pattern_name, q_len):
    """8 query heads on 2 key/value heads in bf16, the full sequence or a 16-row decode step, against float64."""
    impl, pattern, n = IMPLS[impl_name], get_pattern(pattern_name), 1000
    mode = "fwd" if q_len is None else "decode"
    if impl.unsupported_reason(pattern, "cuda", torch.bfloat16, mode):
        pytest.skip(impl.unsupported_reason(pattern, "cuda", torch.bfloat16, mode))
    if impl_name == "flex" and pattern_name != "local":
        pytest.skip("flex: one pattern (compile time)")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 8, q_len or n, 64, device="cuda", generator=gen).to(torch.bfloat16)
    k, v = (torch.randn(2, 2, n, 64, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(2))
    try:
        with torch.no_grad():
            out = impl.forward(q, k, v, impl.prepare(pattern, n, "cuda", torch.bfloat16, q_len=q_len))
    except Unsupported as exc:
        pytest.skip(str(exc))
    mask = pattern.dense_mask(n, "cuda")[n - (q_len or n):]
    ref = brute_force_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), mask)
    assert (out.double() - ref).abs().max() <= TOL[torch.bfloat16]


def test_cuda_sweep_end_to_end(tmp_path):
    """`sparsebench run` on CUDA: event/do_bench timing, allocator and NVML peaks, ceilings, accuracy."""
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "sparsebench", "run", "--device", "cuda", "--dtype", "bf16", "--mode", "fwd",
           "--mode", "fwdbwd", "--mode", "decode", "--pattern", "local", "--pattern", "strided", "--seq", "4096",
           "--impl", "sdpa", "--impl", "structured", "--heads", "4", "--kv-heads", "2", "--min-run-time", "0.05",
           "--out-dir", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run(cmd, check=True, env=env, cwd=root, capture_output=True, timeout=300)
    frame = pd.read_csv(tmp_path / "results.csv")
    assert (frame.status == "ok").all(), frame[["pattern", "impl", "mode", "status", "error"]]
    assert (frame.latency_ms > 0).all() and (frame.peak_mem_mib >= 0).all()
    assert frame.nvml_peak_mib.notna().all() and (frame.nvml_peak_mib >= frame.nvml_context_mib).all()
    strided = frame[(frame.pattern == "strided") & (frame.impl == "structured")]
    assert (strided.flops_executed < 0.2 * strided.flops_useful / strided.density).all()  # ~1/8 of dense's pairs
    decode = frame[frame["mode"] == "decode"].set_index(["pattern", "impl"])
    assert decode.loc[("local", "structured"), "bytes_moved"] < decode.loc[("dense", "sdpa"), "bytes_moved"] / 40
    assert frame.pct_of_peak.notna().all()
    if vendor_peak_tflops(frame.device_name.iloc[0], "bfloat16"):  # a GPU in the datasheet table
        assert frame.pct_of_vendor_peak.notna().all()
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["ceilings"]["cuda"]["bfloat16"]["matmul_tflops"] > 10
