"""`sdpa`: torch's scaled_dot_product_attention; its own kernel choice, or one backend forced (`sdpa[cudnn]`).

Dense and causal use the fused kernels (is_causal skips the upper triangle); other patterns pass a boolean
mask. GQA/MQA go through `enable_gqa` (no K/V copy where the kernel supports it). `sdpa` (torch's own choice)
is the dense reference of every run; `sdpa[flash]`, `sdpa[efficient]`, `sdpa[cudnn]` and `sdpa[math]` force
one backend with `torch.nn.attention.sdpa_kernel`, and a backend that cannot run a case is an `unsupported` row
with torch's reason, never a silent fallback to another kernel.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparsebench.errors import Unsupported
from sparsebench.impls.base import Impl, Prepared, pattern_mask

# backend name -> torch's SDPBackend member name, and the device types on which torch has that kernel
BACKENDS = {"flash": ("FLASH_ATTENTION", {"cpu", "cuda"}), "efficient": ("EFFICIENT_ATTENTION", {"cuda"}),
            "cudnn": ("CUDNN_ATTENTION", {"cuda"}), "math": ("MATH", {"cpu", "cuda"})}


@dataclass(frozen=True)
class SdpaState:
    """How SDPA is called: plain (dense), is_causal, or with a boolean mask."""

    causal: bool = False
    mask: torch.Tensor | None = None  # (L, N) bool, True = kept


class SdpaImpl(Impl):
    """SDPA with torch's kernel choice (`backend=None`) or one backend forced."""

    name = "sdpa"
    description = "F.scaled_dot_product_attention: is_causal for causal, boolean attn_mask for the rest"

    def __init__(self, backend: str | None = None) -> None:
        self.backend = backend
        if backend is not None:
            if backend not in BACKENDS:
                raise ValueError(f"unknown SDPA backend {backend!r}; choose from: {', '.join(BACKENDS)}")
            self.name = f"sdpa[{backend}]"
            self.devices = frozenset(BACKENDS[backend][1])
            self.description = f"SDPA forced to its {backend} backend (sdpa_kernel); unsupported where it cannot run"
            self.in_default_sweep = False  # dense baselines: measured when named

    def prepare(self, pattern, n, device, dtype, q_len=None) -> Prepared[SdpaState]:
        rows = q_len or n
        if pattern.name == "dense" or (pattern.name == "causal" and q_len == 1):
            # one query row at the end of the cache sees every key: causal decode is dense there, and a mask
            # would send it to a slower kernel (and slow every speed-up measured against it)
            return Prepared(pattern, n, state=SdpaState(), executed_pairs=rows * n, q_len=q_len)
        if pattern.name == "causal" and q_len is None:
            # The flash kernels skip key blocks above the diagonal: about half the pairs.
            return Prepared(pattern, n, state=SdpaState(causal=True), executed_pairs=n * (n + 1) // 2)
        # A decode block's causal rule is bottom-right aligned, which is_causal (top-left) is not: a mask.
        return Prepared(pattern, n, state=SdpaState(mask=pattern_mask(pattern, n, device, q_len)),
                        executed_pairs=rows * n, q_len=q_len)

    def forward(self, q, k, v, prep: Prepared[SdpaState]):
        state, gqa = prep.state, q.shape[1] != k.shape[1]
        if self.backend is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=state.mask, is_causal=state.causal,
                                                  enable_gqa=gqa)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, BACKENDS[self.backend][0])

        def call():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=state.mask, is_causal=state.causal,
                                                      enable_gqa=gqa)

        try:
            return call()
        except RuntimeError as exc:
            if "kernel" not in str(exc) and "backend" not in str(exc):
                raise
            with warnings.catch_warnings(record=True) as caught:  # torch says why in warnings: call again
                warnings.simplefilter("always")
                try:
                    call()
                except RuntimeError:
                    pass
            reasons = "; ".join(dict.fromkeys(str(w.message).strip() for w in caught)) or str(exc)
            raise Unsupported(f"SDPA's {self.backend} backend cannot run this case: {reasons}") from None

    def estimate_bytes(self, pattern, batch, heads, n, head_dim, dtype, mode, device_type="cpu"):
        elt = torch.finfo(dtype).bits // 8
        io = 4 * batch * heads * n * head_dim * elt
        fused = pattern.name in ("dense", "causal") and self.backend != "math"
        if fused:
            return io * (3 if mode == "fwdbwd" else 1)
        # the bool mask, and in the worst case a math-path fallback that materialises scores
        math_scores = batch * heads * n * n * 4 if self.backend == "math" else 0
        return n * n + io * 3 + math_scores
