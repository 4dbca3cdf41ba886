"""Shared test helpers: a float64 brute-force attention reference."""

from __future__ import annotations

import math
import signal

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# A suite started in the background of a non-interactive shell (`cmd &`, nohup) inherits SIGINT ignored, and so
# would every `sparsebench run` it starts: the Ctrl-C tests would send a signal nobody hears. Catch it here, so
# that the children start with the default action and Python's KeyboardInterrupt.
signal.signal(signal.SIGINT, signal.default_int_handler)


def brute_force_attention(q, k, v, mask: torch.Tensor, grad_out: torch.Tensor | None = None):
    """The float64 reference every test compares against: softmax(QK^T / sqrt(D) masked) V; mask (Lq, N) bool.
    K and V with fewer heads than Q are repeated per query head (the definition of GQA). With grad_out, also
    the (q, k, v) gradients, written out (dS = P * (dP - rowsum(dO * O))): half the time of autograd.
    """
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    q, k, v = (x.double() for x in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1])
    probs = torch.softmax((q @ k.transpose(-2, -1) * scale).masked_fill(~mask, float("-inf")), dim=-1)
    out = probs @ v
    if grad_out is None:
        return out
    grad_out = grad_out.double()
    grad_scores = (grad_out @ v.transpose(-2, -1)).sub_((grad_out * out).sum(-1, keepdim=True)).mul_(probs)
    grads = [grad_scores @ k * scale, grad_scores.transpose(-2, -1) @ q * scale, probs.transpose(-2, -1) @ grad_out]
    return out, grads


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
