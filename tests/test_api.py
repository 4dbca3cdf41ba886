"""The public API: attention(), get_pattern() and the seed-compatible SparseAttention."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import brute_force_attention
from torch import nn

import sparsebench
from sparsebench.errors import PatternError


class SeedSparseAttention(nn.Module):
    """The write-up's module, verbatim (shared/seed/000_f3eea37a6606beca.txt)."""

    def __init__(self, d_model, n_heads, sparsity_pattern='local'):
        super().__init__()
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_k = d_model // n_heads
        self.sparsity_pattern = sparsity_pattern
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_o = nn.Linear(d_model, d_model)

    def create_sparse_mask(self, seq_len):
        mask = torch.zeros(seq_len, seq_len)
        if self.sparsity_pattern == 'local':
            window_size = 64
            for i in range(seq_len):
                start = max(0, i - window_size // 2)
                end = min(seq_len, i + window_size // 2)
                mask[i, start:end] = 1
        elif self.sparsity_pattern == 'strided':
            stride = 8
            for i in range(seq_len):
                mask[i, ::stride] = 1
                mask[i, i] = 1
        return mask

    def forward(self, x):
        batch_size, seq_len, _ = x.shape
        Q = self.w_q(x).view(batch_size, seq_len, self.n_heads, self.d_k).transpose(1, 2)
        K = self.w_k(x).view(batch_size, seq_len, self.n_heads, self.d_k).transpose(1, 2)
        V = self.w_v(x).view(batch_size, seq_len, self.n_heads, self.d_k).transpose(1, 2)
        mask = self.create_sparse_mask(seq_len).to(x.device)
        scores = torch.matmul(Q, K.transpose(-2, -1)) / math.sqrt(self.d_k)
        scores = scores.masked_fill(mask.unsqueeze(0).unsqueeze(0) == 0, float('-inf'))
        attention_weights = torch.softmax(scores, dim=-1)
        context = torch.matmul(attention_weights, V)
        context = context.transpose(1, 2).contiguous().view(batch_size, seq_len, self.d_model)
        return self.w_o(context)


@pytest.mark.parametrize("pattern", ["local", "strided"])
@pytest.mark.parametrize("impl", ["auto", "eager", "sdpa", "structured"])
def test_sparse_attention_is_a_drop_in_for_the_seed(pattern, impl):
    torch.manual_seed(0)
    seed = SeedSparseAttention(128, 4, pattern)
    ours = sparsebench.SparseAttention(128, 4, pattern, impl=impl)
    ours.load_state_dict(seed.state_dict())  # same parameter names: loads unchanged
    x = torch.randn(2, 300, 128)
    with torch.no_grad():
        assert torch.allclose(ours(x), seed(x), atol=1e-5)


def test_sparse_attention_trains():
    torch.manual_seed(0)
    layer = sparsebench.SparseAttention(64, 4, "local", window=16)
    x = torch.randn(2, 100, 64, requires_grad=True)
    layer(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in layer.parameters())


def test_attention_with_params_and_pattern_objects():
    q, k, v = (torch.randn(1, 2, 130, 32) for _ in range(3))
    pattern = sparsebench.get_pattern("sliding_window", window=10)
    expected = brute_force_attention(q, k, v, pattern.dense_mask(130))
    for out in (sparsebench.attention(q, k, v, "sliding_window", window=10),
                sparsebench.attention(q, k, v, pattern, impl="eager")):
        assert (out.double() - expected).abs().max() < 1e-4


def test_attention_rejects_bad_input():
    q = torch.randn(1, 2, 16, 8)
    with pytest.raises(ValueError):
        sparsebench.attention(q, q[:, :, :8], q)
    with pytest.raises(PatternError, match="choose from"):
        sparsebench.attention(q, q, q, "nope")
    with pytest.raises(PatternError):
        sparsebench.attention(q, q, q, "local", window=0)
