"""The CUDA paths (skipped without a GPU): every implementation in bf16/fp16, forward and backward."""

from __future__ import annotations

import pytest
import torch
from conftest import brute_force_attention

from sparsebench.impls import IMPLS
from sparsebench.patterns import PATTERNS, get_pattern

pytestmark = pytest.mark.cuda

TOL = {torch.bfloat16: 3e-2, torch.float16: 5e-3, torch.float32: 1e-4}
GRAD_TOL = {torch.bfloat16: 1e-1, torch.float16: 2e-2, torch.float32: 1e-3}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("pattern_name", list(PATTERNS))
def test_cuda_forward_and_backward(impl_name, pattern_name, dtype):
    impl, pattern = IMPLS[impl_name], get_pattern(pattern_name)
    if impl.unsupported_reason(pattern, "cuda", dtype, "fwdbwd"):
        pytest.skip(impl.unsupported_reason(pattern, "cuda", dtype, "fwdbwd"))
    n = 1000
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 64, device="cuda", generator=gen).to(dtype).requires_grad_() for _ in range(3))
    out = impl.forward(q, k, v, impl.prepare(pattern, n, "cuda", dtype))
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = brute_force_attention(*ref_in, pattern.dense_mask(n, "cuda"))
    assert (out.double() - ref).abs().max() <= TOL[dtype]
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    want = torch.autograd.grad(ref, ref_in, grad_out.double())
    for g, w in zip(got, want):
        assert (g.double() - w).abs().max() <= GRAD_TOL[dtype] * max(1.0, w.abs().max().item())
