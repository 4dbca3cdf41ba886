"""The optional third-party selection kernels (NSA's, FlashInfer's) without their packages or a GPU: each one's
reasons for an `unsupported` row, and its translation of a selection into the kernel's arguments, run against a
fake of the kernel written from its documented contract (fla's parallel_nsa, FlashInfer's
VariableBlockSparseAttentionWrapper) on the CPU, to the float64 reference of the same selection."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from sparsebench.errors import SparsebenchError
from sparsebench.impls import get_impl
from sparsebench.impls.nsa import token_blocks
from sparsebench.impls.selection import for_pattern
from sparsebench.patterns import get_pattern


def fake_parallel_nsa(q, k, v, block_indices=None, block_counts=None, block_size=64, scale=None, **_):
    """parallel_nsa's selection branch as fla's kernel computes it: token t (at position TK - TQ + t) of key/value
    head h reads the first block_counts[b, t, h] blocks of block_indices[b, t, h] that start at or before it,
    keys after it masked; q (B, TQ, HQ, D), k, v (B, TK, H, D) -> (B, TQ, HQ, D)."""
    B, TQ, HQ, D = q.shape
    TK, H = k.shape[1], k.shape[2]
    assert HQ // H >= 16 and block_indices.shape[:3] == (B, TQ, H) and block_counts.shape == (B, TQ, H)
    out = torch.zeros_like(q)
    for b in range(B):
        for t in range(TQ):
            pos = TK - TQ + t
            for h in range(H):
                keys = [s * block_size + j for s in block_indices[b, t, h, :block_counts[b, t, h]].tolist()
                        if 0 <= s * block_size <= pos for j in range(block_size) if s * block_size + j <= pos]
                kk, vv = k[b, keys, h].double(), v[b, keys, h].double()
                for g in range(h * (HQ // H), (h + 1) * (HQ // H)):
                    p = torch.softmax(q[b, t, g].double() @ kk.T * scale, dim=-1)
                    out[b, t, g] = (p @ vv).to(q.dtype)
    return out


class FakeWrapper:
    """FlashInfer's VariableBlockSparseAttentionWrapper as its plan/run document it: per key/value head and block
    row, the kept column blocks' keys gathered in ascending order; `causal` aligned to the end of that row."""

    def __init__(self, workspace):
        self.planned = 0

    def plan(self, block_mask_map, block_row_sz, block_col_sz, num_qo_heads, num_kv_heads, head_dim, causal=False,
             **_):
        self.mask, self.rows, self.cols, self.causal = block_mask_map, block_row_sz, block_col_sz, causal
        self.planned += 1

    def run(self, q, k, v):
        HQ, L, D = q.shape
        KVH = k.shape[0]
        out = torch.zeros_like(q)
        for h in range(KVH):
            col_start = [0] + torch.cumsum(self.cols[h], 0).tolist()
            row_start = [0] + torch.cumsum(self.rows[h], 0).tolist()
            for r in range(self.mask.shape[1]):
                keys = [j for c in range(self.mask.shape[2]) if self.mask[h, r, c]
                        for j in range(col_start[c], col_start[c + 1])]
                rows = list(range(row_start[r], row_start[r + 1]))
                for g in range(h * (HQ // KVH), (h + 1) * (HQ // KVH)):
                    s = q[g, rows].double() @ k[h, keys].double().T / math.sqrt(D)
                    if self.causal:  # bottom-right: row i of the block sees gathered keys up to i + (len - rows)
                        i = torch.arange(len(rows))[:, None]
                        s = s.masked_fill(torch.arange(len(keys))[None, :] > i + len(keys) - len(rows), -math.inf)
                    out[g, rows] = (torch.softmax(s, -1) @ v[h, keys].double()).to(q.dtype)
        return out


@pytest.fixture
def fake_packages(monkeypatch):
    fla, ops, nsa = (types.ModuleType(name) for name in ("fla", "fla.ops", "fla.ops.nsa"))
    nsa.parallel_nsa = fake_parallel_nsa
    flashinfer = types.ModuleType("flashinfer")
    flashinfer.VariableBlockSparseAttentionWrapper = FakeWrapper
    for name, module in (("fla", fla), ("fla.ops", ops), ("fla.ops.nsa", nsa), ("flashinfer", flashinfer)):
        monkeypatch.setitem(sys.modules, name, module)


def reference(q, k, v, mask):
    rep = q.shape[1] // k.shape[1]
    k, v = (x.double().repeat_interleave(rep, dim=1) for x in (k, v))
    scores = q.double() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~mask, -math.inf), dim=-1) @ v


def inputs(n, H=16, KVH=1, D=16, B=2, dtype=torch.float32):
    gen = torch.Generator().manual_seed(3)
    return (torch.randn(B, heads, n, D, generator=gen).to(dtype) for heads in (H, KVH, KVH))


@pytest.mark.parametrize("impl_name", ["nsa", "flashinfer"])
@pytest.mark.parametrize("n", [100, 128])  # 100: a ragged last block
def test_each_kernel_gets_the_selection_it_was_given(fake_packages, impl_name, n):
    pattern = get_pattern("topk_blocks", block=16, topk=2, shared=1)
    impl = for_pattern(get_impl(impl_name), pattern)
    q, k, v = inputs(n)
    prep = impl.prepare(pattern, n, "cpu", torch.float32)
    out = impl.forward(q, k, v, prep)  # the CPU tensors stand in for CUDA ones: the fakes compute on any device
    selection = prep.state.last
    torch.testing.assert_close(out.double(), reference(q, k, v, selection.dense_mask()), rtol=1e-5, atol=1e-5)
    assert prep.executed_pairs >= float(selection.pair_counts().double().mean())  # whole blocks


def test_nsa_block_indices_list_each_tokens_blocks_ascending_then_padding():
    layout = torch.tensor([[[[1, 0, 0], [1, 1, 0], [0, 1, 1]]]], dtype=torch.bool)  # (1, 1, 3, 3)
    indices, counts = token_blocks(layout, rows=5, rows_per_block=2)
    assert indices.shape == (1, 5, 1, 2) and counts.shape == (1, 5, 1)
    assert indices[0, :, 0].tolist() == [[0, -1], [0, -1], [0, 1], [0, 1], [1, 2]]
    assert counts[0, :, 0].tolist() == [1, 1, 2, 2, 2]


def test_a_selection_that_differs_inside_a_group_is_refused(fake_packages):
    pattern = get_pattern("topk_blocks", block=16, topk=2)  # each query head selects for itself
    q, k, v = inputs(128)
    for name in ("nsa", "flashinfer"):
        impl = for_pattern(get_impl(name), pattern)
        with pytest.raises(SparsebenchError, match="shared=1"):
            impl.forward(q, k, v, impl.prepare(pattern, 128, "cpu", torch.float32))


def test_nsa_refuses_groups_its_tile_cannot_take(fake_packages):
    pattern = get_pattern("topk_blocks", block=16, topk=2, shared=1)
    impl = for_pattern(get_impl("nsa"), pattern)
    q, k, v = inputs(128, H=8, KVH=8)
    with pytest.raises(SparsebenchError, match="power of two >= 16"):
        impl.forward(q, k, v, impl.prepare(pattern, 128, "cpu", torch.float32))


def test_unsupported_rows_say_why(monkeypatch):
    selection = get_pattern("topk_blocks", shared=1)
    nsa, flashinfer = (for_pattern(get_impl(name), selection) for name in ("nsa", "flashinfer"))
    assert "does not run on cpu" in nsa.unsupported_reason(selection, "cpu", torch.float32, "fwd")
    assert "float32" in flashinfer.unsupported_reason(selection, "cuda", torch.float32, "fwd")
    assert "fwdbwd" in flashinfer.unsupported_reason(selection, "cuda", torch.float16, "fwdbwd")
    not_causal = get_pattern("topk_blocks", causal=0)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())  # as if installed
    assert "causal" in for_pattern(get_impl("nsa"), not_causal).unsupported_reason(not_causal, "cuda",
                                                                                  torch.float16, "fwd")
    assert nsa.unsupported_reason(selection, "cuda", torch.float16, "fwdbwd") is None
    assert "not decode" in nsa.unsupported_reason(selection, "cuda", torch.float16, "decode")
    quest = get_pattern("quest")
    assert nsa.unsupported_reason(quest, "cuda", torch.float16, "decode") is None
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # not installed
    assert "pip install flash-linear-attention" in nsa.unsupported_reason(selection, "cuda", torch.float16, "fwd")
    assert "pip install flashinfer-python" in flashinfer.unsupported_reason(selection, "cuda", torch.float16, "fwd")
    static = get_pattern("local")
    assert "selection patterns" in get_impl("nsa").unsupported_reason(static, "cuda", torch.float16, "fwd")
