"""Public API: `attention()` and the seed-compatible `SparseAttention` module."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from sparsebench.errors import SparsebenchError, Unsupported
from sparsebench.impls import IMPLS, Impl, Prepared
from sparsebench.impls.kernels.blocksparse import plan_masked_share
from sparsebench.impls.selection import for_pattern
from sparsebench.patterns import Pattern
from sparsebench.patterns.mask_mod import MaskModPattern, mask_mod_pattern
from sparsebench.plugins import FunctionImpl
from sparsebench.resolve import get_impl, get_pattern
from sparsebench.runner.config import SweepConfig
from sparsebench.services.run import run_sweep

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


# A user's mask runs on structured's generic block-sparse kernel. Where most of its work is in masked or gathered
# buckets it does SDPA's masked work plus copies: on the CPU (examples/masks.toml, n=4096 and 8192, forward) a
# prefix LM whose causal part was gathered (0.69 of all pairs) ran at 0.31-0.35x dense SDPA, SDPA with the mask
# at 0.81x; as a causal run (no mask, no gather) it runs at 1.6-1.8x (docs/results/cpu-examples). Above this
# share of n^2 pairs in masked or gathered buckets, auto prefers SDPA for user masks.
USER_MASK_MAX_MASKED_SHARE = 0.25


def resolve_impl(pattern: Pattern, impl: str, device: torch.device, dtype: torch.dtype, mode: str,
                 n: int | None = None) -> str:
    """The implementation to use; raises Unsupported with the reason when none fits."""
    if impl == "auto" and isinstance(pattern, MaskModPattern) and n and mode != "decode" and \
            plan_masked_share(pattern, n, device.type) > USER_MASK_MAX_MASKED_SHARE:
        candidates = ("sdpa", "flex", "structured", "eager")
    elif impl == "auto":
        candidates = AUTO_ORDER_BY_PATTERN.get((device.type, pattern.name), AUTO_ORDER.get(device.type, tuple(IMPLS)))
    else:
        candidates = (impl,)
    reasons = []
    for name in candidates:
        reason = for_pattern(get_impl(name), pattern).unsupported_reason(pattern, str(device), dtype, mode)
        if reason is None:
            return name
        reasons.append(reason)
    raise Unsupported("; ".join(reasons))


@lru_cache(maxsize=64)
def _prepared(impl: Impl, pattern: Pattern, n: int, device: torch.device, dtype: torch.dtype,
              q_len: int | None) -> Prepared:
    # Masks, indices and BlockMasks are built once per shape and reused across calls.
    return impl.prepare(pattern, n, device, dtype, q_len=q_len)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: str | Pattern | Callable = "local",
              impl: str | Callable = "auto", **params: int) -> torch.Tensor:
    """Sparse attention of q (B, H, L, D) over k, v (B, KVH, N, D); returns (B, H, L, D).

    KVH may divide H (GQA/MQA). L = N for a full sequence; L < N decodes the last L positions against a KV
    cache of N keys (forward only). `pattern`: a name (with `params`, e.g. window=64), a Pattern, a
    `module:attr` spec, or a FlexAttention mask_mod(b, h, q_idx, kv_idx) (or a factory make(n) returning one).
    `impl`: a name, `auto` (the fastest implementation that supports the device, dtype and whether gradients
    are needed), a `module:attr` spec, or a function fn(q, k, v, pattern) -> out.
    """
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or \
            q.shape[-1] != k.shape[-1] or q.shape[1] % k.shape[1] or q.shape[-2] > k.shape[-2]:
        raise ValueError(f"expected q (B, H, L, D) and k, v (B, KVH, N, D) with KVH dividing H and L <= N; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    pat = _pattern(pattern, params)
    n, length = k.shape[-2], q.shape[-2]
    pat.validate(n)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    mode = "decode" if length < n else "fwdbwd" if needs_grad else "fwd"
    chosen = _impl(impl) if callable(impl) else get_impl(resolve_impl(pat, impl, q.device, q.dtype, mode, n))
    chosen = for_pattern(chosen, pat)  # a selection pattern: the implementation's selection runner
    reason = chosen.unsupported_reason(pat, str(q.device), q.dtype, mode)
    if reason:
        raise Unsupported(reason)
    q_len = length if mode == "decode" else None
    return chosen.forward(q, k, v, _prepared(chosen, pat, n, q.device, q.dtype, q_len))


def _pattern(pattern: str | Pattern | Callable, params: dict[str, int]) -> Pattern:
    if isinstance(pattern, Pattern):
        return pattern
    if isinstance(pattern, str):
        return get_pattern(pattern, **params)
    return _mask_mod_class(pattern)(**params)


@lru_cache(maxsize=64)
def _mask_mod_class(function: Callable) -> type[Pattern]:
    """One Pattern class per user function, so its exact nnz and masks are computed once."""
    return mask_mod_pattern(getattr(function, "__name__", "mask_mod"), function)


@lru_cache(maxsize=64)
def _impl(function: Callable) -> Impl:
    return FunctionImpl(getattr(function, "__name__", "user_function"), function)


def benchmark(patterns: Iterable[str | Callable] = ("local",), impls: Iterable[str | Callable] = (),
              seq: Iterable[int] = (4096,), out_dir: str | Path | None = None, resume: bool = False,
              overwrite: bool = False, wait: bool = False, **options: Any) -> pd.DataFrame:
    """Measure as `sparsebench run` does (worker processes, the dense SDPA reference beside every shape) and
    return the rows as a DataFrame; with `out_dir`, also write results.csv and meta.json there, as `run
    --out-dir` does: a directory that holds results is refused unless `resume` (skip the cases already there)
    or `overwrite`; one that another run is writing to is refused, or with `wait` waited for.

    `patterns` and `impls` take names, `module:attr` specs, or functions defined at the top level of an
    importable module (the worker processes import them by name; a function defined in a notebook cannot be).
    `options` are the sweep's other settings, as in a config file: devices, dtypes, modes, batch, heads,
    kv_heads, q_len, head_dim, params, timeout, min_run_time, min_samples, warmup (one value or a list).
    """
    lists = {"devices", "dtypes", "modes", "batch", "heads", "kv_heads", "q_len", "head_dim"}
    settings = {k: (list(v) if isinstance(v, (list, tuple)) else [v]) if k in lists else v for k, v in options.items()}
    config = SweepConfig(patterns=[_spec(p) for p in patterns], impls=[_spec(i) for i in impls],
                         seq=list(seq), **settings)
    result = run_sweep(config, Path(out_dir) if out_dir is not None else None, resume=resume, overwrite=overwrite,
                       wait=wait)
    return pd.DataFrame(result.rows)


def _spec(item: str | Callable) -> str:
    """A name or spec as it is; a function as the `module:qualname` that worker processes import."""
    if isinstance(item, str):
        return item
    module, name = getattr(item, "__module__", None), getattr(item, "__qualname__", "")
    if not module or module == "__main__" or "<" in name:
        raise SparsebenchError(f"{getattr(item, '__name__', item)!r} is not importable by the worker processes: "
                               "define it at the top level of a .py module, or pass 'path/to/file.py:name'")
    return f"{module}:{name}"


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
