"""Shared test helpers: a float64 brute-force attention reference."""

from __future__ import annotations

import signal

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# A suite started in the background of a non-interactive shell (`cmd &`, nohup) inherits SIGINT ignored, and so
# would every `sparsebench run` it starts: the Ctrl-C tests would send a signal nobody hears. Catch it here, so
# that the children start with the default action and Python's KeyboardInterrupt.
signal.signal(signal.SIGINT, signal.default_int_handler)


def brute_force_attention(q, k, v, mask: torch.Tensor) -> torch.Tensor:
    """softmax(QK^T / sqrt(D) masked) V in float64; mask (N, N) bool."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


class StorageSizes(TorchDispatchMode):
    """Records the byte size of every storage an op returns, by storage (a view counts its base once), and the
    largest of them."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[int, int] = {}  # storage address -> bytes

    @property
    def largest(self) -> int:
        return max(self.sizes.values(), default=0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.sizes[t.untyped_storage().data_ptr()] = max(self.sizes.get(t.untyped_storage().data_ptr(), 0),
                                                                 t.untyped_storage().nbytes())
        return out


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
