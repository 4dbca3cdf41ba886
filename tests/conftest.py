"""Shared test helpers: a float64 brute-force attention reference."""

from __future__ import annotations

import pytest
import torch


def brute_force_attention(q, k, v, mask: torch.Tensor) -> torch.Tensor:
    """softmax(QK^T / sqrt(D) masked) V in float64; mask (N, N) bool."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
