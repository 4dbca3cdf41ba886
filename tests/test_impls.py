"""Each (pattern, impl) pair supported on CPU against the float64 brute force: outputs and gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import brute_force_attention

from sparsebench.errors import Unsupported
from sparsebench.impls import IMPLS, get_impl
from sparsebench.patterns import PATTERNS, causal_of, get_pattern

# n not a multiple of 64 or 128; B > 1, H > 1. The larger shape doubles the time: it runs with the slow tests.
SHAPES = [(2, 3, 1000, 32), pytest.param((2, 2, 1537, 64), marks=pytest.mark.slow)]
# flex compiles per (pattern, n) on CPU (~5-15 s each), so it is checked on fewer cases.
FLEX_PATTERNS = ["local", "strided", "bigbird", "longformer"]
DENSE_IMPLS = ["seed", "eager", "sdpa"]


def inputs(shape, dtype=torch.float32, grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(dtype).requires_grad_(grad) for _ in range(3)]


def run(impl_name, pattern, q, k, v):
    impl = get_impl(impl_name)
    return impl.forward(q, k, v, impl.prepare(pattern, q.shape[-2], q.device, q.dtype))


def supported(impl_name, pattern_name, mode="fwd"):
    return get_impl(impl_name).unsupported_reason(get_pattern(pattern_name), "cpu", torch.float32, mode) is None


CASES = [(i, p) for i in DENSE_IMPLS for p in PATTERNS if supported(i, p)]


@pytest.mark.parametrize("shape", SHAPES, ids=["n1000d32", "n1537d64"])
@pytest.mark.parametrize("impl_name,pattern_name", CASES)
def test_forward_matches_float64(impl_name, pattern_name, shape):
    pattern = get_pattern(pattern_name)
    q, k, v = inputs(shape)
    expected = brute_force_attention(q, k, v, pattern.dense_mask(shape[2]))
    out = run(impl_name, pattern, q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert (out.double() - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("impl_name,pattern_name", CASES)
def test_gradients_match_float64(impl_name, pattern_name):
    pattern = get_pattern(pattern_name)
    q, k, v = inputs((2, 2, 300, 32), grad=True)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(run(impl_name, pattern, q, k, v), (q, k, v), grad_out)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = torch.autograd.grad(brute_force_attention(q64, k64, v64, pattern.dense_mask(300)), (q64, k64, v64),
                              grad_out.double())
    for g, r in zip(got, ref):
        assert (g.double() - r).abs().max() <= 1e-4


@pytest.mark.slow  # flex compiles once per pattern
@pytest.mark.parametrize("pattern_name", FLEX_PATTERNS)
def test_flex_forward_matches_float64(pattern_name):
    pattern = get_pattern(pattern_name)
    q, k, v = inputs((2, 3, 1000, 32))
    expected = brute_force_attention(q, k, v, pattern.dense_mask(1000))
    assert (run("flex", pattern, q, k, v).double() - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("pattern_name", list(PATTERNS))
def test_flex_block_mask_equals_create_block_mask(pattern_name):
    """block_mask_for builds, a band of rows at a time, the BlockMask that create_block_mask builds from all n^2
    pairs at once: same partial and full blocks, in the same order, both ways (kv and q)."""
    from torch.nn.attention.flex_attention import create_block_mask

    from sparsebench.impls.flex import block_mask_for

    for pattern, n in ((get_pattern(pattern_name), 1537), (causal_of(get_pattern(pattern_name)), 300)):
        want = create_block_mask(pattern.mask_mod_for(n, "cpu"), None, None, n, n, device="cpu")
        got = block_mask_for(pattern, n, "cpu", chunk_entries=1 << 15)  # bands of one 128-row block
        assert got.seq_lengths == want.seq_lengths == (n, n)
        for prefix in ("", "full_"):
            for side in ("kv", "q"):
                count, indices = (getattr(want, f"{prefix}{side}_{what}") for what in ("num_blocks", "indices"))
                assert torch.equal(getattr(got, f"{prefix}{side}_num_blocks"), count)
                kept = torch.arange(indices.shape[-1]) < count[..., None]  # entries past the count are unused
                assert torch.equal(getattr(got, f"{prefix}{side}_indices")[kept], indices[kept])


def test_flex_skips_blocks_and_reports_block_density():
    prep = get_impl("flex").prepare(get_pattern("local"), 4096, "cpu", torch.float32)
    assert prep.executed_pairs < 4096 * 4096 / 8
    assert 0 < prep.extra["block_density"] < 0.1
    strided = get_impl("flex").prepare(get_pattern("strided"), 4096, "cpu", torch.float32)
    assert strided.extra["block_density"] == 1.0  # every 128-block holds a kept column: nothing skipped


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("impl_name", DENSE_IMPLS)
def test_low_precision_forward(impl_name, dtype, tol):
    pattern = get_pattern("local")
    q, k, v = inputs((1, 2, 200, 64), dtype)
    expected = brute_force_attention(q, k, v, pattern.dense_mask(200))
    out = run(impl_name, pattern, q, k, v)
    assert out.dtype == dtype
    assert (out.double() - expected).abs().max() <= tol


def test_unsupported_reasons_name_the_limit():
    assert "inference only" in IMPLS["flex"].unsupported_reason(get_pattern("local"), "cpu", torch.float32, "fwdbwd")
    assert "local" in IMPLS["seed"].unsupported_reason(get_pattern("causal"), "cpu", torch.float32, "fwd")
    assert IMPLS["sdpa"].unsupported_reason(get_pattern("causal"), "mps", torch.float32, "fwd")


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("impl_name", [pytest.param(name, marks=pytest.mark.slow) if name == "flex" else name
                                       for name in IMPLS])  # flex compiles once per pattern
def test_every_impl_declares_what_it_does_not_support(impl_name, mode):
    """On CPU in float32, each pattern is either declared unsupported, with a one-line reason, or runs:
    forward against float64, and for fwdbwd a finite backward."""
    impl, n = IMPLS[impl_name], 80
    for name in PATTERNS:
        pattern = get_pattern(name)
        reason = impl.unsupported_reason(pattern, "cpu", torch.float32, mode)
        if reason is not None:
            assert reason.strip() and "\n" not in reason, (name, reason)
            continue
        q, k, v = inputs((1, 2, n, 16), grad=mode == "fwdbwd")
        out = run(impl_name, pattern, q, k, v)
        expected = brute_force_attention(q.detach(), k.detach(), v.detach(), pattern.dense_mask(n))
        assert (out.double() - expected).abs().max() <= 1e-4, name
        if mode == "fwdbwd":
            assert all(torch.isfinite(g).all() for g in torch.autograd.grad(out.sum(), (q, k, v))), name


def test_auto_raises_unsupported_with_reason():
    from sparsebench.api import resolve_impl

    with pytest.raises(Unsupported, match="inference only"):
        resolve_impl(get_pattern("local"), "flex", torch.device("cpu"), torch.float32, "fwdbwd")


@pytest.mark.parametrize("device,pattern,mode,want", [
    ("cuda", "local", "fwd", "flex"), ("cuda", "sliding_window", "fwdbwd", "flex"), ("cuda", "strided", "fwd",
    "structured"), ("cuda", "dense", "fwd", "sdpa"), ("cuda", "causal", "fwdbwd", "sdpa"), ("cpu", "local", "fwd",
    "structured"), ("cpu", "dense", "fwdbwd", "structured")])
def test_auto_follows_the_measured_order(device, pattern, mode, want):
    """impl="auto" picks per device and pattern, from the committed CPU and H200 results (no GPU needed)."""
    from sparsebench.api import resolve_impl

    assert resolve_impl(get_pattern(pattern), "auto", torch.device(device), torch.bfloat16, mode) == want


@pytest.mark.slow
def test_flex_never_falls_back_to_eager_in_a_sweep(monkeypatch):
    """Each mask is a new graph. Past dynamo's default recompile limit (8), flex would silently run eagerly and
    materialise all n^2 scores: make that fallback an error, then run more masks than the limit."""
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    n = 256
    q, k, v = inputs((1, 1, n, 16))
    for window in range(2, 20, 2):  # 9 masks: one more than the default limit
        pattern = get_pattern("local", window=window)
        expected = brute_force_attention(q, k, v, pattern.dense_mask(n))
        assert (run("flex", pattern, q, k, v).double() - expected).abs().max() <= 1e-4, window
