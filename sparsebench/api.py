"""Public API: `attention()` and the seed-compatible `SparseAttention` module."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from sparsebench.errors import Unsupported
from sparsebench.impls import IMPLS, Prepared, get_impl
from sparsebench.patterns import Pattern, get_pattern

# impl="auto": most preferred first, per device type and pattern (the device's default order where the pattern
# has none). CPU: from the committed CPU benchmarks (docs/results/cpu-default, cpu-fwdbwd). CUDA: from the
# H200 run in docs/results/h200 (bf16, H=16, D=64, 4096-65536, forward and forward+backward): flex was the
# fastest on local and sliding_window at every length (local 42x dense SDPA at 32768, structured 9.7x),
# structured on strided (4.5x; flex 0.55x: every 128-block keeps a column), and SDPA's own kernels on dense
# and causal (flex 0.85x). dilated, fixed, longformer and bigbird were not measured on a GPU yet: flex's
# block skipping first, as for the band patterns.
AUTO_ORDER = {
    "cpu": ("structured", "sdpa", "eager"),
    "cuda": ("flex", "structured", "sdpa", "eager"),
}
AUTO_ORDER_BY_PATTERN = {
    ("cuda", "dense"): ("sdpa",),
    ("cuda", "causal"): ("sdpa",),
    ("cuda", "strided"): ("structured", "flex", "sdpa", "eager"),
}


def resolve_impl(pattern: Pattern, impl: str, device: torch.device, dtype: torch.dtype, mode: str) -> str:
    """The implementation to use; raises Unsupported with the reason when none fits."""
    if impl == "auto":
        candidates = AUTO_ORDER_BY_PATTERN.get((device.type, pattern.name), AUTO_ORDER.get(device.type, tuple(IMPLS)))
    else:
        candidates = (impl,)
    reasons = []
    for name in candidates:
        reason = get_impl(name).unsupported_reason(pattern, str(device), dtype, mode)
        if reason is None:
            return name
        reasons.append(reason)
    raise Unsupported("; ".join(reasons))


@lru_cache(maxsize=64)
def _prepared(impl: str, pattern: Pattern, n: int, device: torch.device, dtype: torch.dtype) -> Prepared:
    # Masks, indices and BlockMasks are built once per shape and reused across calls.
    return get_impl(impl).prepare(pattern, n, device, dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: str | Pattern = "local",
              impl: str = "auto", **params: int) -> torch.Tensor:
    """Sparse attention over q, k, v of shape (B, H, N, D); returns (B, H, N, D).

    `pattern` is a name (with `params`, e.g. window=64) or a Pattern. `impl="auto"` picks the fastest
    implementation that supports the device, dtype and whether gradients are needed.
    """
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share the shape (B, H, N, D); got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    pat = pattern if isinstance(pattern, Pattern) else get_pattern(pattern, **params)
    n = q.shape[-2]
    pat.validate(n)
    mode = "fwdbwd" if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad) else "fwd"
    name = resolve_impl(pat, impl, q.device, q.dtype, mode)
    return get_impl(name).forward(q, k, v, _prepared(name, pat, n, q.device, q.dtype))


class SparseAttention(nn.Module):
    """Drop-in for the write-up's module: same arguments, parameter names and outputs, real sparse kernels.

    A state_dict of the write-up's `SparseAttention` loads unchanged (w_q, w_k, w_v, w_o).
    """

    def __init__(self, d_model: int, n_heads: int, sparsity_pattern: str | Pattern = "local",
                 impl: str = "auto", **params: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_k = d_model // n_heads
        self.pattern = (sparsity_pattern if isinstance(sparsity_pattern, Pattern)
                        else get_pattern(sparsity_pattern, **params))
        self.sparsity_pattern = self.pattern.name
        self.impl = impl
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_o = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, _ = x.shape
        # (B, N, d_model) -> (B, H, N, d_k)
        q = self.w_q(x).view(batch_size, seq_len, self.n_heads, self.d_k).transpose(1, 2)
        k = self.w_k(x).view(batch_size, seq_len, self.n_heads, self.d_k).transpose(1, 2)
        v = self.w_v(x).view(batch_size, seq_len, self.n_heads, self.d_k).transpose(1, 2)
        context = attention(q, k, v, self.pattern, impl=self.impl)
        context = context.transpose(1, 2).contiguous().view(batch_size, seq_len, self.d_model)
        return self.w_o(context)
