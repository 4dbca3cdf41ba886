"""`structured`: exact against a float64 brute force for every pattern, and work/memory that grow with nnz."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import StorageSizes, brute_force_attention
from torch.utils._python_dispatch import TorchDispatchMode

import sparsebench.impls.kernels.core as core
from sparsebench.impls import get_impl
from sparsebench.impls.kernels import aten_ops, band, columns
from sparsebench.patterns import PATTERNS, causal_of, get_pattern

IMPL = get_impl("structured")
SPARSE = [name for name in PATTERNS if name not in ("dense", "causal")]
SIZES = (1, 7, 1000, 1537)
TOL = {torch.float32: 1e-4, torch.bfloat16: 4e-2, torch.float16: 5e-3}


def qkv(n: int, d: int, dtype: torch.dtype = torch.float32, b: int = 2, h: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=gen).to(dtype) for _ in range(3)]


reference = brute_force_attention  # float64, with the gradients when given grad_out


def run(pattern, q, k, v, grad_out=None):
    """Structured output, and with grad_out the (q, k, v) gradients from a backward pass."""
    prep = IMPL.prepare(pattern, q.shape[-2], q.device, q.dtype)
    if grad_out is None:
        with torch.no_grad():
            return IMPL.forward(q, k, v, prep), None
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out = IMPL.forward(*leaves, prep)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), [x.grad for x in leaves]


def check_exact(pattern, n: int, d: int) -> None:
    """fp32 forward (flash path, no grad) and forward+backward (matmul path) against float64."""
    q, k, v = qkv(n, d)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    ref, ref_grads = reference(q, k, v, pattern.dense_mask(n), grad_out)
    out, _ = run(pattern, q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), ref, atol=TOL[torch.float32], rtol=0)
    out, grads = run(pattern, q, k, v, grad_out)
    torch.testing.assert_close(out.double(), ref, atol=TOL[torch.float32], rtol=0)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, atol=TOL[torch.float32], rtol=0)


@pytest.mark.parametrize("d", [32, 64])
@pytest.mark.parametrize("n", [pytest.param(n, marks=pytest.mark.slow) if n > 1000 else n for n in SIZES])
@pytest.mark.parametrize("name", list(PATTERNS))
def test_exact_fp32_with_gradients(name, n, d):
    check_exact(get_pattern(name), n, d)


@pytest.mark.parametrize("pattern", [
    get_pattern("local", window=2), get_pattern("local", window=7),
    get_pattern("strided", stride=1), get_pattern("strided", stride=5),
    get_pattern("sliding_window", window=1), get_pattern("sliding_window", window=5),
    get_pattern("dilated", window=1, dilation=1), get_pattern("dilated", window=5, dilation=3),
    get_pattern("fixed", length=16, summary=16), get_pattern("fixed", length=8, summary=1),
    get_pattern("longformer", window=1, global_tokens=0), get_pattern("longformer", window=7, global_tokens=3),
    get_pattern("longformer", global_tokens=600),
    get_pattern("bigbird", block=16, global_blocks=0, random_blocks=0),
    get_pattern("bigbird", block=7, global_blocks=2, random_blocks=2, mask_seed=3),
    get_pattern("bigbird", block=1000),
], ids=lambda p: p.label())
@pytest.mark.parametrize("n", [1, 7, 130, 517])
def test_exact_other_parameters(pattern, n):
    check_exact(pattern, n, 32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", list(PATTERNS))
def test_half_precision(name, dtype):
    """Without and with autograd (CPU flash, fused flash with its backward, matmul) within a dtype tolerance."""
    pattern, n = get_pattern(name), 517
    q, k, v = qkv(n, 64, dtype)
    ref = reference(q, k, v, pattern.dense_mask(n))
    out, _ = run(pattern, q, k, v)
    assert out.dtype == dtype
    assert (out.double() - ref).abs().max() <= TOL[dtype]
    out, grads = run(pattern, q, k, v, torch.randn_like(ref))
    assert (out.double() - ref).abs().max() <= TOL[dtype]
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)


def cuda_float32_backends(monkeypatch) -> None:
    """Every part takes the backend that CUDA gets in float32 (no fused kernel: the matmul path), on the CPU."""
    select = core.select_backend

    def cuda_float32(device, dtype, *args, **kwargs):
        return select(torch.device("cuda"), torch.float32, *args, **kwargs)

    monkeypatch.setattr(core, "select_backend", cuda_float32)


@pytest.mark.parametrize("name", SPARSE)
def test_matmul_path(name, monkeypatch):
    """The device-agnostic path alone (what CUDA runs for float32 and for merged masked parts) matches the CPU flash
    path without grad, and float64 with gradients."""
    pattern, n = get_pattern(name), 1000
    q, k, v = qkv(n, 32, h=2)
    flash, _ = run(pattern, q, k, v)
    cuda_float32_backends(monkeypatch)
    matmul, _ = run(pattern, q, k, v)
    torch.testing.assert_close(matmul, flash, atol=1e-5, rtol=0)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    _, ref_grads = reference(q, k, v, pattern.dense_mask(n), grad_out)
    _, grads = run(pattern, q, k, v, grad_out)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_other", [False, True])
def test_fused_merge_gradients(with_other, causal):
    """attend_merge's fused backward (flash backward fed the merged output and lse) equals autograd through
    the matmul path, for the flash part's q, k, v and for the other part's out and lse."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 40, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    other = (torch.randn(2, 3, 40, 16, generator=gen, dtype=torch.float64),
             torch.randn(2, 3, 40, generator=gen, dtype=torch.float64) * 3)
    other[1][0, 0, :5] = core.NEG_LSE  # rows where the other part is empty
    grad_out = torch.randn(2, 3, 40, 16, generator=gen, dtype=torch.float64)
    results = []
    for fused in (True, False):
        leaves = [x.float().requires_grad_() for x in (q, k, v, *other)]
        parts = leaves[3:] if with_other else None
        if fused:
            out = core.attend_merge(*leaves[:3], backend="cpu_flash", other=parts, causal=causal)
        else:
            part = core.attend(*leaves[:3], backend="matmul", causal=causal)
            out = core.merge(part, parts) if with_other else part[0]
        used = leaves if with_other else leaves[:3]
        results.append([out, *torch.autograd.grad(out, used, grad_out.float())])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_fused_autograd_saves_no_scores():
    """With autograd, strided keeps no (n, n/s) score or probability tensor: the flash backward recomputes."""
    n = 4096
    prep = IMPL.prepare(get_pattern("strided"), n, "cpu", torch.float32)
    q, k, v = (x.requires_grad_() for x in qkv(n, 32, b=1, h=2))
    with StorageSizes() as mode:
        IMPL.forward(q, k, v, prep)
    assert mode.largest < 2 * 4 * n * (n // 8) / 4  # a quarter of one head's (n, n/8) float32 scores


class MatmulOperands(TorchDispatchMode):
    """Records the tensor operands of every BLAS matmul (mm, bmm, addmm, baddbmm)."""

    OPS = (torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default,
           torch.ops.aten.baddbmm.default)

    def __init__(self) -> None:
        super().__init__()
        self.operands: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS:
            self.operands.extend(t for t in args if isinstance(t, torch.Tensor))
        return func(*args, **(kwargs or {}))


def blas_layout(t: torch.Tensor) -> bool:
    """Whether BLAS reads the matrices directly: one of the last two dims has stride 1, the other a leading
    dimension at least as long (row- or column-major, possibly with a row gap); an expanded tensor has none."""
    (rows, cols), (row_stride, col_stride) = t.shape[-2:], t.stride()[-2:]
    return (col_stride == 1 and row_stride >= cols) or (row_stride == 1 and col_stride >= rows)


@pytest.mark.parametrize("causal", [False, True])
def test_matmul_part_sum_backward_gives_blas_layouts(causal):
    """out.sum().backward() sends an expanded (stride 0) gradient, on which CPU bmm takes a naive path ~500x slower
    than BLAS. Summed as it is, the matmul path's output passes that gradient straight to its bmm: every matmul
    in the backward must still get operands that BLAS reads directly."""
    q, k, v = (x.requires_grad_() for x in qkv(300, 32))
    out, _ = core.attend(q, k, v, backend="matmul", causal=causal)
    with MatmulOperands() as mode:
        out.sum().backward()
    assert mode.operands
    for t in mode.operands:
        assert blas_layout(t), (t.shape, t.stride())


@pytest.mark.parametrize("name,matmul_path", [("fixed", False), ("fixed", True), ("strided", True)])
def test_sum_backward_gives_matmuls_blas_layouts(name, matmul_path, monkeypatch):
    """The same through whole kernels, whose backward reaches the matmul path (~8 s once here at this size)."""
    if matmul_path:
        cuda_float32_backends(monkeypatch)
    q, k, v = (x.requires_grad_() for x in qkv(1024, 64, b=1, h=8))
    prep = IMPL.prepare(get_pattern(name), 1024, "cpu", torch.float32)
    out = IMPL.forward(q, k, v, prep).sum()
    with MatmulOperands() as mode:
        out.backward()
    assert mode.operands  # the matmul path's backward
    for t in mode.operands:
        assert blas_layout(t), (t.shape, t.stride())


def test_non_contiguous_inputs():
    """(B, N, H, D) projections transposed to (B, H, N, D), as SparseAttention passes them."""
    pattern, n = get_pattern("longformer"), 1000
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in qkv(n, 64))
    assert not q.is_contiguous()
    out, _ = run(pattern, q, k, v)
    torch.testing.assert_close(out.double(), reference(q, k, v, pattern.dense_mask(n)), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name,n,pairs", [("local", 256, 256 * 256), ("sliding_window", 256, 256 * 257 // 2)])
def test_window_covering_the_sequence_is_flash_sdpa(name, n, pairs):
    """A window of 1024 at n = 256 keeps every (causal) pair: SDPA's work, not a band 4x wider than n."""
    pattern = get_pattern(name, window=1024)
    assert IMPL.prepare(pattern, n, "cpu", torch.float32).executed_pairs == pairs == pattern.nnz(n)
    q, k, v = qkv(n, 32)
    out, _ = run(pattern, q, k, v)
    torch.testing.assert_close(out.double(), reference(q, k, v, pattern.dense_mask(n)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", SPARSE)
def test_executed_pairs_follow_nnz(name):
    """Block padding costs at most 2x the kept pairs, far below n^2."""
    pattern, n = get_pattern(name), 4096
    pairs = IMPL.prepare(pattern, n, "cpu", torch.float32).executed_pairs
    assert pattern.nnz(n) <= pairs <= 2 * pattern.nnz(n)
    assert pairs <= n * n / 5
    assert pairs <= IMPL.estimate_pairs(pattern, n) <= 3 * pattern.nnz(n)  # the preflight's estimate bounds it


def test_every_builder_has_its_traits_and_sdpa_kernels_estimate_exactly_their_pairs():
    """The estimates come from the traits written beside each builder; dense and causal compute exactly nnz."""
    from sparsebench.impls.kernels import BUILDERS, TRAITS

    assert set(TRAITS) == set(BUILDERS)
    for name in ("dense", "causal"):
        assert IMPL.estimate_pairs(get_pattern(name), 1000) == get_pattern(name).nnz(1000)
    local = get_pattern("local")
    assert IMPL.estimate_pairs(local, 4096) == TRAITS["local"].estimate_pairs(local, 4096)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def expected_pairs(pattern, n: int, block: int, chunk_rows: int) -> int:
    """The (q, k) pairs each kernel computes at length n, from its block layout: `block` queries per band block,
    `chunk_rows` query rows per chunk of fixed's summary part. Block padding is computed, as the kernels do."""
    name = pattern.name

    def band(length: int, keys: int) -> int:  # each query block of `block` rows sees block - 1 + keys keys
        return ceil_div(length, block) * block * (block - 1 + keys)

    if name == "dense":
        return n * n
    if name == "causal":
        return n * (n + 1) // 2
    if name == "local":  # keys q - w/2 .. q + w/2 - 1; dense SDPA once the window covers the sequence
        half = pattern.window // 2
        return n * n if half >= n else band(n, 2 * half)
    if name == "sliding_window":
        return n * (n + 1) // 2 if pattern.window >= n else band(n, pattern.window)
    if name == "dilated":  # d interleaved subsequences of ceil(n / d), each a sliding window of w
        return pattern.dilation * band(ceil_div(n, pattern.dilation), pattern.window)
    if name == "strided":  # every row against ceil(n / s) columns, plus one self dot product
        return n * ceil_div(n, pattern.stride) + n
    if name == "fixed":  # causal own blocks; each query block sees the summary columns of the blocks before
        size, c = pattern.length, pattern.summary  # the last block of its chunk
        nb, per_chunk = ceil_div(n, size), max(1, chunk_rows // size)
        summary = sum(size * c * (min(nb, (i // per_chunk + 1) * per_chunk) - 1) for i in range(nb)) if nb > 1 else 0
        return nb * size * (size + 1) // 2 + summary
    if name == "longformer":  # global rows dense; the others see the band |q - k| <= w/2 and the global keys
        half, g = pattern.window // 2, pattern.global_tokens
        if g >= n:
            return n * n
        return band(n, 2 * half + 1) + (ceil_div(n, block) * block * g + g * n if g else 0)
    if name == "bigbird":  # global blocks dense; the others gather m key blocks, the most any block keeps
        b, g = pattern.block, pattern.global_blocks
        nb = ceil_div(n, b)
        if nb <= g:
            return n * n
        m = int(pattern.block_table(n)[g:].sum(1).max())
        return (nb - g) * b * m * b + g * b * n
    raise AssertionError(f"no layout for {name}")


PAIR_SIZES = (1, 7, 130, 517, 1000)
PAIR_PATTERNS = [get_pattern(name) for name in PATTERNS] + [
    get_pattern("fixed", length=16, summary=4), get_pattern("fixed", length=2048, summary=8),
    get_pattern("longformer", window=7, global_tokens=0), get_pattern("longformer", window=7, global_tokens=3),
    get_pattern("bigbird", block=7, global_blocks=2, random_blocks=2, mask_seed=3),
]


def tuning(device_type: str) -> tuple[int, int]:
    """(band block, fixed's rows per chunk) from the kernels' per-device tables."""
    return band.band_block(device_type), core.per_device(columns.CHUNK_ROWS, device_type)


@pytest.mark.parametrize("n", PAIR_SIZES)
@pytest.mark.parametrize("pattern", PAIR_PATTERNS, ids=lambda p: p.label())
def test_executed_pairs_exact(pattern, n):
    """executed_pairs (the gate compares flops_executed exactly) equals the count from each kernel's layout."""
    assert IMPL.prepare(pattern, n, "cpu", torch.float32).executed_pairs == expected_pairs(pattern, n, *tuning("cpu"))


@pytest.mark.parametrize("pattern", [p for p in PAIR_PATTERNS if p.name in ("local", "sliding_window", "dilated",
                                                                             "fixed", "longformer")],
                         ids=lambda p: p.label())
def test_executed_pairs_with_cuda_tables(pattern, monkeypatch):
    """CUDA's tuning tables give CUDA's counts. Kernels build only on the CPU here: the CPU's entries are
    replaced by CUDA's, so the builders and the pair counts run with CUDA's values."""
    cuda = tuning("cuda")
    monkeypatch.setitem(band.BLOCK, "cpu", cuda[0])
    monkeypatch.setitem(columns.CHUNK_ROWS, "cpu", cuda[1])
    for n in PAIR_SIZES:
        assert IMPL.prepare(pattern, n, "cpu", torch.float32).executed_pairs == expected_pairs(pattern, n, *cuda)


def test_cuda_band_block_changes_the_counts():
    """CUDA bands use their own block, so their executed pairs differ from the CPU's (fixed's chunks do not)."""
    cpu, cuda = tuning("cpu"), tuning("cuda")
    assert cuda[0] != cpu[0]
    for name in ("local", "sliding_window", "dilated", "longformer"):
        pattern = get_pattern(name)
        assert expected_pairs(pattern, 1000, *cuda) != expected_pairs(pattern, 1000, *cpu)
    assert band.band_pairs(1000, -32, 31, cuda[0]) == expected_pairs(get_pattern("local"), 1000, *cuda)
    fixed = get_pattern("fixed")
    assert columns.fixed_pairs(1000, fixed.length, fixed.summary, cuda[1] // fixed.length) == expected_pairs(
        fixed, 1000, *cuda)


@pytest.mark.parametrize("name", SPARSE)
def test_memory_grows_linearly(name):
    """Prepared state and the largest intermediate double (not quadruple) when n doubles (inference)."""
    state, largest = {}, {}
    for n in (4096, 8192):
        pattern = get_pattern(name)
        prep = IMPL.prepare(pattern, n, "cpu", torch.float32)
        state[n] = prep.state.state_bytes()
        q, k, v = qkv(n, 32, b=1, h=2)
        with torch.no_grad(), StorageSizes() as mode:
            IMPL.forward(q, k, v, prep)
        largest[n] = mode.largest
        assert largest[n] < 2 * n * n  # one (n, n) fp32 score matrix per head would be 2 * 4 * n^2 bytes
    assert state[8192] <= 2.2 * state[4096]
    assert largest[8192] <= 2.2 * largest[4096]


def test_estimate_is_far_below_eager():
    eager = get_impl("eager")
    for name in SPARSE:
        pattern = get_pattern(name)
        fwd, fwdbwd = ((pattern, 1, 8, 8192, 64, torch.float32, mode) for mode in ("fwd", "fwdbwd"))
        assert IMPL.estimate_bytes(*fwd) < eager.estimate_bytes(*fwd) / 5
        # with autograd the scores of every kept pair are saved: strided keeps 1/8 of eager's
        assert IMPL.estimate_bytes(*fwdbwd) < eager.estimate_bytes(*fwdbwd) / 2
    local = get_pattern("local")
    assert IMPL.estimate_bytes(local, 1, 8, 16384, 64, torch.float32, "fwd") <= 2.2 * IMPL.estimate_bytes(
        local, 1, 8, 8192, 64, torch.float32, "fwd")


def test_supports_every_pattern_and_explains_the_rest():
    for name in PATTERNS:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for mode in ("fwd", "fwdbwd"):
                assert IMPL.unsupported_reason(get_pattern(name), "cpu", dtype, mode) is None
    reason = IMPL.unsupported_reason(causal_of(get_pattern("local")), "cpu", torch.float32, "fwd")
    assert reason and "structured implements only" in reason


def test_select_backend(monkeypatch):
    """Each part's backend from the call (device, dtype, head dim, autograd) and the part (masked, merged)."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: True)

    def unmasked(device, dtype, head_dim, needs_grad=False):
        return core.select_backend(device, dtype, head_dim, needs_grad, masked=False, merged=True)

    # unmasked parts: a fused kernel with its own backward; on CUDA cuDNN first, flash up to D = 256
    for needs_grad in (False, True):
        assert unmasked(cpu, torch.float32, 64, needs_grad) == "cpu_flash"
    assert core.select_backend(cpu, torch.bfloat16, 16, False, masked=False, merged=False) == "cpu_flash"
    assert unmasked(cuda, torch.bfloat16, 64) == "cudnn"
    assert unmasked(cuda, torch.float16, 128, needs_grad=True) == "cudnn"
    assert unmasked(cuda, torch.bfloat16, 256) == "cuda_flash"
    assert unmasked(cuda, torch.bfloat16, 72 + 4) == "matmul"  # not a multiple of 8
    assert unmasked(cuda, torch.bfloat16, 512) == "matmul"
    assert unmasked(cuda, torch.float32, 64) == "matmul"
    assert unmasked(torch.device("meta"), torch.bfloat16, 64) == "matmul"
    # masked parts: SDPA with the bias when nobody needs the lse; merged, CPU flash in CPU inference only
    for device in (cpu, cuda):
        for needs_grad in (False, True):
            assert core.select_backend(device, torch.bfloat16, 64, needs_grad, masked=True, merged=False) == "sdpa"
    assert core.select_backend(cpu, torch.float32, 64, False, masked=True, merged=True) == "cpu_flash"
    assert core.select_backend(cpu, torch.float32, 64, True, masked=True, merged=True) == "matmul"
    assert core.select_backend(cuda, torch.bfloat16, 64, False, masked=True, merged=True) == "matmul"
    monkeypatch.setattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: False)
    assert unmasked(cuda, torch.bfloat16, 64) == "cuda_flash"


@pytest.fixture
def fresh_op_checks():
    aten_ops.clear_checks()
    yield
    aten_ops.clear_checks()


def test_private_ops_match_this_torch(fresh_op_checks):
    ops = [op for backend_ops in core.FUSED_OPS.values() for op in backend_ops]
    assert [op.problem() for op in ops] == [None] * len(ops)


@pytest.mark.parametrize("schema", [
    # attn_mask became positional and dropout_p went away
    "(Tensor query, Tensor key, Tensor value, bool is_causal=False, Tensor? attn_mask=None) -> (Tensor, Tensor)",
    # a new required argument
    "(Tensor query, Tensor key, Tensor value, float dropout_p, bool is_causal, *, Tensor? attn_mask=None, "
    "float block) -> (Tensor, Tensor)",
    # one more result
    "(Tensor query, Tensor key, Tensor value, float dropout_p=0., bool is_causal=False, *, Tensor? attn_mask=None) "
    "-> (Tensor, Tensor, Tensor)",
    None,  # the op is gone
], ids=["reordered", "new-argument", "new-result", "missing"])
def test_changed_private_op_is_an_unsupported_row(schema, monkeypatch, fresh_op_checks):
    """A torch whose CPU flash op differs: the kernels that call it are unsupported, with a one-line reason that
    names the op and the torch version; the others still run. Called anyway, the op fails with that reason."""
    name = "_scaled_dot_product_flash_attention_for_cpu"
    changed = None if schema is None else torch._C.parse_schema(f"aten::{name}{schema}")
    monkeypatch.setattr(torch.ops.aten, name, SimpleNamespace() if changed is None else SimpleNamespace(
        default=SimpleNamespace(_schema=changed)))
    for pattern_name, mode in [("strided", "fwd"), ("fixed", "fwdbwd"), ("longformer", "fwd")]:
        reason = IMPL.unsupported_reason(get_pattern(pattern_name), "cpu", torch.float32, mode)
        assert reason is not None and f"aten.{name}" in reason and f"torch {torch.__version__}" in reason
        assert "\n" not in reason
    for pattern_name, mode in [("local", "fwd"), ("bigbird", "fwd"), ("longformer", "fwdbwd")]:
        assert IMPL.unsupported_reason(get_pattern(pattern_name), "cpu", torch.float32, mode) is None
    assert IMPL.unsupported_reason(get_pattern("strided"), "cuda", torch.bfloat16, "fwd") is None
    q, k, v = qkv(64, 16)
    with pytest.raises(RuntimeError, match=f"aten.{name}"), torch.no_grad():
        IMPL.forward(q, k, v, IMPL.prepare(get_pattern("strided"), 64, "cpu", torch.float32))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["strided", "fixed", "longformer"])
@pytest.mark.parametrize("backend", ["cudnn", "cuda_flash"])
def test_cuda_fused_backends_match_reference(name, backend, monkeypatch):
    """Both CUDA fused kernels, fed the merged output and lse in their backward, against float64."""
    select = core.select_backend
    monkeypatch.setattr(core, "select_backend", lambda *args, masked, merged: backend if not masked else select(
        *args, masked=masked, merged=merged))
    pattern, n = get_pattern(name), 1537
    q, k, v = (x.cuda().to(torch.bfloat16) for x in qkv(n, 64))
    grad_out = torch.randn_like(q)
    ref, ref_grads = reference(q, k, v, pattern.dense_mask(n, "cuda"), grad_out)
    out, grads = run(pattern, q, k, v, grad_out)
    assert (out.double() - ref).abs().max() <= TOL[torch.bfloat16]
    for got, want in zip(grads, ref_grads):
        assert (got.double() - want).abs().max() <= 0.1 * max(1.0, want.abs().max().item())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", list(PATTERNS))
def test_cuda_matches_reference(name):
    pattern, n = get_pattern(name), 1537
    q, k, v = (x.cuda() for x in qkv(n, 64))
    grad_out = torch.randn_like(q)
    ref, ref_grads = reference(q, k, v, pattern.dense_mask(n, "cuda"), grad_out)
    out, grads = run(pattern, q, k, v, grad_out)
    # TF32 may be on for CUDA matmuls: a looser bound than on CPU
    torch.testing.assert_close(out.double(), ref, atol=2e-3, rtol=0)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, atol=2e-3, rtol=0)
