"""The shapes people run: GQA/MQA (fewer key/value heads), decoding against a KV cache, SDPA's backends."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import StorageSizes, brute_force_attention
from typer.testing import CliRunner

from sparsebench.cli import app
from sparsebench.errors import SparsebenchError, Unsupported
from sparsebench.impls import IMPLS, get_impl
from sparsebench.measure.peaks import vendor_peak_tflops
from sparsebench.patterns import PATTERNS, get_pattern
from sparsebench.patterns.base import Pattern
from sparsebench.patterns.decode import check_decode_rows, decode_mask, decode_nnz
from sparsebench.results import Measurement, make_row

HEADS = 4
# flex compiles per shape and mask: a few patterns keep its cases to seconds
FLEX_PATTERNS = ("local", "bigbird")
CPU_IMPLS = [name for name, impl in IMPLS.items()
             if impl.unsupported_reason(get_pattern("dense"), "cpu", torch.float32, "fwd") is None]
# flex compiles on its first call (seconds per case on a CPU): its cases run with the slow tests
COMPILED_SLOW = [pytest.param(name, marks=pytest.mark.slow) if name == "flex" else name for name in CPU_IMPLS]
BACKEND_PATTERNS = ("dense", "causal", "local")  # the forced SDPA backends are SDPA: three patterns suffice


def qkv(n: int, kv_heads: int, q_len: int | None = None, d: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, HEADS, q_len or n, d, generator=gen)
    k, v = (torch.randn(2, kv_heads, n, d, generator=gen) for _ in range(2))
    return q, k, v


reference = brute_force_attention  # float64, K and V repeated per query head (the definition of GQA)


def runs(impl_name: str, pattern_name: str, mode: str = "fwd") -> bool:
    impl = IMPLS[impl_name]
    if impl_name == "flex" and pattern_name not in FLEX_PATTERNS:
        return False
    if not impl.in_default_sweep and pattern_name not in BACKEND_PATTERNS:
        return False
    return impl.unsupported_reason(get_pattern(pattern_name), "cpu", torch.float32, mode) is None


def forward(impl_name, pattern, q, k, v, q_len=None):
    impl = get_impl(impl_name)
    prep = impl.prepare(pattern, k.shape[-2], "cpu", q.dtype, q_len=q_len)
    with torch.no_grad():
        return impl.forward(q, k, v, prep)


@pytest.mark.parametrize("kv_heads", [1, 2, HEADS])
@pytest.mark.parametrize("impl_name", COMPILED_SLOW)
@pytest.mark.parametrize("pattern_name", list(PATTERNS))
def test_gqa_matches_the_expanded_reference(impl_name, pattern_name, kv_heads):
    if not runs(impl_name, pattern_name):
        pytest.skip("not run by this implementation (or flex: compile time)")
    pattern, n = get_pattern(pattern_name), 517
    q, k, v = qkv(n, kv_heads)
    out = forward(impl_name, pattern, q, k, v)
    torch.testing.assert_close(out.double(), reference(q, k, v, pattern.dense_mask(n)), atol=1e-4, rtol=0)


@pytest.mark.parametrize("q_len", [1, 16])
@pytest.mark.parametrize("impl_name", [p for p, name in zip(COMPILED_SLOW, CPU_IMPLS) if name != "seed"])
@pytest.mark.parametrize("pattern_name", list(PATTERNS))
def test_decode_rows_are_the_last_rows_of_the_prefill(impl_name, pattern_name, q_len):
    """A decode step gives what the full sequence gives at its last q_len positions."""
    if not runs(impl_name, pattern_name, "decode"):
        pytest.skip("not run by this implementation (or flex: compile time)")
    pattern, n = get_pattern(pattern_name), 1000
    q, k, v = qkv(n, 2)
    full = reference(q, k, v, pattern.dense_mask(n))[..., n - q_len:, :]
    out = forward(impl_name, pattern, q[..., n - q_len:, :].contiguous(), k, v, q_len=q_len)
    assert out.shape == (2, HEADS, q_len, q.shape[-1])
    torch.testing.assert_close(out.double(), full, atol=1e-4, rtol=0)


def test_causal_decode_of_one_row_is_the_dense_call():
    """One query row at the end of the cache sees every key: SDPA runs it unmasked, the full reference that
    decode speed-ups are measured against; more rows keep the bottom-right causal mask."""
    impl, causal = get_impl("sdpa"), get_pattern("causal")
    one = impl.prepare(causal, 1000, "cpu", torch.float32, q_len=1).state
    assert one.mask is None and not one.causal
    assert impl.prepare(causal, 1000, "cpu", torch.float32, q_len=16).state.mask is not None


@pytest.mark.parametrize("pattern_name", list(PATTERNS))
@pytest.mark.parametrize("n,q_len", [(1000, 1), (1537, 16)])
def test_decode_nnz_is_exact(pattern_name, n, q_len):
    pattern = get_pattern(pattern_name)
    q, k = torch.arange(n - q_len, n)[:, None], torch.arange(n)[None, :]  # the FlexAttention rule on the grid
    expected = int(pattern.mask_mod_for(n)(torch.tensor(0), torch.tensor(0), q, k).sum())
    assert decode_nnz(pattern, n, q_len) == expected
    assert decode_mask(pattern, n, q_len).shape == (q_len, n)


def test_decode_bytes_count_the_kv_rows_read():
    """Dense SDPA reads the whole cache; flex the key blocks it visits; both as K plus V bytes."""
    n, q_len = 4096, 1
    dense = get_impl("sdpa").prepare(get_pattern("dense"), n, "cpu", torch.float32, q_len=q_len)
    assert dense.kv_rows is None  # all n rows
    flex = get_impl("flex").prepare(get_pattern("local"), n, "cpu", torch.float32, q_len=q_len)
    assert flex.kv_rows == 128  # the local window of the last row lies in one 128-key block
    row = make_row({"dtype": "float32"}, Measurement("ok", latency_ms=1.0, bytes_moved=2e6), "r1")
    assert row["gbps"] == pytest.approx(2.0)


def test_a_decode_row_without_keys_is_a_usage_error():
    class Nothing(Pattern):
        name = "nothing"

        def mask_mod(self, b, h, q, k):
            return (q < 0) & (k < 0)

    with pytest.raises(SparsebenchError, match="no key"):
        check_decode_rows(Nothing(), 64, 4)


@pytest.mark.parametrize("args,message", [
    (["--kv-heads", "3", "--heads", "8"], "does not divide"),
    (["--q-len", "0", "--mode", "decode"], "q-len"),
    (["--q-len", "600", "--seq", "512", "--mode", "decode"], "longer than seq"),
    (["--impl", "sdpa[fast]"], "unknown SDPA backend 'fast'"),
])
def test_bad_workload_options_give_one_line_and_exit_2(tmp_path, args, message):
    result = CliRunner().invoke(app, ["run", "--pattern", "local", "--seq", "512", "--out-dir", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "results.csv").exists()


def test_forced_sdpa_backend_is_unsupported_not_a_fallback():
    """A forced backend that cannot run raises Unsupported (an `unsupported` row), never another kernel's result."""
    assert IMPLS["sdpa[cudnn]"].unsupported_reason(get_pattern("dense"), "cpu", torch.float32, "fwd")
    impl = get_impl("sdpa[flash]")
    q, k, v = qkv(64, HEADS)
    prep = impl.prepare(get_pattern("local"), 64, "cpu", torch.float32)
    try:  # the CPU flash kernel takes a mask in recent torch; where it does not, the row says why
        out = impl.forward(q, k, v, prep)
    except Unsupported as exc:
        assert "flash backend cannot run this case" in str(exc)
    else:
        torch.testing.assert_close(out.double(), reference(q, k, v, get_pattern("local").dense_mask(64)),
                                   atol=1e-4, rtol=0)
    assert not IMPLS["sdpa[math]"].in_default_sweep and IMPLS["sdpa"].in_default_sweep


def test_vendor_peaks_and_percent_of_peak():
    assert vendor_peak_tflops("NVIDIA H200", "bfloat16") == 989.5
    assert vendor_peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.5
    assert vendor_peak_tflops("AMD EPYC 7B13", "float32") is None
    row = make_row({"dtype": "bfloat16"}, Measurement("ok", latency_ms=1.0, tflops_useful=494.75), "r1",
                   "NVIDIA H200", ceilings={"matmul_tflops": 700.0})
    assert row["pct_of_vendor_peak"] == pytest.approx(50.0)
    assert row["pct_of_peak"] == pytest.approx(100 * 494.75 / 700)
    assert math.isclose(row["pct_of_peak"], 70.678, rel_tol=1e-3)


@pytest.mark.parametrize("pattern_name", ["local", "strided", "bigbird"])
def test_structured_gqa_never_repeats_k_and_v(pattern_name):
    """MQA with 8 query heads: nothing of the query heads' size is made but the output itself."""
    n, heads = 2048, 8
    q = torch.randn(1, heads, n, 32)
    k, v = torch.randn(1, 1, n, 32), torch.randn(1, 1, n, 32)
    impl = get_impl("structured")
    prep = impl.prepare(get_pattern(pattern_name), n, "cpu", torch.float32)
    with torch.no_grad(), StorageSizes() as mode:
        impl.forward(q, k, v, prep)
    made = {ptr: size for ptr, size in mode.sizes.items() if ptr != q.untyped_storage().data_ptr()}  # views of q
    assert sum(size >= heads * n * 32 * 4 for size in made.values()) == 1  # the (1, 8, n, 32) output
